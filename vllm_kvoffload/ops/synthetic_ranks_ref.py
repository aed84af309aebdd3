"""Reference of the benchmark's synthetic ranking (``vllm_kvoffload/bench/synthetic_misses.py``;
kernel: ``csrc_triton/synthetic_ranks.py``).

``redraw_ranks_ref(mass, rank, seed, rate)`` redraws about ``rate`` of ``rank`` (uniform in [0, 1))
and returns ``mass + rank``. One uniform draw u per element does both: where u < rate the element
is redrawn, and its new rank is u / rate, uniform in [0, 1) and independent of the old one. ``seed``
(an int64 tensor of one element) is advanced by one per call; the kernel draws from it, and this
reference draws from torch's generator instead, so the two agree in distribution, not bit for bit.
-inf masses (past a row's cold tokens) stay -inf.

``jitter`` > 0 adds ``jitter * v`` to the sum (not to the stored rank), v uniform in [0, 1) drawn
afresh per call: tokens near the selection's edge then leave it and come back some steps later, as a
trained model's selections do, which is what a device cache wider than one selection serves.
(At 3% of the context, rate 0.2 and jitter 0.09 give about 44%, 64% and 70% hits to LRU caches of
1, 2 and 4 times the budget, near the trained model's replay: 44.5%, 59% and 71%;
docs/results/cache/jitter_calibration.py.)"""

from __future__ import annotations

import torch


def redraw_ranks_ref(mass: torch.Tensor, rank: torch.Tensor, seed: torch.Tensor, rate: float,
                     jitter: float = 0.0) -> torch.Tensor:
    assert mass.shape == rank.shape and mass.dtype == rank.dtype
    u = torch.rand_like(rank)
    rank.copy_(torch.where(u < rate, u * (1.0 / rate if rate > 0 else 0.0), rank))
    seed.add_(1)
    if jitter:
        return mass + rank + jitter * torch.rand_like(rank)
    return mass + rank
