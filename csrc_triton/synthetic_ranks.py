"""The benchmark's synthetic ranking in one pass (reference and contract:
``vllm_kvoffload/ops/synthetic_ranks_ref.py``). In torch it took two random passes and three
element-wise ones per layer: about 110 us per layer at 128K with 8 requests, 3.7 ms of a 51 ms step
(profile 26b). This kernel reads the masses and ranks once and writes the ranks and the sum once.

Graph-safe: the seed is read from device memory and advanced by a device op, so each replay of a
captured step draws new numbers."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import cdiv


@triton.jit(do_not_specialize=["n", "rate", "inv_rate", "jitter"])
def _redraw_ranks(mass_ptr, rank_ptr, out_ptr, seed_ptr, n, rate, inv_rate, jitter, BLOCK: tl.constexpr,
                  JITTER: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)  # n < 2**31 (checked by the caller)
    m = offs < n
    seed = tl.load(seed_ptr)
    u = tl.rand(seed, offs)  # uniform in [0, 1), one draw per element
    rank = tl.load(rank_ptr + offs, mask=m, other=0.0)
    rank = tl.where(u < rate, u * inv_rate, rank)  # u / rate: uniform in [0, 1) where u < rate
    tl.store(rank_ptr + offs, rank, mask=m)
    out = tl.load(mass_ptr + offs, mask=m, other=0.0) + rank
    if JITTER:  # a second stream: seeds start below 2**40 and advance by one per call
        out += jitter * tl.rand(seed + (1 << 41), offs)
    tl.store(out_ptr + offs, out, mask=m)


def redraw_ranks(mass: torch.Tensor, rank: torch.Tensor, seed: torch.Tensor, rate: float, jitter: float = 0.0,
                 block: int = 1024) -> torch.Tensor:
    """Same contract as ``redraw_ranks_ref``; mass and rank contiguous and of one shape and dtype."""
    assert mass.shape == rank.shape and mass.dtype == rank.dtype and mass.is_contiguous() and rank.is_contiguous()
    assert seed.dtype == torch.int64 and seed.numel() == 1
    n = mass.numel()
    assert n < 2 ** 31, n
    out = torch.empty_like(mass)
    _redraw_ranks[(cdiv(n, block),)](mass, rank, out, seed, n, float(rate), 1.0 / rate if rate > 0 else 0.0,
                                     float(jitter), BLOCK=block, JITTER=jitter > 0, num_warps=4)
    seed.add_(1)
    return out
