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
    with pytest.raises(SystemExit, match="--session-steps 0"):
        train.main(["--out", "x", "--session-steps", "0"])
    with pytest.raises(SystemExit, match="--decision-weight 0"):
        train.main(["--out", "x", "--decision-weight", "0"])
    with pytest.raises(SystemExit, match="--decision-ambiguous weighs its bytes by --decision-weight, which is 1"):
        train.main(["--out", "x", "--decision-ambiguous"])
    with pytest.raises(SystemExit, match="--mix 'json=1'"):
        train.main(["--out", "x", "--mix", "json=1"])


def test_resumed_run_equals_an_uninterrupted_one(tmp_path):
    """A run stopped by --session-limit and continued with --resume ends with the same weights
    as one run straight through (CPU is deterministic; batches are keyed by step), whether its
    batches were built in a worker process (first part) or a thread."""
    import torch

    steps = ["--steps", "5", "--eval-samples", "0", *TINY]
    train.main(["--out", str(tmp_path / "straight"), *steps])
    train.main(["--out", str(tmp_path / "split"), "--session-steps", "2", "--data-workers", "1", *steps])
    run = json.loads((tmp_path / "split" / "run.json").read_text())
    assert not run["finished"] and run["steps"] == 2
    assert (tmp_path / "split" / "state.pt").is_file()
    train.main(["--out", str(tmp_path / "split"), "--resume", str(tmp_path / "split" / "state.pt"), *steps])
    a = torch.load(tmp_path / "straight" / "checkpoint.pt")["state_dict"]
    b = torch.load(tmp_path / "split" / "checkpoint.pt")["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    log = [json.loads(line) for line in open(tmp_path / "split" / "log.jsonl")]
    assert [r["step"] for r in log] == list(range(5))  # appended, no step twice


def test_resume_of_another_shape_is_refused(tmp_path):
    train.main(["--out", str(tmp_path), "--steps", "3", "--session-steps", "1", "--eval-samples", "0", *TINY])
    other = [a if a != "64" else "96" for a in TINY]
    with pytest.raises(SystemExit, match="made for model"):
        train.main(["--out", str(tmp_path), "--steps", "3", "--resume", str(tmp_path / "state.pt"),
                    "--eval-samples", "0", *other])
    with pytest.raises(SystemExit, match="--resume nowhere.pt: no such file"):
        train.main(["--out", str(tmp_path), "--resume", "nowhere.pt"])


def test_induction_probe_batch_needs_content_copying():
    """The probe's masked targets are exactly the repeated letters 2..L, at an offset that varies."""
    import torch

    from vllm_kvoffload.training.induction_probe import copy_batch

    x, mask = copy_batch(16, 12, torch.Generator().manual_seed(1), "cpu")
    offsets = set()
    for row, m in zip(x, mask):
        L = int((row == 258).nonzero()[0])  # the separator
        assert row[:L].equal(row[L + 1:2 * L + 1])
        assert m.nonzero().flatten().tolist() == list(range(L + 1, 2 * L))  # targets x[L+2 .. 2L]
        offsets.add(L)
    assert len(offsets) > 1


def test_induction_probe_runs_and_reports(capsys):
    from vllm_kvoffload.training import induction_probe

    induction_probe.main(["--layers", "1", "--hidden", "64", "--heads", "2", "--kv-heads", "1", "--head-dim", "32",
                          "--max-steps", "60", "--batch", "8", "--max-len", "16", "--device", "cpu"])
    out = json.loads(capsys.readouterr().out)
    assert out["steps"] == 60 and [h["step"] for h in out["history"]] == [0, 50]
    assert out["history"][1]["loss"] < out["history"][0]["loss"]
    with pytest.raises(SystemExit, match="--max-len 2"):
        induction_probe.main(["--max-len", "2"])


def test_copy_warmup_gate(tmp_path):
    """The warm-up serves letter copies until its gate opens, then the curriculum's tasks follow;
    an unreachable accuracy ends it at --warmup-max, and 0 skips it."""
    steps = ["--steps", "6", "--eval-samples", "0", *TINY]

    def phases(name, *flags):
        train.main(["--out", str(tmp_path / name), *flags, *steps])
        run = json.loads((tmp_path / name / "run.json").read_text())
        return [r["phase"] for r in map(json.loads, open(tmp_path / name / "log.jsonl"))], run

    seen, run = phases("capped", "--warmup-copy-acc", "1.0", "--warmup-max", "0.5")
    assert seen == ["warmup"] * 4 + ["curriculum"] * 2 and run["copy_warmup_ended_at"] == 0.5
    seen, run = phases("open", "--warmup-copy-acc", "0")
    assert seen == ["warmup"] + ["curriculum"] * 5 and run["copy_warmup_ended_at"] == 0.0
    seen, _ = phases("none", "--warmup-max", "0")
    assert seen == ["curriculum"] * 6


def test_warmup_batches_are_letter_copies():
    from vllm_kvoffload.training import data

    b = data.make_batch(0, 0, None, 4096, 0.0)
    for ids, tgt, w in zip(b.ids, b.targets, b.weights):
        prompt = bytes(t for t in ids[1:].tolist() if t < 256).decode().split("\n")[0]
        answer = bytes(t for t, x in zip(tgt.tolist(), w.tolist()) if x == 1.0 and t < 256).decode()
        assert prompt.isalpha() and prompt.islower() and answer == prompt


def test_init_starts_from_the_checkpoint_weights(tmp_path):
    import torch

    train.main(["--out", str(tmp_path / "a"), "--steps", "2", "--eval-samples", "0", *TINY])
    ckpt = tmp_path / "a" / "checkpoint.pt"
    train.main(["--out", str(tmp_path / "b"), "--steps", "1", "--eval-samples", "0", "--init", str(ckpt),
                *TINY, "--lr", "0"])  # no update: the weights must come back unchanged
    a, b = torch.load(ckpt)["state_dict"], torch.load(tmp_path / "b" / "checkpoint.pt")["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    train.main(["--out", str(tmp_path / "c"), "--steps", "1", "--eval-samples", "0", *TINY])
    c = torch.load(tmp_path / "c" / "checkpoint.pt")["state_dict"]
    assert not all(torch.equal(a[k], c[k]) for k in a)  # the check above can fail
    with pytest.raises(SystemExit, match="--init .*made for model"):
        train.main(["--out", str(tmp_path / "d"), "--steps", "1", "--init", str(ckpt), *TINY, "--layers", "3"])
    with pytest.raises(SystemExit, match="--init and --resume"):
        train.main(["--out", "x", "--init", str(ckpt), "--resume", str(ckpt)])


def test_curriculum_from_skips_the_early_phases(tmp_path):
    """--curriculum-from 0.8 starts in the last phase (4K-16K contexts); the default starts
    in the first (384-1K)."""
    from vllm_kvoffload.training import data

    args = ["--steps", "2", "--eval-samples", "0", "--warmup-max", "0", *TINY, "--batch-tokens", "512"]
    train.main(["--out", str(tmp_path / "late"), "--curriculum-from", "0.8", *args])
    train.main(["--out", str(tmp_path / "early"), *args])
    late = [json.loads(line)["context"] for line in open(tmp_path / "late" / "log.jsonl")]
    early = [json.loads(line)["context"] for line in open(tmp_path / "early" / "log.jsonl")]
    lo, hi = data.CURRICULUM[-1][1]
    assert all(lo <= c <= hi for c in late), late
    assert early[0] <= data.CURRICULUM[0][1][1], early  # step 0 of 2: progress 0
    with pytest.raises(SystemExit, match="--curriculum-from 1.0"):
        train.main(["--out", "x", "--curriculum-from", "1.0"])


def test_batch_workers_run_torch_on_one_thread():
    """Worker processes that build batches run torch single-threaded (their OpenMP teams starved the
    training loop's process on the GPU machine, call 33t1)."""
    import torch

    pf = train.Prefetcher(1)
    try:
        assert pf.pool.submit(torch.get_num_threads).result() == 1
    finally:
        pf.close()


def test_compiled_step_equals_the_eager_step():
    """--compile changes the training forward's code, not its function: from the same weights, on the
    same batch, one compiled optimizer step gives the eager step's loss and weights up to rounding."""
    import torch

    from vllm_kvoffload.training import data
    from vllm_kvoffload.training.model import LlamaLM, ModelConfig

    cfg = ModelConfig(vocab_size=data.VOCAB_SIZE, hidden=64, layers=2, heads=4, kv_heads=2, head_dim=16,
                      intermediate=128)
    b = data.make_batch(0, 3, 0.5, 4096, 0.02)
    results = []
    for forward_of in (lambda m: m, train.compiled):
        torch.manual_seed(0)
        model = LlamaLM(cfg)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        loss = train.optimizer_step(forward_of(model), model, opt, b.ids, b.targets, b.weights)[0]
        results.append((loss.item(), [p.detach().clone() for p in model.parameters()]))
    (eager_loss, eager_w), (comp_loss, comp_w) = results
    assert abs(eager_loss - comp_loss) < 1e-4 * eager_loss
    assert all(torch.allclose(a, c, atol=1e-5) for a, c in zip(eager_w, comp_w))
    assert any(not torch.equal(a, p) for a, p in zip(eager_w, LlamaLM(cfg).parameters()))  # the step moved them


def test_determinism_is_switched_on_for_the_block_and_restored(monkeypatch):
    import os

    import torch

    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    assert not torch.are_deterministic_algorithms_enabled()
    with train.determinism(True):
        assert torch.are_deterministic_algorithms_enabled()
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
    assert not torch.are_deterministic_algorithms_enabled() and "CUBLAS_WORKSPACE_CONFIG" not in os.environ
    with train.determinism(False):
        assert not torch.are_deterministic_algorithms_enabled()


def test_deterministic_runs_end_with_the_same_weights(tmp_path):
    """--deterministic trains under torch's deterministic algorithms (no step of the loop lacks one) and
    gives the process its settings back; two runs end equal (on CPU they would anyway; the GPU check is
    docs/results/gpu/session34/s34d.sh, bit-identical weights in call 34d)."""
    import torch

    steps = ["--steps", "3", "--eval-samples", "0", "--deterministic", *TINY]
    for run in ("a", "b"):
        train.main(["--out", str(tmp_path / run), *steps])
        assert not torch.are_deterministic_algorithms_enabled()
    a = torch.load(tmp_path / "a" / "checkpoint.pt")["state_dict"]
    b = torch.load(tmp_path / "b" / "checkpoint.pt")["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert json.loads((tmp_path / "a" / "run.json").read_text())["args"]["deterministic"] is True
