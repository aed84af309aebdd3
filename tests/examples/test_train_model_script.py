"""examples/train_model.sh: the shipped model's recipe, run for a few steps of a tiny model on CPU."""

import json
import subprocess
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "examples" / "train_model.sh"
TINY = ["--hidden", "64", "--layers", "2", "--heads", "4", "--kv-heads", "2", "--head-dim", "16",
        "--intermediate", "128", "--batch-tokens", "4096", "--log-every", "1", "--device", "cpu"]


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, timeout=600)


def test_a_stopped_run_resumes_and_exports(tmp_path):
    first = run(str(tmp_path), "--steps", "4", "--session-steps", "2", *TINY)
    assert first.returncode == 0, first.stderr[-2000:]
    assert f"--resume {tmp_path}/run/state.pt" in first.stderr
    assert not (tmp_path / "model").exists()  # nothing exported before the schedule ends

    second = run(str(tmp_path), "--steps", "4", *TINY, "--resume", str(tmp_path / "run" / "state.pt"))
    assert second.returncode == 0, second.stderr[-2000:]
    record = json.loads((tmp_path / "model" / "training.json").read_text())
    assert record["finished"] and record["steps"] == 4
    assert record["args"]["seed"] == 0 and record["args"]["mix"] == "text2json=0.6,needle=0.3,copy=0.1"
    assert json.loads((tmp_path / "model" / "config.json").read_text())["num_hidden_layers"] == 2
    assert (tmp_path / "loss.png").stat().st_size > 1000


def test_missing_out_is_a_usage_error():
    result = run("--steps", "4")
    assert result.returncode == 2 and "usage:" in result.stderr
