"""Train the small context-reading Llama from scratch (torch only; one H100 takes minutes).

    python -m vllm_kvoffload.training.train --out runs/train --time-limit 420

Writes ``checkpoint.pt`` (weights + config), ``log.jsonl`` (one line per step) and
``eval.json`` (held-out Text2JSON score and needle recall with full attention, decoded by
this module's own greedy loop). ``python -m vllm_kvoffload.training.export`` turns the
checkpoint into the Hugging Face folder that vLLM serves.

Data: first the copy warm-up (``data.WARMUP``), until the answer token accuracy of a warm-up
batch reaches ``--warmup-copy-acc`` (or ``--warmup-max`` of the run is spent); then the
curriculum (``data.CURRICULUM``) over the rest of the run. The gate makes sure a copy (induction)
head exists before the lookups that need one are trained.

Schedule: linear warm-up, then cosine decay to 10%, over ``progress`` in [0, 1]. Without
``--time-limit``, progress = step / steps and a run is reproducible bit for bit (up to
GPU non-determinism). With it, progress = max(step / steps, elapsed / limit), so the run
fits the time; ``log.jsonl`` records each step's progress and context range.

A run longer than one sitting: ``--session-limit S`` (or ``--session-steps N``) stops after S seconds
(N steps) and writes ``state.pt``; ``--resume state.pt`` (same flags) continues the same schedule and log.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import time
import multiprocessing
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from vllm_kvoffload.bench import needle, text2json
from vllm_kvoffload.evaluation.accuracy import MAX_TOKENS, summarize
from vllm_kvoffload.training import data
from vllm_kvoffload.training.model import LlamaLM, ModelConfig


def lr_at(progress: float, peak: float, warmup: float) -> float:
    if progress < warmup:
        return peak * progress / warmup
    t = min(1.0, (progress - warmup) / max(1e-9, 1 - warmup))
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t)))


def evaluate(model: LlamaLM, n: int, context: int, seed: int = 0, progress: bool = True) -> dict:
    """Greedy full-attention answers on held-out samples (the benchmarks' integer seeds)."""
    model.eval()
    t2j = text2json.generate(n, context, seed, data.count_bytes, max_entities=data.MAX_ENTITIES)
    ndl = needle.generate(n, context, seed, data.count_bytes, needles=data.MAX_NEEDLES)
    records = []
    for task, samples in (("text2json", t2j), ("needle", ndl)):
        for s in samples:
            out = model.generate(data.encode_prompt(s["prompt"]), MAX_TOKENS[task], data.EOS)
            text = bytes(t for t in out if t < 256).decode("utf-8", "replace")
            score = (text2json.score_one if task == "text2json" else needle.score_one)(text, s)
            records.append({"task": task, "id": s["id"], "output": text, **score})
            if progress:
                print(f"  eval {task} {s['id']}: {score.get('score', score.get('recall'))}", flush=True)
    model.train()
    return {"context": context, "n": n, **summarize(records), "records": records}


def _single_threaded_worker() -> None:
    """A batch-building process runs torch on one thread: with torch's default (one thread per core)
    each of the workers' small tensor ops wakes a full OpenMP team, and the teams' spinning starves the
    training loop's process of CPU (call 33t1: 72 ms a step where the same batches built up front took 25-35)."""
    torch.set_num_threads(1)


class Prefetcher:
    """Builds the next batches while the GPU trains on this one.

    With ``workers`` > 0 they are built in worker processes: text generation is pure Python and
    holds the GIL, so in a thread of this process it stalls the training loop's kernel launches.
    A batch depends only on its arguments, so where it was built does not change the run."""

    def __init__(self, workers: int):
        self.pool = (ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                                         initializer=_single_threaded_worker)
                     if workers else ThreadPoolExecutor(1))
        self.depth = max(1, workers)
        self.queued: dict[int, Future] = {}

    def get(self, step: int, batch_args) -> data.Batch:
        """Batch ``step``; ``batch_args(i)`` gives ``data.make_batch``'s arguments for step i."""
        for i in range(step, step + self.depth + 1):
            if i not in self.queued:
                self.queued[i] = self.pool.submit(data.make_batch, *batch_args(i))
        return self.queued.pop(step).result()

    def discard(self) -> None:
        """Drop the batches built ahead (the curriculum changed under them)."""
        for f in self.queued.values():
            f.cancel()
        self.queued.clear()

    def close(self) -> None:
        self.discard()
        self.pool.shutdown(cancel_futures=True)


# Not cuDNN's fused attention: its backward failed mid-run once and killed the run (run 19b, torch 2.11
# on an H100 shared with run 19a, "mha_graph.execute(...).is_good()" after a 10.6K-token batch; cause
# not known). Runs up to 19 let torch choose the backend.
TRAIN_ATTENTION = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]


def optimizer_step(forward, model: LlamaLM, opt: torch.optim.Optimizer, ids: torch.Tensor, tgt: torch.Tensor,
                   w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One training step on a batch: ``forward`` is ``model`` or its compiled form. Returns the
    weighted loss, the logits [B, T, V], the per-token loss [B, T] and the gradient norm (before clipping)."""
    with torch.autocast(ids.device.type, dtype=torch.bfloat16, enabled=ids.device.type == "cuda"), \
            sdpa_kernel(TRAIN_ATTENTION):
        logits = forward(ids)
    nll = F.cross_entropy(logits.float().view(-1, logits.shape[-1]), tgt.view(-1), reduction="none").view_as(w)
    loss = (nll * w).sum() / w.sum()
    opt.zero_grad(set_to_none=True)
    loss.backward()
    gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    return loss, logits, nll, gnorm


def compiled(model: LlamaLM):
    """The model's training forward compiled by Inductor, with dynamic batch and context sizes (one graph
    serves the curriculum's varying shapes). Eager and compiled steps compute the same function; they
    differ by rounding."""
    return torch.compile(model, dynamic=True)


@contextlib.contextmanager
def determinism(enabled: bool):
    """With ``enabled``, torch's deterministic algorithms for the block's duration: flash attention then
    runs its deterministic backward (its default backward is what makes runs of one command differ), and
    cuBLAS a fixed workspace. Two runs of one command on one H100 then end with the same weights, at 1.74x
    the step time (call 34d: docs/results/gpu/session34/s34d.sh). The previous settings come back on exit.
    The cuBLAS setting must be in place before the process's first cuBLAS call."""
    if not enabled:
        yield
        return
    was, env = torch.are_deterministic_algorithms_enabled(), os.environ.get("CUBLAS_WORKSPACE_CONFIG")
    os.environ["CUBLAS_WORKSPACE_CONFIG"] = env or ":4096:8"
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(was)
        if env is None:
            del os.environ["CUBLAS_WORKSPACE_CONFIG"]


SHAPE_ARGS = ("hidden", "layers", "heads", "kv_heads", "head_dim", "intermediate")  # the model's shape flags


def add_shape_args(ap: argparse.ArgumentParser) -> None:
    """--hidden, --layers, ... with ModelConfig's defaults (train.py's and step_time.py's)."""
    d = ModelConfig()
    for name in SHAPE_ARGS:
        ap.add_argument(f"--{name.replace('_', '-')}", type=int, default=getattr(d, name))


def model_config(args) -> ModelConfig:
    """The ModelConfig of parsed shape flags, over the training tokenizer's vocabulary."""
    return ModelConfig(vocab_size=data.VOCAB_SIZE, **{name: getattr(args, name) for name in SHAPE_ARGS})


def train(args) -> dict:
    torch.manual_seed(args.seed)
    dev = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    cfg = model_config(args)
    model = LlamaLM(cfg).to(dev)
    if args.init:  # start from a trained model's weights, with a fresh optimizer and schedule
        init = torch.load(args.init, map_location=dev)
        if init["config"] != cfg.to_dict():
            raise SystemExit(f"--init {args.init}: made for model {init['config']}, not {cfg.to_dict()}")
        model.load_state_dict({k: v.float() for k, v in init["state_dict"].items()})
    decay = [p for p in model.parameters() if p.dim() == 2]
    other = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1},
                             {"params": other, "weight_decay": 0.0}],
                            lr=args.lr, betas=(0.9, 0.95), fused=dev.type == "cuda")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    step, trained_s = 0, 0.0  # optimizer steps and training seconds done by earlier invocations
    copy_from = 0.0 if args.warmup_max == 0 else None  # run progress at which the copy warm-up ended; None while it lasts
    if args.resume:
        state = torch.load(args.resume, map_location=dev)
        if state["config"] != cfg.to_dict():
            raise SystemExit(f"--resume {args.resume}: made for model {state['config']}, not {cfg.to_dict()}")
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        step, trained_s, copy_from = state["step"], state["trained_s"], state["copy_from"]
        print(f"resumed at step {step} after {trained_s:.0f} s of training", flush=True)
    log = open(out / "log.jsonl", "a" if args.resume else "w")
    n_params = sum(p.numel() for p in model.parameters())
    print(f"model: {n_params / 1e6:.2f}M parameters on {dev}; {cfg}", flush=True)

    t0 = time.time()
    progress, stopped = 0.0, False
    forward = compiled(model) if args.compile else model
    workers = args.data_workers if args.data_workers is not None else (4 if dev.type == "cuda" else 0)
    prefetch = Prefetcher(workers)
    mix = data.parse_mix(args.mix) if args.mix else None
    try:
        def curriculum_progress(prog: float) -> float | None:
            """Where the curriculum stands at run progress ``prog``; None during the copy warm-up."""
            if copy_from is None:
                return None
            done = (prog - copy_from) / (1 - copy_from)
            return args.curriculum_from + (1 - args.curriculum_from) * done

        def progress_at(i: int) -> float:
            elapsed = trained_s + time.time() - t0
            return max(i / args.steps, elapsed / args.time_limit if args.time_limit else 0.0)

        def batch_args(i: int) -> tuple:  # the curriculum reads progress; the step keys the samples
            return (args.seed, i, curriculum_progress(progress_at(i)), args.batch_tokens, args.prompt_weight,
                    mix, args.decision_weight, args.drill, args.decision_ambiguous)

        first_step, waited_s = step, 0.0  # waited_s: this invocation's time blocked on batch building
        while True:
            t_wait = time.time()
            batch = prefetch.get(step, batch_args)
            waited_s += time.time() - t_wait
            progress = progress_at(step)
            if progress >= 1.0:
                break
            if ((args.session_limit and time.time() - t0 >= args.session_limit)
                    or (args.session_steps and step - first_step >= args.session_steps)):
                stopped = True  # this invocation's share is spent; state.pt continues the run
                break
            elapsed = trained_s + time.time() - t0
            lr = lr_at(progress, args.lr, args.warmup)
            for g in opt.param_groups:
                g["lr"] = lr
            ids, tgt, w, ans = (x.to(dev, non_blocking=True)
                                for x in (batch.ids, batch.targets, batch.weights, batch.answer))
            loss, logits, nll, gnorm = optimizer_step(forward, model, opt, ids, tgt, w)
            pred = logits.argmax(-1)  # answer metrics below cover every answer token, whatever its weight
            warming = copy_from is None
            if warming:  # the gate: this batch's copies are right, or the warm-up's share is spent
                copy_acc = (pred[ans] == tgt[ans]).float().mean().item()
                if copy_acc >= args.warmup_copy_acc or progress >= args.warmup_max:
                    copy_from = progress
                    print(f"copy warm-up ends at step {step} (progress {progress:.3f}): answer accuracy "
                          f"{copy_acc:.3f}{'' if copy_acc >= args.warmup_copy_acc else ' (gate not reached)'}",
                          flush=True)
                    prefetch.discard()  # the batches built ahead were warm-up ones
            if step % args.log_every == 0:
                digits = ans & (tgt >= ord("0")) & (tgt <= ord("9"))  # codes, years: retrieved, not guessed
                rec = {"step": step, "progress": round(progress, 4), "elapsed_s": round(elapsed, 1),
                       "lr": lr, "phase": "warmup" if warming else "curriculum",
                       "context": batch.context, "drill": batch.drill, "batch": ids.shape[0],
                       "loss": loss.item(), "answer_loss": (nll[ans].mean()).item(),
                       "answer_token_acc": (pred[ans] == tgt[ans]).float().mean().item(),
                       "answer_digit_acc": (pred[digits] == tgt[digits]).float().mean().item(),
                       "grad_norm": gnorm.item(), "data_wait_s": round(waited_s, 1)}
                log.write(json.dumps(rec) + "\n")
                log.flush()
                print(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in rec.items()),
                      flush=True)
            step += 1
    finally:
        prefetch.close()
    train_s = trained_s + time.time() - t0
    if stopped:
        torch.save({"config": cfg.to_dict(), "model": model.state_dict(), "optimizer": opt.state_dict(),
                    "step": step, "trained_s": train_s, "copy_from": copy_from}, out / "state.pt")
        print(f"stopped at step {step}, progress {progress:.3f}: continue with --resume {out / 'state.pt'}",
              flush=True)
    state = {k: v.detach().to(torch.bfloat16).cpu() for k, v in model.state_dict().items()}
    torch.save({"config": cfg.to_dict(), "state_dict": state, "steps": step, "args": vars(args)},
               out / "checkpoint.pt")
    summary = {"steps": step, "train_s": round(train_s, 1), "parameters": n_params,
               "device": torch.cuda.get_device_name() if dev.type == "cuda" else "cpu",
               "progress": round(progress, 4), "copy_warmup_ended_at": copy_from,
               "finished": not stopped, "args": vars(args)}
    if args.eval_samples and not stopped:
        ev = evaluate(model, args.eval_samples, args.eval_context)
        (out / "eval.json").write_text(json.dumps(ev, indent=1))
        summary |= {"eval_text2json": ev["text2json"], "eval_needle_recall": ev["needle_recall"]}  # same keys as the accuracy table
    (out / "run.json").write_text(json.dumps(summary, indent=1))
    return summary


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="output folder")
    ap.add_argument("--steps", type=int, default=2000, help="optimizer steps (upper bound with --time-limit)")
    ap.add_argument("--time-limit", type=float, default=None, help="seconds of training; the schedule fits them")
    ap.add_argument("--session-limit", type=float, default=None,
                    help="stop this invocation after these seconds, writing state.pt (for --resume)")
    ap.add_argument("--session-steps", type=int, default=None,
                    help="stop this invocation after these optimizer steps, writing state.pt (for --resume)")
    ap.add_argument("--resume", default=None, help="state.pt of an earlier invocation: continue its schedule")
    ap.add_argument("--init", default=None,
                    help="checkpoint.pt of an earlier run: start from its weights (new optimizer and schedule)")
    ap.add_argument("--data-workers", type=int, default=None,
                    help="processes building batches ahead (default: 4 on GPU, 0 = a thread on CPU)")
    ap.add_argument("--batch-tokens", type=int, default=65536, help="tokens per batch (about)")
    ap.add_argument("--lr", type=float, default=3e-3, help="peak learning rate")
    ap.add_argument("--warmup", type=float, default=0.03, help="warm-up, as a fraction of the run")
    ap.add_argument("--warmup-copy-acc", type=float, default=0.85,
                    help="the copy warm-up ends when a warm-up batch's answer token accuracy reaches this")
    ap.add_argument("--warmup-max", type=float, default=0.25,
                    help="... or when this fraction of the run is spent (0: no warm-up)")
    ap.add_argument("--curriculum-from", type=float, default=0.0,
                    help="start the curriculum at this point in [0, 1) (e.g. 0.35 skips its short-context "
                         "phases when continuing a trained model with --init)")
    ap.add_argument("--prompt-weight", type=float, default=0.1, help="loss weight of prompt tokens (answer: 1)")
    ap.add_argument("--decision-weight", type=float, default=1.0,
                    help="loss weight of the answer tokens that need a lookup: the first byte of each "
                         "Text2JSON value and of each needle code (other answer tokens: 1)")
    ap.add_argument("--decision-ambiguous", action="store_true",
                    help="also give --decision-weight to each Text2JSON value byte where copying has a choice: "
                         "its prefix within the value occurs in the prompt followed by different bytes")
    ap.add_argument("--mix", default=None,
                    help="task mix of the long-context phases, e.g. text2json=0.7,needle=0.2,copy=0.1 "
                         f"(default {','.join(f'{t}={w}' for t, w in data.MIX)}; tasks: {', '.join(data.TASKS)})")
    ap.add_argument("--drill", type=float, default=0.0,
                    help=f"share in [0, 1) of the batches from curriculum progress {data.DRILL_FROM} on that are "
                         f"binding drills: Text2JSON at {data.DRILL_CONTEXT[0]}-{data.DRILL_CONTEXT[1]} tokens with "
                         f"{data.DRILL_ENTITIES[0]}-{data.DRILL_ENTITIES[1]} entities (default 0)")
    ap.add_argument("--compile", action="store_true",
                    help="compile the training forward with torch.compile (Inductor; dynamic shapes)")
    ap.add_argument("--deterministic", action="store_true",
                    help="deterministic algorithms (flash attention's backward included): two runs of the same "
                         "command on the same kind of GPU end with the same weights; slower")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default=None, help="default: cuda if available")
    ap.add_argument("--log-every", type=int, default=10)
    ap.add_argument("--eval-samples", type=int, default=16, help="held-out samples per task (0: skip)")
    ap.add_argument("--eval-context", type=int, default=8192)
    add_shape_args(ap)
    return ap


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    for name in ("steps", "batch_tokens", "hidden", "layers", "heads", "kv_heads", "head_dim"):
        if getattr(args, name) < 1:
            raise SystemExit(f"--{name.replace('_', '-')} {getattr(args, name)}: must be >= 1")
    if not 0.0 <= args.curriculum_from < 1.0:
        raise SystemExit(f"--curriculum-from {args.curriculum_from}: must be in [0, 1)")
    if args.session_steps is not None and args.session_steps < 1:
        raise SystemExit(f"--session-steps {args.session_steps}: must be >= 1")
    for name in ("time_limit", "session_limit"):
        if getattr(args, name) is not None and getattr(args, name) <= 0:
            raise SystemExit(f"--{name.replace('_', '-')} {getattr(args, name)}: must be > 0 seconds")
    for name in ("warmup_copy_acc", "warmup_max"):
        if not 0 <= getattr(args, name) <= 1:
            raise SystemExit(f"--{name.replace('_', '-')} {getattr(args, name)}: must be in [0, 1]")
    if not 0 <= args.drill < 1:
        raise SystemExit(f"--drill {args.drill}: must be in [0, 1) (a share of the batches)")
    if args.decision_weight <= 0:
        raise SystemExit(f"--decision-weight {args.decision_weight}: must be > 0")
    if args.decision_ambiguous and args.decision_weight == 1.0:
        raise SystemExit("--decision-ambiguous weighs its bytes by --decision-weight, which is 1: give another weight")
    if args.mix:
        try:
            data.parse_mix(args.mix)
        except ValueError as e:
            raise SystemExit(str(e)) from None
    if args.data_workers is not None and args.data_workers < 0:
        raise SystemExit(f"--data-workers {args.data_workers}: must be >= 0")
    if args.init and not Path(args.init).is_file():
        raise SystemExit(f"--init {args.init}: no such file (a checkpoint.pt written by this module)")
    if args.init and args.resume:
        raise SystemExit("--init and --resume: give one (--resume continues a run, --init starts one from weights)")
    if args.resume and not Path(args.resume).is_file():
        raise SystemExit(f"--resume {args.resume}: no such file (a state.pt written by --session-limit)")
    with determinism(args.deterministic):
        summary = train(args)
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
