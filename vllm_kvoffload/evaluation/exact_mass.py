"""exact-topk's ranking, for the teacher-forced analyses of a model's own attention
(``docs/results/cache/cache_sim.py``, ``docs/results/training/sparse_tf.py``): the softmax mass of
each query over the cold keys, summed over the query heads of each KV head (GQA), as the scorer
ranks tokens (``scorers/exact_topk.py``). The engine selects the top ``ceil(budget x length)``
of each row."""

from __future__ import annotations

import torch


def gqa_cold_mass(q: torch.Tensor, k: torch.Tensor, cold: torch.Tensor, kv_heads: int) -> torch.Tensor:
    """q [H, Tq, D] queries, k [H, T, D] keys (already repeated per query head), cold [Tq, T] the
    keys each query may select from. Returns [kv_heads, Tq, T]: the softmax over the cold keys of
    each query head's scaled logits, summed over the H / kv_heads heads of each KV head; 0 off the
    cold keys, and 0 in rows with no cold key at all."""
    H, Tq, D = q.shape
    logits = (q @ k.transpose(-1, -2)) / D ** 0.5
    mass = logits.masked_fill(~cold, float("-inf")).softmax(-1).nan_to_num(0.0)
    return mass.view(kv_heads, H // kv_heads, Tq, -1).sum(1)
