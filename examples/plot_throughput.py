"""Plot docs/results/throughput.json into docs/results/throughput.png: decode tokens/s of
each configuration beside the stock run of the same call, with the ratio and the device
cache's hit rate; and into docs/results/throughput-vs-hits.png: each offload run's ratio
against its device-cache hit rate (misses made with --synthetic-miss-rates from session 26).

    python examples/plot_throughput.py [--results docs/results]
"""

import argparse
import json
import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def label(r: dict) -> str:
    if r["config"] == "stock":
        return f"stock\n{r['n_requests']} req"
    factor = r.get("device_cache_factor") or 1
    cache = ("cache" + (f" x{factor} (LRU)" if factor > 1 else "")) if r.get("device_cache") else "no cache"
    pool = ", fp8 K/V" if r.get("host_kv_dtype") == "fp8" else ""
    return f"{r['config']} {r['budget']:.1%}\n{r['n_requests']} req, {cache}{pool}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", default="docs/results")
    args = parser.parse_args()
    res = Path(args.results)
    data = json.loads((res / "throughput.json").read_text())
    n = len(data["runs"])
    cols = min(3, n)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.5 * cols, 4.4 * rows), sharey=True, squeeze=False)
    axes = axes.flatten()
    for ax in axes[n:]:
        ax.set_visible(False)
    for ax, run in zip(axes, data["runs"]):
        rows = [r for r in run["results"] if "decode_tok_s" in r]
        bars = ax.bar([label(r) for r in rows], [r["decode_tok_s"] for r in rows],
                      color=["tab:gray" if r["config"] == "stock" else "tab:blue" for r in rows])
        for bar, r in zip(bars, rows):
            if r["config"] == "stock":
                continue
            hit = (r.get("fetch") or {}).get("cache_hit_rate") if r.get("device_cache") else None
            text = f"{r['speedup_vs_stock']:.2f}x" + (f"\nhits {hit:.0%}" if hit is not None else "")
            ax.annotate(text, (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center", va="bottom",
                        fontsize=8)
        failed = [r for r in run["results"] if r.get("error")]
        if failed:  # a configuration that did not run: say so where its bar would be
            ax.text(0.98, 0.5, "\n".join(textwrap.fill(f"{r['config']} failed: {r['error']}", 40)[:200] for r in failed),
                    transform=ax.transAxes, ha="right", va="center", fontsize=7, color="tab:red")
        args = run["command"].split("throughput")[-1].strip() or "defaults"
        ax.set_title(textwrap.fill(f"session {run.get('session', '?')}: {args}", 60), fontsize=8)
        ax.margins(y=0.15)  # room for the ratio above the tallest bar
        ax.tick_params(axis="x", labelsize=7)
    for ax in axes[::cols]:
        ax.set_ylabel("decode tokens/s (steady, full batch)")
    fig.suptitle(f"{data['device']}: dummy Llama-3.1-8B, 32K prompts unless --context, eager unless --cuda-graphs; ratios against the stock run of the same call",
                 fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 0.98))
    fig.savefig(res / "throughput.png", dpi=120)
    print(res / "throughput.png")
    plot_against_hits(data, res / "throughput-vs-hits.png")


def hit_points(data: dict) -> dict[int, list[tuple]]:
    """context -> sorted (hit rate, ratio against stock, session, commit) of the offload runs that
    report both, from session 24 on (the in-place device cache)."""
    series: dict[int, list] = {}
    for run in data["runs"]:
        if run.get("session", 0) < 24:
            continue
        for r in run["results"]:
            hit = (r.get("fetch") or {}).get("cache_hit_rate")
            if r["config"] == "stock" or hit is None or "speedup_vs_stock" not in r:
                continue
            series.setdefault(r["context"], []).append((hit, r["speedup_vs_stock"], run["session"], run.get("commit", "")))
    return {ctx: sorted(pts) for ctx, pts in series.items()}


def plot_against_hits(data: dict, path: Path) -> None:
    """Ratio against stock by device-cache hit rate, one series per context; the session and
    commit label each point."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for ctx, pts in sorted(hit_points(data).items()):
        ax.scatter([p[0] for p in pts], [p[1] for p in pts], label=f"{ctx // 1000}K context")
        for hit, ratio, session, commit in pts:
            ax.annotate(f"s{session} {commit}", (hit, ratio), fontsize=6, xytext=(3, 3), textcoords="offset points")
    ax.axhline(1.0, color="gray", lw=0.8)
    ax.axhline(3.0, color="tab:red", lw=0.8, ls="--", label="3x target")
    ax.set_xlabel("device-cache hit rate (share of selected cold tokens not read from the host)")
    ax.set_ylabel("decode tok/s, offload / stock (same call)")
    ax.set_title(f"{data['device']}: qlandmark-scalar 3%, fp8 host pool, CUDA graphs; misses below 100%\n"
                 "made by --synthetic-miss-rates (the trained model hits 42-44% at 3%)", fontsize=8)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(path)


if __name__ == "__main__":
    main()
