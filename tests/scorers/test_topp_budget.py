"""``--kv-offload-topp p``: keep the highest-mass tokens until their estimated
mass reaches share p of the head's cold mass, capped by the top-k budget."""

import pytest
import torch

from vllm_kvoffload.ops.select import select_cold_tokens
from vllm_kvoffload.scorers import KVGeometry, create_scorer

GEOM = KVGeometry(num_kv_heads=2, num_q_heads=8, head_dim=64, block_size=32, dtype=torch.bfloat16)


def _mass(name, seed=0, n_blocks=16, temperature=3.0):
    g = torch.Generator().manual_seed(seed)
    keys = torch.randn(n_blocks, 2, 32, 64, generator=g).bfloat16()
    q = (temperature * torch.randn(8, 64, generator=g)).bfloat16()
    scorer = create_scorer(name, GEOM)
    return scorer.score(q, scorer.summarize(keys), 64**-0.5)


@pytest.mark.parametrize("name", ["oracle", "qlandmark", "shadowkv", "quest", "lrqk"])
@pytest.mark.parametrize("p", [0.5, 0.9])
def test_topp_reaches_p_with_the_fewest_tokens(name, p):
    mass = _mass(name)
    n = mass.shape[1]
    idx, valid = select_cold_tokens(mass, n, topp=p)
    for h in range(mass.shape[0]):
        kept = idx[h][valid[h]]
        share = mass[h, kept].sum() / mass[h].sum()
        assert share >= p - 1e-5
        # minimal: dropping the smallest kept token falls short of p
        smallest = mass[h, kept].min()
        assert (mass[h, kept].sum() - smallest) / mass[h].sum() < p
        assert len(kept) < n  # adaptive: fewer than the whole range


def test_topp_respects_the_budget_cap():
    mass = _mass("oracle", temperature=0.5)  # flat: p=0.99 would need most tokens
    k = 20
    idx, valid = select_cold_tokens(mass, k, topp=0.99)
    assert idx.shape[1] <= k and valid.sum(-1).tolist() == [k, k]
    # the cap keeps the k largest
    for h in range(2):
        assert set(idx[h].tolist()) == set(mass[h].topk(k).indices.tolist())


def test_topp_keeps_at_least_min_tokens():
    mass = _mass("oracle", temperature=20.0)  # very peaked: p=0.3 alone keeps a handful
    _, alone = select_cold_tokens(mass, 64, topp=0.3)
    idx, valid = select_cold_tokens(mass, 64, topp=0.3, min_tokens=40)
    assert alone.sum(-1).max() < 40 and valid.sum(-1).tolist() == [40, 40]
    for h in range(2):  # the floor keeps the 40 largest
        assert set(idx[h][valid[h]].tolist()) == set(mass[h].topk(40).indices.tolist())
    _, capped = select_cold_tokens(mass, 16, topp=0.3, min_tokens=40)  # the budget caps the floor
    assert capped.sum(-1).tolist() == [16, 16]


def test_topp_keeps_at_least_one_token():
    mass = _mass("oracle", temperature=20.0)  # very peaked
    idx, valid = select_cold_tokens(mass, 64, topp=0.01)
    assert valid.sum(-1).min() >= 1
