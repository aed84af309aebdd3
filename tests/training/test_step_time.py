"""The training-step timer on CPU: a table row per variant, its first loss, and named bad arguments."""

import pytest

from vllm_kvoffload.training import step_time

TINY = ["--hidden", "64", "--layers", "2", "--heads", "4", "--kv-heads", "2", "--head-dim", "16",
        "--intermediate", "128", "--batch-tokens", "2048", "--batches", "3", "--warm", "1", "--device", "cpu"]


def test_prints_a_row_per_variant_with_the_predicted_run_time(capsys):
    step_time.main(["--variants", "eager", "--steps", "600", *TINY])
    out = capsys.readouterr().out
    header, _, row = out.strip().splitlines()[-3:]
    assert header.count("progress") == len(step_time.PHASES) and "600 steps, min" in header
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[0] == "eager" and cells[1].endswith("(+0.0e+00)")
    ms = [float(c) for c in cells[2:-1]]
    assert len(ms) == len(step_time.PHASES) and all(m > 0 for m in ms)
    predicted = 600 * sum(m * share for m, (_, share) in zip(ms, step_time.PHASES)) / 1000 / 60
    assert float(cells[-1]) == pytest.approx(predicted, abs=0.06)


def test_bad_arguments_are_named():
    with pytest.raises(SystemExit, match="--variants fast: accepted are eager, compile"):
        step_time.main(["--variants", "fast", *TINY])
    with pytest.raises(SystemExit, match="--batches 2 --warm 2"):
        step_time.main(["--batches", "2", "--warm", "2", "--device", "cpu"])
