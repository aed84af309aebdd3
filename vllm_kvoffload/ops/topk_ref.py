"""Batched top-k selection, pure torch: the reference of csrc_triton/topk.py.
Token granularity, no top-p (those variants stay in ``ops.select``).

  mass       [B, Hkv, n_max] fp32, >= 0 on [0, cold_lens[b]) (score_mass's output)
  cold_lens  [B] int
  -> idx     [B, Hkv, k] int32: the min(k, n) tokens of largest mass, ascending; 0 past
             the count (ties at the k-th value: any of them)
     counts  [B, Hkv] int32 = min(k, cold_lens[b])
"""

from __future__ import annotations

import torch

from vllm_kvoffload.ops.select import select_cold_tokens


def topk_ref(mass: torch.Tensor, cold_lens: torch.Tensor, k: int, budgets=None) -> tuple[torch.Tensor, torch.Tensor]:
    B, Hkv, _ = mass.shape
    idx = torch.zeros(B, Hkv, k, dtype=torch.int32, device=mass.device)
    counts = torch.zeros(B, Hkv, dtype=torch.int32, device=mass.device)
    for b in range(B):
        n = int(cold_lens[b])
        kb = k if budgets is None else min(k, int(budgets[b]))
        sel, _ = select_cold_tokens(mass[b, :, :n], kb)
        idx[b, :, : sel.shape[1]] = sel.int()
        counts[b] = sel.shape[1]
    return idx, counts
