"""Batched gather with a device cache, pure torch: the reference of
``csrc_triton/gather.py::gather_cached`` (same arguments and layouts).

The cache of a layer is the previous step's selection: prev_idx [Bp, Hkv, KP] (ascending
where j < prev_counts), prev_k/prev_v [Bp, Hkv, KP, D]. prev_row[b] is the row of request b
in it, or -1. A token selected again is taken from the cache, any other from the host pool;
because the cache holds copies of the pool, the output equals ``gather_ref``'s.
stats [2] (int64) accumulates (cache hits, tokens gathered).
"""

from __future__ import annotations

import torch

from vllm_kvoffload.ops.gather_ref import gather_ref


def gather_cached_ref(host_kv, layer, cold_slots, idx, counts, prev_row, prev_idx, prev_counts, prev_k, prev_v,
                      stats, out_dtype=None):
    out_k, out_v = gather_ref(host_kv, layer, cold_slots, idx, counts, out_dtype)
    B, Hkv, K = idx.shape
    hits = 0
    for b in range(B):
        p = int(prev_row[b])
        if p < 0:
            continue
        for h in range(Hkv):
            n, pn = int(counts[b, h]), int(prev_counts[p, h])
            where = {int(t): j for j, t in enumerate(prev_idx[p, h, :pn].tolist())}
            for j, t in enumerate(idx[b, h, :n].tolist()):
                if t in where:
                    out_k[b, h, j] = prev_k[p, h, where[t]]
                    out_v[b, h, j] = prev_v[p, h, where[t]]
                    hits += 1
    stats += torch.tensor([hits, int(counts.sum())], dtype=torch.int64, device=stats.device)
    return out_k, out_v
