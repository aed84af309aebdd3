"""Time the training step of the recipe, eager against compiled, across the curriculum's phases.

    python -m vllm_kvoffload.training.step_time --variants eager,compile --steps 16000

For each variant it trains a fresh model (same seed) on batches of each curriculum phase, as
``train.py`` builds them for the shipped recipe (prompt weight 0.02, decision weight 3; ``--mix`` and
``--drill`` as given), and prints milliseconds per step. The phases' times, weighted by their
share of the curriculum, predict how long ``--steps`` steps take. Each variant's first loss (same
weights, same batch) is printed beside the first variant's, so a variant that changed the function shows.
"""

from __future__ import annotations

import argparse
import time

import torch

from vllm_kvoffload.training import data
from vllm_kvoffload.training.model import LlamaLM, ModelConfig
from vllm_kvoffload.training.train import add_shape_args, compiled, determinism, model_config, optimizer_step

VARIANTS = ("eager", "compile")
# (curriculum progress at the middle of a phase, the phase's share of the curriculum), from data.CURRICULUM
_ENDS = [0.0] + [upto for upto, _, _ in data.CURRICULUM]
PHASES = tuple(((lo + hi) / 2, hi - lo) for lo, hi in zip(_ENDS, _ENDS[1:]))


def _batches(args, progress: float, n: int) -> list[data.Batch]:
    mix = data.parse_mix(args.mix) if args.mix else None
    return [data.make_batch(args.seed, i, progress, args.batch_tokens, 0.02, mix, 3.0, args.drill)
            for i in range(n)]


def _on(batch: data.Batch, dev: torch.device):
    return (batch.ids.to(dev), batch.targets.to(dev), batch.weights.to(dev))


def time_variant(variant: str, cfg: ModelConfig, phase_batches: list[list[data.Batch]], dev: torch.device,
                 warm: int) -> tuple[float, list[float]]:
    """(first loss, milliseconds per step of each phase) of a fresh seeded model trained with ``variant``."""
    torch.manual_seed(0)
    model = LlamaLM(cfg).to(dev)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.95), fused=dev.type == "cuda")
    forward = compiled(model) if variant == "compile" else model
    first = None
    ms = []
    for batches in phase_batches:
        for b in batches[:warm]:  # compilation and allocator warm-up; not timed
            loss = optimizer_step(forward, model, opt, *_on(b, dev))[0]
            first = loss.item() if first is None else first
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        for b in batches[warm:]:
            optimizer_step(forward, model, opt, *_on(b, dev))
        if dev.type == "cuda":
            torch.cuda.synchronize()
        ms.append(1000 * (time.perf_counter() - t) / max(1, len(batches) - warm))
    return first, ms


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--variants", default="eager,compile", help=f"comma-separated, of {', '.join(VARIANTS)}")
    ap.add_argument("--batches", type=int, default=24, help="batches per phase (the first --warm are not timed)")
    ap.add_argument("--warm", type=int, default=4, help="untimed steps per phase")
    ap.add_argument("--steps", type=int, default=16000, help="steps of the run whose time is predicted")
    ap.add_argument("--batch-tokens", type=int, default=65536)
    ap.add_argument("--mix", default="text2json=0.6,needle=0.3,copy=0.1")
    ap.add_argument("--drill", type=float, default=0.4)
    ap.add_argument("--deterministic", action="store_true", help="time train.py --deterministic's steps")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default=None, help="default: cuda if available")
    add_shape_args(ap)
    args = ap.parse_args(argv)
    variants = [v for v in args.variants.split(",") if v]
    bad = [v for v in variants if v not in VARIANTS]
    if bad or not variants:
        raise SystemExit(f"--variants {args.variants}: accepted are {', '.join(VARIANTS)}")
    if args.batches <= args.warm or args.warm < 1:
        raise SystemExit(f"--batches {args.batches} --warm {args.warm}: need 1 <= warm < batches")
    dev = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    cfg = model_config(args)
    phase_batches = [_batches(args, p, args.batches) for p, _ in PHASES]
    contexts = [sum(b.ids.shape[1] for b in bs) / len(bs) for bs in phase_batches]
    with determinism(args.deterministic):
        results = {v: time_variant(v, cfg, phase_batches, dev, args.warm) for v in variants}
    name = torch.cuda.get_device_name() if dev.type == "cuda" else "cpu"
    print(f"training step time on {name}, {args.batch_tokens} tokens per batch"
          f"{', deterministic algorithms' if args.deterministic else ''}, model {cfg}")
    ref = results[variants[0]][0]
    print("| variant | first loss | " + " | ".join(f"progress {p:g} (~{c:.0f} tok) ms" for (p, _), c in
                                                   zip(PHASES, contexts)) + f" | {args.steps} steps, min |")
    print("| --- " * (3 + len(PHASES)) + "|")
    for v in variants:
        first, ms = results[v]
        run_min = args.steps * sum(m * share for m, (_, share) in zip(ms, PHASES)) / 1000 / 60
        print(f"| {v} | {first:.4f} ({first - ref:+.1e}) | " + " | ".join(f"{m:.1f}" for m in ms)
              + f" | {run_min:.1f} |")


if __name__ == "__main__":
    main()
