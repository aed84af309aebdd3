"""Smoke test of the selection benchmark at tiny sizes, plus checks of its parts."""

import json
import math

import torch

from vllm_kvoffload.evaluation import selection
from vllm_kvoffload.scorers import available


def test_synthetic_needles_are_top_logits():
    data = selection.synthetic_qk(context=2048, num_kv_heads=2, num_q_heads=8, head_dim=64, steps=2, seed=1)
    assert data.q.shape == (2, 8, 64) and data.k.shape == (2, 2048, 64)
    logits = torch.einsum("hgd,hnd->hn", data.q[0].view(2, 4, 64), data.k)
    for h in range(2):  # every needle among the head's top 1% by group-summed q.k
        rank = (logits[h][:, None] > logits[h, data.needles[h]][None]).sum(0)
        assert (rank < math.ceil(0.01 * 2048)).all()


def test_cache_miss_rate():
    sel = [torch.tensor([[0, 1, 2, 3]]), torch.tensor([[0, 1, 2, 3]]), torch.tensor([[4, 5, 6, 7]])]
    scores = [torch.ones(1, 8)] * 3
    # step 1 hits everything, step 2 misses everything: 4 misses of 8 selections
    assert selection.cache_miss_rate(sel, scores, 1, 2, "lru") == 0.5
    assert selection.cache_miss_rate(sel, scores, 4, 2, "page") == 0.5


def test_benchmark_end_to_end_tiny(tmp_path):
    out = tmp_path / "selection.json"
    rc = selection.main(["--out", str(out), "--context", "1024", "--kv-heads", "2", "--q-heads", "8",
                         "--head-dim", "64", "--steps", "2", "--budgets", "0.03", "0.06"])
    assert rc == 0
    result = json.loads(out.read_text())
    rows = result["results"]
    assert {r["scorer"] for r in rows} == {*available(), selection.KV4}
    assert len(rows) == 2 * (len(available()) + 1)
    by = {(r["scorer"], r["budget"]): r for r in rows}
    for r in rows:
        assert 0 <= r["mass_recall"] <= 1 + 1e-6 and 0 <= r["needle_recall"] <= 1
        assert r["device_bytes_per_token"] > 0 and 0 <= r["pcie_miss_rate"] <= 1
        if r["scorer"] not in selection.CACHED:  # uncached: every selected token crosses PCIe
            assert r["pcie_miss_rate"] == 1 and r["pcie_bytes_per_step"] > 0
    # the oracle is the upper bound on mass recall at every budget
    for b in (0.03, 0.06):
        best = by[("oracle", b)]["mass_recall"]
        assert all(by[(s, b)]["mass_recall"] <= best + 1e-4 for s, bb in by if bb == b)
    assert (tmp_path / "selection.png").stat().st_size > 0
