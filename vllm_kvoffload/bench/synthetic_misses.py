"""Synthetic device-cache misses for the GPU throughput benchmark (dummy weights only).

The dummy-weight model gives every cold token of a row the same mass, so its selection never
changes and the device cache hits 100%: the benchmark never reads the host pool at decode. A
trained model hits 31-44% at a 3% budget (docs/performance.md), so its step pays for misses
that the benchmark does not see.

``SyntheticMisses`` wraps a scorer's ``score_batched``. It adds to the masses a random rank per
(layer, request, KV head, token), kept between calls, and redraws a share ``rate`` of the ranks
at every call. Equal masses are then ordered by rank. The top-k keeps about
``1 - rate * (1 - budget)`` of the last selection, and the gather reads the rest over PCIe.
On a trained model the ranks would swamp its masses, so this is for the dummy model only.

Redrawn tokens are uniformly random and almost never come back, so a device cache wider than one
selection would hit no more than the last selection does. ``jitter`` adds a fresh uniform draw times
``jitter`` to each call's sum (``ops/synthetic_ranks_ref.py``): tokens near the selection's edge
then leave and come back, which the wider (LRU) cache serves.

Graph-safe: one rank buffer per layer, replaced when the mass's shape changes (the runtime's decode
graphs are per step shape and are dropped then too), made on the shape's first (eager) step; the
redraw is device RNG with no host sync, so the graphs capture it. On CUDA the redraw is one Triton
pass (``csrc_triton/synthetic_ranks.py``); elsewhere its torch reference.
"""

from __future__ import annotations

import torch

from vllm_kvoffload.ops.synthetic_ranks_ref import redraw_ranks_ref

ENV = "KVOFFLOAD_BENCH_MISS_RATE"  # the benchmark's children read the rate from here
JITTER_ENV = "KVOFFLOAD_BENCH_JITTER"  # and the jitter (default 0)


class SyntheticMisses:
    def __init__(self, score_batched, rate: float, jitter: float = 0.0):
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"synthetic miss rate {rate!r}: accepted 0 to 1 (the share of ranks redrawn per step)")
        if not 0.0 <= jitter <= 1.0:
            raise ValueError(f"synthetic jitter {jitter!r}: accepted 0 to 1 (the scale of a fresh draw added per step)")
        self.inner = score_batched
        self.rate = rate
        self.jitter = jitter
        # layer (its summaries' address) -> (rank in [0, 1), the redraw's random seed: int64 [1] on the device)
        self.state: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    @property
    def ranks(self) -> dict[int, torch.Tensor]:
        return {layer: rank for layer, (rank, _) in self.state.items()}

    def __call__(self, query, summaries, cold_slots, cold_lens, scale):
        mass = self.inner(query, summaries, cold_slots, cold_lens, scale)
        rank, seed = self.state.get(summaries.data_ptr(), (None, None))
        if rank is None or rank.shape != mass.shape:  # a new step shape: a fresh ranking
            rank = torch.rand(mass.shape, device=mass.device, dtype=mass.dtype)
            self.state[summaries.data_ptr()] = rank, torch.randint(2 ** 40, (1,), device=mass.device)
            return mass + rank
        # -inf (past a row's cold tokens) stays -inf
        return redraw_ranks(mass.contiguous(), rank, seed, self.rate, self.jitter)


def install(rate: float, jitter: float = 0.0) -> None:
    """Wrap every scorer the offload runtime of this process creates from now on."""
    from vllm_kvoffload import runtime

    create = runtime.create_scorer

    def create_with_misses(*args, **kwargs):
        scorer = create(*args, **kwargs)
        scorer.score_batched = SyntheticMisses(scorer.score_batched, rate, jitter)
        return scorer

    create_with_misses.unwrapped = create
    runtime.create_scorer = create_with_misses


def uninstall() -> None:
    from vllm_kvoffload import runtime

    runtime.create_scorer = getattr(runtime.create_scorer, "unwrapped", runtime.create_scorer)


def redraw_ranks(mass: torch.Tensor, rank: torch.Tensor, seed: torch.Tensor, rate: float,
                 jitter: float = 0.0) -> torch.Tensor:
    if mass.is_cuda:
        from vllm_kvoffload.ops.triton_kernels import load

        return load("synthetic_ranks").redraw_ranks(mass, rank, seed, rate, jitter)
    return redraw_ranks_ref(mass, rank, seed, rate, jitter)
