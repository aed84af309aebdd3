"""A device cache wider than one selection, least recently used out first, pure torch: the reference
of ``csrc_triton/gather.py::gather_lru`` (same arguments and layouts).

The in-place cache (``gather_inplace_ref``) holds exactly the last selection. This one holds up to
C slots per (row, KV head), C a multiple of the selection's width, so a token that drops out of the
selection for a few steps and comes back is still on the device. Per layer:

  cache_k, cache_v  [R, Hkv, C, D]  the cached tokens' rows (the pool's dtype)
  token_at          [R, Hkv, C] int32  the cold token in each slot, -1 for none
  used_at           [R, Hkv, C] int32  the step each slot's token was last selected (EMPTY: never)
  slot_of           [R, Hkv, T] int32  a cold token's slot, valid only where token_at says so (so
                                       stale entries need no clearing); T >= any cold length
  clock             [R, Hkv] int32     the row's steps so far (this step: clock + 1)

This step's selection idx [B, Hkv, K] (counts [B, Hkv], entries below a count are real) of request
b, in row rows[b]:
  - a token whose slot still holds it is a hit: it stays, and its slot is stamped with this step;
  - the m misses take the m slots whose tokens were selected longest ago (ages clipped at
    ``AGE_CLIP`` steps: tokens unused that long count as equally old; empty slots are the oldest),
    ties to the lower slot, the g-th miss (in selection order) the g-th of those slots in ascending
    order; they are read from the pool there. There are always enough: the C - hits slots not
    selected this step number at least m, since C >= K >= count.
  - where the row is fresh (``fresh[b]``: a new request, or a new cache) every slot is first emptied.
pos [B, Hkv, K] receives each selected token's slot: the attention reads row rows[b]'s slots
pos[b, h, :count]. stats [2] int64 accumulates (cache hits, tokens gathered).
"""

from __future__ import annotations

import torch

from vllm_kvoffload.ops.gather_ref import gather_ref

AGE_CLIP = 255  # ages are counted up to this many steps
EMPTY = -(1 << 30)  # used_at of a slot that holds nothing: older than any clipped age


def lru_victims(ages: list[int], m: int) -> list[int]:
    """The m slots to refill, ascending: the oldest by clipped age, ties to the lower slot."""
    order = sorted(range(len(ages)), key=lambda s: (-min(ages[s], AGE_CLIP), s))
    return sorted(order[:m])


def gather_lru_ref(host_kv, layer, cold_slots, idx, counts, rows, fresh, slot_of, token_at, used_at, clock, pos,
                   cache_k, cache_v, stats, scales=None) -> None:
    fetched_k, fetched_v = gather_ref(host_kv, layer, cold_slots, idx, counts, cache_k.dtype, scales)
    B, Hkv, _ = idx.shape
    C = token_at.shape[2]
    hits = 0
    for b in range(B):
        r = int(rows[b])
        for h in range(Hkv):
            if fresh[b]:
                token_at[r, h] = -1
                used_at[r, h] = EMPTY
            now = int(clock[r, h]) + 1
            n = int(counts[b, h])
            sel = idx[b, h, :n].tolist()
            misses = []
            for j, t in enumerate(sel):
                s = int(slot_of[r, h, t])
                if 0 <= s < C and int(token_at[r, h, s]) == t:
                    used_at[r, h, s] = now
                    pos[b, h, j] = s
                    hits += 1
                else:
                    misses.append(j)
            ages = (now - used_at[r, h].long()).tolist()
            for j, s in zip(misses, lru_victims(ages, len(misses))):
                t = sel[j]
                token_at[r, h, s], used_at[r, h, s], slot_of[r, h, t], pos[b, h, j] = t, now, s, s
                cache_k[r, h, s] = fetched_k[b, h, j]
                cache_v[r, h, s] = fetched_v[b, h, j]
            clock[r, h] = now
    stats += torch.tensor([hits, int(counts.sum())], dtype=torch.int64, device=stats.device)
