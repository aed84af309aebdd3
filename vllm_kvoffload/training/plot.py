"""Plot a training run's loss curve from its ``log.jsonl``.

    python -m vllm_kvoffload.training.plot runs/train/log.jsonl docs/results/training_loss.png
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def plot(log: str | Path, out: str | Path, title: str = "") -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in open(log) if line.strip()]
    if not rows:
        raise ValueError(f"{log}: no logged steps")
    steps = [r["step"] for r in rows]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 3.8))
    ax1.plot(steps, [r["loss"] for r in rows], label="weighted loss (prompt tokens down-weighted)")
    ax1.plot(steps, [r["answer_loss"] for r in rows], label="answer tokens")
    ax1.set_yscale("log")
    ax1.set_xlabel("step")
    ax1.set_ylabel("cross-entropy (nats/token)")
    ax1.legend()
    ax2.plot(steps, [100 * r["answer_token_acc"] for r in rows], color="C2", label="answer token accuracy %")
    ax2b = ax2.twinx()
    ax2b.plot(steps, [r["context"] for r in rows], color="C7", lw=0.6, alpha=0.6, label="context (tokens)")
    ax2.set_xlabel("step")
    ax2.set_ylabel("answer token accuracy %")
    ax2b.set_ylabel("batch context (tokens)")
    ax2.set_ylim(0, 100)
    fig.suptitle(title or f"training: {len(rows)} logged steps")
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    return Path(out)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("log")
    ap.add_argument("out")
    ap.add_argument("--title", default="")
    args = ap.parse_args(argv)
    print(plot(args.log, args.out, args.title))


if __name__ == "__main__":
    main()
