"""A few optimizer steps on CPU: the loss must fall and the outputs must be complete."""

import json

import pytest

from vllm_kvoffload.training import train


TINY = ["--hidden", "64", "--layers", "2", "--heads", "4", "--kv-heads", "2", "--head-dim", "16",
        "--intermediate", "128", "--batch-tokens", "4096", "--log-every", "1", "--lr", "3e-3",
        "--device", "cpu"]


def test_loss_falls_and_checkpoint_exports(tmp_path):
    from vllm_kvoffload.training.export import export
    from vllm_kvoffload.training.plot import plot

    train.main(["--out", str(tmp_path), "--steps", "12", "--eval-samples", "1", "--eval-context", "1024", *TINY])
    log = [json.loads(line) for line in open(tmp_path / "log.jsonl")]
    assert len(log) == 12
    first, last = log[0]["answer_loss"], min(r["answer_loss"] for r in log[-3:])
    assert last < 0.85 * first, (first, last)
    run = json.loads((tmp_path / "run.json").read_text())
    assert run["steps"] == 12 and 0 <= run["eval_text2json"] <= 100
    folder = export(tmp_path / "checkpoint.pt", tmp_path / "hf", run)
    assert json.loads((folder / "training.json").read_text())["steps"] == 12
    assert plot(tmp_path / "log.jsonl", tmp_path / "loss.png").stat().st_size > 1000


def test_bad_arguments_are_named():
    with pytest.raises(SystemExit, match="--time-limit -1"):
        train.main(["--out", "x", "--time-limit", "-1"])
    with pytest.raises(SystemExit, match="--layers 0"):
        train.main(["--out", "x", "--layers", "0"])
