"""The device cache kept in place, pure torch: the reference of
``csrc_triton/gather.py::gather_inplace`` (same arguments and layouts).

Each request owns a row of the cache for as long as it runs (``rows[b]``, stable across batch
reorders), and each (row, KV head) holds its last selection's keys and values in slots
[0, count) in no particular order:

  cache_k, cache_v  [R, Hkv, KC, D]   the selected tokens' rows (the pool's dtype)
  prev_idx          [R, Hkv, KC] int  the last selection, ascending below prev_counts
  prev_pos          [R, Hkv, KC] int  prev_idx[r, h, p]'s slot
  prev_counts       [R, Hkv] int

This step's selection idx [B, Hkv, K] (ascending below counts [B, Hkv], K <= KC) goes into the
same slots: a token of the last selection keeps its slot (a hit: nothing moves); the others
(misses, in ascending order) take the slots of the tokens no longer selected (in the order of
their last positions), then, where the count grew (a budget grows with its sequence), slots
[last count, count), and are read from the pool. Where the row is fresh (``fresh[b]``: a new
request, or a new cache) or the count shrank, token j is read into slot j. The new selection and its
slots are written to new_idx / new_pos / new_counts (the other parity's arrays, by row), so
after the call slots [0, counts[b, h]) of row rows[b] hold exactly the selected tokens' rows,
which is what the attention reads. stats [2] int64 accumulates (cache hits, tokens gathered).
"""

from __future__ import annotations

import torch

from vllm_kvoffload.ops.gather_ref import gather_ref


def inplace_slots(idx: list[int], prev_idx: list[int], prev_pos: list[int], reuse: bool) -> tuple[list[int], list[bool]]:
    """(slot of each token of idx, whether it is a hit) for one (row, KV head), as described above."""
    if not reuse:
        return list(range(len(idx))), [False] * len(idx)
    where = {t: p for p, t in enumerate(prev_idx)}
    kept = set(idx)
    freed = [prev_pos[p] for p, t in enumerate(prev_idx) if t not in kept]  # in order of last position
    freed += range(len(prev_idx), len(idx))  # a grown count's new slots
    slots, hits, m = [], [], 0
    for t in idx:
        if t in where:
            slots.append(prev_pos[where[t]])
            hits.append(True)
        else:
            slots.append(freed[m])
            hits.append(False)
            m += 1
    return slots, hits


def gather_inplace_ref(host_kv, layer, cold_slots, idx, counts, rows, fresh, prev_idx, prev_pos, prev_counts,
                       new_idx, new_pos, new_counts, cache_k, cache_v, stats, scales=None) -> None:
    fetched_k, fetched_v = gather_ref(host_kv, layer, cold_slots, idx, counts, cache_k.dtype, scales)
    B, Hkv, _ = idx.shape
    hits = 0
    for b in range(B):
        r = int(rows[b])
        for h in range(Hkv):
            n, pn = int(counts[b, h]), int(prev_counts[r, h])
            sel = idx[b, h, :n].tolist()
            reuse = not bool(fresh[b]) and pn <= n
            slots, hit = inplace_slots(sel, prev_idx[r, h, :pn].tolist(), prev_pos[r, h, :pn].tolist(), reuse)
            for j, (slot, is_hit) in enumerate(zip(slots, hit)):
                if not is_hit:
                    cache_k[r, h, slot] = fetched_k[b, h, j]
                    cache_v[r, h, slot] = fetched_v[b, h, j]
            new_idx[r, h, :n] = idx[b, h, :n]
            new_pos[r, h, :n] = torch.tensor(slots, dtype=new_pos.dtype)
            new_counts[r, h] = n
            hits += sum(hit)
    stats += torch.tensor([hits, int(counts.sum())], dtype=torch.int64, device=stats.device)
