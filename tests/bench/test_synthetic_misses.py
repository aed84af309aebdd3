"""The benchmark's synthetic misses: equal masses get a selection that keeps about
1 - rate * (1 - budget) of the last one, and never picks a token past a row's length."""

import pytest
import torch

from vllm_kvoffload.bench import synthetic_misses
from vllm_kvoffload.bench.synthetic_misses import SyntheticMisses


def equal_masses(B=3, H=2, n=4000, lens=(4000, 2500, 1000)):
    def score_batched(query, summaries, cold_slots, cold_lens, scale):
        mass = torch.full((B, H, n), 1.0 / n)
        return mass.masked_fill(torch.arange(n) >= torch.tensor(lens)[:, None, None], float("-inf"))
    return score_batched, lens


@pytest.mark.parametrize("rate", [0.0, 0.3, 0.9])
def test_selection_keeps_about_one_minus_rate(rate):
    torch.manual_seed(0)
    inner, lens = equal_masses()
    scorer = SyntheticMisses(inner, rate)
    summaries = torch.zeros(1)
    k = 30  # 3% of the shortest row
    last, kept = None, []
    for _ in range(12):
        sel = scorer(None, summaries, None, None, 1.0).topk(k, -1).indices  # [B, H, k]
        assert all((sel[b] < lens[b]).all() for b in range(len(lens)))  # never past a row's tokens
        if last is not None:
            same = (sel[..., :, None] == last[..., None, :]).any(-1).float().mean().item()
            kept.append(same)
        last = sel
    budget = k / min(lens)
    expect = 1 - rate * (1 - budget)
    assert abs(sum(kept) / len(kept) - expect) < 0.05, (kept, expect)


def test_one_rank_buffer_per_layer_replaced_on_a_new_shape():
    inner, _ = equal_masses()
    scorer = SyntheticMisses(inner, 0.5)
    a, b = torch.zeros(1), torch.zeros(1)
    first_a = scorer(None, a, None, None, 1.0)
    scorer(None, b, None, None, 1.0)
    assert len(scorer.ranks) == 2
    kept = scorer.ranks[a.data_ptr()]
    assert not torch.equal(first_a, scorer(None, a, None, None, 1.0))  # redrawn in place at the next call
    assert scorer.ranks[a.data_ptr()] is kept
    scorer.inner, _ = equal_masses(n=5000)  # the step shape grew
    scorer(None, a, None, None, 1.0)
    assert len(scorer.ranks) == 2 and scorer.ranks[a.data_ptr()].shape[-1] == 5000


def test_bad_rate_is_refused():
    with pytest.raises(ValueError, match="1.5"):
        SyntheticMisses(lambda *a: None, 1.5)
    with pytest.raises(ValueError, match="jitter -0.1"):
        SyntheticMisses(lambda *a: None, 0.5, -0.1)


def test_install_wraps_the_scorers_the_runtime_creates():
    from vllm_kvoffload import runtime
    from vllm_kvoffload.scorers import KVGeometry

    g = KVGeometry(num_kv_heads=2, num_q_heads=4, head_dim=8, block_size=16, dtype=torch.float32)
    synthetic_misses.install(0.25, 0.09)
    try:
        scorer = runtime.create_scorer("exact-topk", g)
        assert isinstance(scorer.score_batched, SyntheticMisses) and scorer.score_batched.rate == 0.25
        assert scorer.score_batched.jitter == 0.09
    finally:
        synthetic_misses.uninstall()
    assert not isinstance(runtime.create_scorer("exact-topk", g).score_batched, SyntheticMisses)
