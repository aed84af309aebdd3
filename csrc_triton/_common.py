"""Helpers shared by the kernels."""

from __future__ import annotations

import functools
import os

import torch
import triton
import triton.language as tl

LOG2E = 1.4426950408889634


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def next_pow2(x: int) -> int:
    return 1 << max(0, int(x) - 1).bit_length()


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


def row_align(t: torch.Tensor, cap: int = 16) -> int:
    """The largest power of two <= cap dividing every stride of t's leading dims: each of its rows
    starts at a multiple of that many elements from its data pointer (which Triton checks for
    16-byte alignment and specializes on), so row loads can be vectorized."""
    align = cap
    while any(s % align for s in t.stride()[:-1]):
        align //= 2
    return align


def num_sms(device: torch.device) -> int:
    if device.type == "cuda":
        return _cuda_sms(device.index if device.index is not None else torch.cuda.current_device())
    return 8  # interpreter: few programs keep it fast


@functools.lru_cache(maxsize=None)
def _cuda_sms(index: int) -> int:  # asked per launch: cached, off the decode hot path
    return torch.cuda.get_device_properties(index).multi_processor_count


@triton.jit
def mma(a, b, F32: tl.constexpr):
    """tl.dot with fp32 accumulation. F32=True casts operands to fp32 first: the
    Triton 3.9 interpreter computes bf16 x bf16 dots wrongly (it reinterprets the
    bits), so the dispatchers set F32 under TRITON_INTERPRET=1 only."""
    if F32:
        return tl.dot(a.to(tl.float32), b.to(tl.float32))
    else:
        return tl.dot(a, b)


# Per (name, device): int32 buffers the kernels' dispatchers reuse across launches, grown to the
# largest launch (off the allocator on the decode path): the arrival counters of kernels whose
# last program of a group finishes the group's work (top-k's segments, sparse decode's split-K
# merge), and scratch. Invariants: launches on one device never overlap in time (the runtime runs
# them on one stream), or two launches would share a buffer; the arrival counters are all zero
# between launches (each group's last program resets its own). A buffer that grows frees the old
# one, so a CUDA graph must not outlive a grow: the runtime's decode graphs are per step shape,
# dropped before a new shape's first (eager) step, which is where a grow happens.
_BUFFERS: dict[tuple[str, torch.device], torch.Tensor] = {}


def device_buffer(name: str, n: int, device: torch.device, zeros: bool = False) -> torch.Tensor:
    """At least n int32 elements for ``name`` on ``device`` (zeros: zero-filled when allocated)."""
    buf = _BUFFERS.get((name, device))
    if buf is None or buf.numel() < n:
        buf = _BUFFERS[(name, device)] = (torch.zeros if zeros else torch.empty)(n, dtype=torch.int32, device=device)
    return buf


def arrival_counters(n: int, device: torch.device) -> torch.Tensor:
    """At least n int32 zeros (module comment above)."""
    return device_buffer("arrivals", max(n, 1024), device, zeros=True)
