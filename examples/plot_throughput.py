"""Plot docs/results/throughput.json and the decode-step profile into docs/results/throughput.png.

    python examples/plot_throughput.py [--results docs/results]
"""

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", default="docs/results")
    args = parser.parse_args()
    res = Path(args.results)
    data = json.loads((res / "throughput.json").read_text())
    rows = data["results"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    labels = [f"{r['config']}\n{r['n_requests']} req" + (f", {r['budget']:.0%}" if r["budget"] else "") for r in rows]
    ax1.bar(labels, [r["decode_tok_s"] for r in rows], color=["tab:gray"] + ["tab:blue"] * (len(rows) - 1))
    ax1.set_ylabel("decode tokens/s")
    ax1.set_title(f"{data['device']}, {rows[0]['context'] // 1024}K prompts, eager")
    for r in rows[1:]:
        prof = r.get("profile")
        if not prof:
            continue
        steps = prof["steps"]
        step_ms = 1000 * r["decode_s"] / (r["decode_tokens"] / r["n_requests"])
        parts = {k: v / steps for k, v in prof["ms"].items()}
        parts["rest (model, host)"] = max(0.0, step_ms - sum(parts.values()))
        left = 0.0
        for name, ms in parts.items():
            ax2.barh([f"budget {r['budget']:.0%}"], [ms], left=left, label=f"{name} {ms:.0f} ms")
            left += ms
    ax2.set_xlabel("ms per decode step (kernel phases: mean over profiled steps)")
    ax2.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(res / "throughput.png", dpi=120)
    print(res / "throughput.png")


if __name__ == "__main__":
    main()
