"""Reference of the benchmark's synthetic ranking (``vllm_kvoffload/bench/synthetic_misses.py``;
kernel: ``csrc_triton/synthetic_ranks.py``).

``redraw_ranks_ref(mass, rank, seed, rate)`` redraws about ``rate`` of ``rank`` (uniform in [0, 1))
and returns ``mass + rank``. One uniform draw u per element does both: where u < rate the element
is redrawn, and its new rank is u / rate, uniform in [0, 1) and independent of the old one. ``seed``
(an int64 tensor of one element) is advanced by one per call; the kernel draws from it, and this
reference draws from torch's generator instead, so the two agree in distribution, not bit for bit.
-inf masses (past a row's cold tokens) stay -inf."""

from __future__ import annotations

import torch


def redraw_ranks_ref(mass: torch.Tensor, rank: torch.Tensor, seed: torch.Tensor, rate: float) -> torch.Tensor:
    assert mass.shape == rank.shape and mass.dtype == rank.dtype
    u = torch.rand_like(rank)
    rank.copy_(torch.where(u < rate, u * (1.0 / rate if rate > 0 else 0.0), rank))
    seed.add_(1)
    return mass + rank
