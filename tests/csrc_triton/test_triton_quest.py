"""Quest's and ArkVale's batched scoring through the Triton exact-topk kernel (pages scored as
keys of width 2D) against the per-request torch references, ``QuestScorer.score`` and
``ArkValeScorer.score``."""

import pytest
import torch

from conftest import INTERPRET, random_cold_slots, rel_err

triton = pytest.importorskip("triton")

from vllm_kvoffload.ops.triton_kernels import score_mass  # noqa: E402
from vllm_kvoffload.scorers.base import KVGeometry  # noqa: E402
from vllm_kvoffload.scorers.arkvale import ArkValeScorer, shared_over_kv_heads  # noqa: E402
from vllm_kvoffload.scorers.quest import QuestScorer, batched_page_mass  # noqa: E402

CASES = [  # B, Hq, Hkv, D, block_size, page_size, cold blocks per row
    (3, 8, 2, 64, 16, 16, [5, 0, 3]),
    (2, 4, 4, 64, 32, 16, [7, 2]),
    (2, 16, 2, 128, 16, 8, [3, 1]),
]
if not INTERPRET:
    CASES += [(8, 32, 8, 128, 16, 16, [301, 7, 0, 150, 299, 1, 64, 33]), (4, 28, 4, 64, 32, 16, [1001, 3, 500, 77])]


@pytest.mark.parametrize("arkvale", [False, True], ids=["quest", "arkvale"])
@pytest.mark.parametrize("B,Hq,Hkv,D,bs,ps,cold", CASES)
def test_quest_batched_kernel_matches_reference(device, B, Hq, Hkv, D, bs, ps, cold, arkvale):
    g = torch.Generator().manual_seed(B * 1000 + D + sum(cold))
    scorer = (ArkValeScorer if arkvale else QuestScorer)(KVGeometry(num_kv_heads=Hkv, num_q_heads=Hq, head_dim=D, block_size=bs, dtype=torch.bfloat16))
    scorer.default_page_size = ps
    slots_total = sum(cold) + 4
    keys = (torch.randn(slots_total, Hkv, bs, D, generator=g) * 2).to(torch.bfloat16)
    summaries = scorer.summarize(keys)  # [slots, Hkv, P, 2, D]
    cold_slots = random_cold_slots(cold, slots_total, g)
    query = torch.randn(B, Hq, D, generator=g).to(torch.bfloat16)
    scale = D ** -0.5
    cold_lens = torch.tensor(cold, dtype=torch.int32) * bs
    mass = batched_page_mass(score_mass, query.to(device), summaries.to(device), cold_slots.to(device),
                             cold_lens.to(device), scorer.page_size, scale).cpu()
    if arkvale:
        mass = shared_over_kv_heads(mass)
    assert mass.shape == (B, Hkv, cold_slots.shape[1] * bs) and not mass.isnan().any()
    for b, n in enumerate(cold):
        assert torch.isneginf(mass[b, :, n * bs:]).all()
        if n:
            ref = scorer.score(query[b], summaries[cold_slots[b, :n].long()], scale)
            assert rel_err(mass[b, :, :n * bs], ref) <= 1e-2
            torch.testing.assert_close(mass[b, :, :n * bs].sum(-1), torch.full((Hkv,), Hq / Hkv), rtol=1e-3, atol=1e-3)
