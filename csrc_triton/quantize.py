"""Keys -> fp8 e4m3 with one fp32 scale per row (per (token, KV head)), and back.
Reference: ``vllm_kvoffload/ops/quantize_ref.py`` (scale = max|x| / 448).

Grid (cdiv(R, BLOCK_R),): a program quantizes BLOCK_R rows of D contiguous
elements (R = x.numel() // D). D must be a power of two.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import cdiv, next_pow2

FP8_MAX = tl.constexpr(448.0)
SCALE_MIN = tl.constexpr(1e-12)


@triton.jit
def _quantize_rows(x_ptr, q_ptr, s_ptr, R, D: tl.constexpr, BLOCK_R: tl.constexpr):
    r = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    d = tl.arange(0, D)
    rm = r < R
    off = r.to(tl.int64)[:, None] * D + d[None, :]
    x = tl.load(x_ptr + off, mask=rm[:, None], other=0.0).to(tl.float32)
    scale = tl.maximum(tl.max(tl.abs(x), 1), SCALE_MIN * FP8_MAX) / FP8_MAX
    q = tl.clamp(x / scale[:, None], -FP8_MAX, FP8_MAX)
    tl.store(q_ptr + off, q.to(q_ptr.dtype.element_ty), mask=rm[:, None])
    tl.store(s_ptr + r, scale, mask=rm)


@triton.jit
def _dequantize_rows(q_ptr, s_ptr, x_ptr, R, D: tl.constexpr, BLOCK_R: tl.constexpr):
    r = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    d = tl.arange(0, D)
    rm = r < R
    off = r.to(tl.int64)[:, None] * D + d[None, :]
    q = tl.load(q_ptr + off, mask=rm[:, None], other=0.0).to(tl.float32)
    s = tl.load(s_ptr + r, mask=rm, other=0.0)
    tl.store(x_ptr + off, (q * s[:, None]).to(x_ptr.dtype.element_ty), mask=rm[:, None])


def quantize_fp8(x: torch.Tensor, out=None, scale=None) -> tuple[torch.Tensor, torch.Tensor]:
    """x [..., D] contiguous -> (q [..., D] float8_e4m3fn, scale [...] fp32)."""
    D = x.shape[-1]
    assert x.is_contiguous() and D == next_pow2(D)
    q = torch.empty(x.shape, dtype=torch.float8_e4m3fn, device=x.device) if out is None else out
    s = torch.empty(x.shape[:-1], dtype=torch.float32, device=x.device) if scale is None else scale
    R = x.numel() // D
    BLOCK_R = max(1, 4096 // D)
    _quantize_rows[(cdiv(R, BLOCK_R),)](x, q, s, R, D=D, BLOCK_R=BLOCK_R, num_warps=4)
    return q, s


def dequantize_fp8(q: torch.Tensor, scale: torch.Tensor, dtype=torch.bfloat16, out=None) -> torch.Tensor:
    D = q.shape[-1]
    assert q.is_contiguous() and scale.is_contiguous()
    x = torch.empty(q.shape, dtype=dtype, device=q.device) if out is None else out
    R = q.numel() // D
    BLOCK_R = max(1, 4096 // D)
    _dequantize_rows[(cdiv(R, BLOCK_R),)](q, scale, x, R, D=D, BLOCK_R=BLOCK_R, num_warps=4)
    return x
