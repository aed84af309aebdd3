"""Every scorer's batched scoring (the whole decode batch at once: SoftmaxScorer's torch path,
shadowkv's landmarks-as-keys path, the exact-topk and quest kernels' references) against the
generic one-request-at-a-time loop of Scorer.score_batched, on rows of different cold lengths
(an empty one included)."""

import pytest
import torch

from vllm_kvoffload.scorers import available, get_scorer_cls as get
from vllm_kvoffload.scorers.base import KVGeometry, Scorer, SoftmaxScorer, masked_group_mass

GEOM = KVGeometry(num_kv_heads=2, num_q_heads=8, head_dim=64, block_size=16, dtype=torch.bfloat16)
SOFTMAX = [n for n in available() if issubclass(get(n), SoftmaxScorer)]


def test_the_per_token_scorers_use_the_batched_path():
    assert {"qlandmark", "infinigen", "lrqk"} <= set(SOFTMAX)


@pytest.mark.parametrize("name", available())
def test_batched_equals_the_per_request_loop(name):
    torch.manual_seed(0)
    scorer = get(name)(GEOM)
    assert type(scorer).score_batched is not Scorer.score_batched, "every scorer has a batched path"
    if name == "shadowkv":  # about 4 outlier chunks per row here (48 per 128K would round to 0)
        scorer.outliers_per_token = 0.02
    keys = torch.randn(40, GEOM.num_kv_heads, GEOM.block_size, GEOM.head_dim)
    keys[..., 3] *= 8  # an outlier channel, as real keys have
    summaries = scorer.summarize(keys)
    blocks = [7, 0, 12, 3]
    cold_slots = torch.zeros(len(blocks), max(blocks), dtype=torch.int32)
    for b, n in enumerate(blocks):
        cold_slots[b, :n] = torch.randperm(40)[:n].int()
    cold_lens = torch.tensor(blocks, dtype=torch.int32) * GEOM.block_size
    query = torch.randn(len(blocks), GEOM.num_q_heads, GEOM.head_dim)
    batched = scorer.score_batched(query, summaries, cold_slots, cold_lens, 0.125)
    looped = Scorer.score_batched(scorer, query, summaries, cold_slots, cold_lens, 0.125)
    torch.testing.assert_close(batched, looped, atol=1e-5, rtol=1e-4)
    assert torch.isinf(batched[1]).all()  # no cold tokens: nothing can be selected
    finite = batched[0, :, : cold_lens[0]]
    torch.testing.assert_close(finite.sum(-1), torch.full((GEOM.num_kv_heads,), 4.0))  # a group's unit each


def test_masked_group_mass_ignores_padding():
    logits = torch.randn(2, 4, 6)
    mass = masked_group_mass(logits, torch.tensor([3, 6]), num_kv_heads=2)
    assert torch.isinf(mass[0, :, 3:]).all() and torch.isfinite(mass[1]).all()
    ref = torch.softmax(logits[0, :, :3], -1).view(2, 2, 3).sum(1)
    torch.testing.assert_close(mass[0, :, :3], ref)
