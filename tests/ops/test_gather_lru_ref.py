"""The LRU device cache's reference (``ops/gather_lru_ref.py``) against what it promises, over many
steps of selections that recur: every selected token ends up in its slot with its pool row, the hits
are exactly the selected tokens cached before the step, the slots refilled are the least recently
used ones, and a cache that holds every token ever selected misses each token once."""

import torch

from vllm_kvoffload.ops.gather_lru_ref import AGE_CLIP, EMPTY, gather_lru_ref
from vllm_kvoffload.ops.gather_ref import gather_ref

B, HKV, L, BS, D = 2, 2, 1, 4, 8


def make_pool(cold, g):
    nblk = -(-cold // BS)
    host = torch.randn(B * nblk, L, 2, HKV, BS, D, generator=g)
    slots = torch.arange(B * nblk, dtype=torch.int32).view(B, nblk)
    return host, slots


def recurring_selection(g, cold, K, hot):
    """[B, HKV, K] ascending, counts [B, HKV]: each (request, head) picks from a small hot set of tokens
    (so they come back) and a few anywhere."""
    idx = torch.zeros(B, HKV, K, dtype=torch.int32)
    counts = torch.zeros(B, HKV, dtype=torch.int32)
    for b in range(B):
        for h in range(HKV):
            n = int(torch.randint(K // 2, K + 1, (1,), generator=g))
            pick = torch.cat([hot[torch.randperm(hot.numel(), generator=g)], torch.randperm(cold, generator=g)])
            chosen = list(dict.fromkeys(pick.tolist()))[:n]
            idx[b, h, :n] = torch.tensor(sorted(chosen), dtype=torch.int32)
            counts[b, h] = n
    return idx, counts


def run(C, steps, cold=96, K=12, seed=0, fresh_at=()):
    g = torch.Generator().manual_seed(seed)
    host, slots = make_pool(cold, g)
    R = B + 1
    rows = torch.tensor([2, 0], dtype=torch.int32)
    i32 = dict(dtype=torch.int32)
    state = dict(slot_of=torch.zeros(R, HKV, cold, **i32), token_at=torch.full((R, HKV, C), -1, **i32),
                 used_at=torch.full((R, HKV, C), EMPTY, **i32), clock=torch.zeros(R, HKV, **i32))
    cache_k, cache_v = torch.zeros(R, HKV, C, D), torch.zeros(R, HKV, C, D)
    stats = torch.zeros(2, dtype=torch.int64)
    hot = torch.randperm(cold, generator=g)[: 2 * K]
    for step in range(steps):
        idx, counts = recurring_selection(g, cold, K, hot)
        fresh = torch.tensor([int(step == 0 or step in fresh_at), int(step == 0)], dtype=torch.int32)
        before = {k: v.clone() for k, v in state.items()}
        pos = torch.full((B, HKV, K), -7, dtype=torch.int32)
        hits_before = int(stats[0])
        gather_lru_ref(host, 0, slots, idx, counts, rows, fresh, state["slot_of"], state["token_at"], state["used_at"],
                       state["clock"], pos, cache_k, cache_v, stats)
        want_k, want_v = gather_ref(host, 0, slots, idx, counts)
        expected_hits = 0
        for b in range(B):
            r = int(rows[b])
            for h in range(HKV):
                n = int(counts[b, h])
                sel, p = idx[b, h, :n].tolist(), pos[b, h, :n].long()
                assert state["token_at"][r, h, p].tolist() == sel  # each selected token in its slot
                assert torch.equal(cache_k[r, h, p], want_k[b, h, :n])
                assert torch.equal(cache_v[r, h, p], want_v[b, h, :n])
                cached = set() if fresh[b] else set(before["token_at"][r, h].tolist()) - {-1}
                expected_hits += len(cached & set(sel))
                # LRU: every refilled slot was at least as old as every slot kept and not selected
                now = int(state["clock"][r, h])
                age = (now - before["used_at"][r, h].long()).clamp(max=AGE_CLIP)
                if fresh[b]:
                    age[:] = AGE_CLIP
                hit_slots = {int(s) for s, t in zip(p, sel) if t in cached}
                refilled = [int(s) for s, t in zip(p, sel) if t not in cached]
                untouched = [s for s in range(C) if s not in hit_slots and s not in refilled]
                if refilled and untouched:
                    assert min(age[refilled].tolist()) >= max(age[untouched].tolist()), (step, b, h)
        assert int(stats[0]) - hits_before == expected_hits, step
    return stats, state


def test_every_selected_token_cached_hits_exact_and_lru_evicts_oldest():
    stats, _ = run(C=30, steps=25)
    assert 0 < stats[0] < stats[1]


def test_a_fresh_row_forgets_its_tokens():
    run(C=30, steps=8, fresh_at=(4,))


def test_a_cache_that_holds_every_token_misses_each_once():
    cold, K = 40, 10
    stats, state = run(C=cold, steps=30, cold=cold, K=K)
    distinct = int(sum(len(set(state["token_at"][r, h].tolist()) - {-1}) for r in (0, 2) for h in range(HKV)))
    assert stats[1] - stats[0] == distinct  # one miss per token ever selected (row-head pairs are independent)


def test_wider_cache_hits_more():
    narrow, _ = run(C=12, steps=30, seed=3)
    wide, _ = run(C=36, steps=30, seed=3)
    assert narrow[1] == wide[1] and wide[0] > narrow[0]
