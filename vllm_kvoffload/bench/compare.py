"""Same benchmark on several targets: endpoints given as NAME=URL, or one engine started
per ``--kv-offload`` setting. Prints one table; saves compare.json and matplotlib plots.

    compare --endpoints stock=http://h:8000/v1 offload=http://h:8001/v1 --output DIR -- needle ...
    compare --launch-model PATH --settings none exact-topk:budget=0.03 --output DIR -- text2json ...
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
from pathlib import Path

from vllm_kvoffload.bench import server


def add_parser(sub) -> None:
    p = sub.add_parser("compare", help="one benchmark against several endpoints or settings",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--endpoints", nargs="+", metavar="NAME=URL", help="already running servers")
    g.add_argument("--launch-model", metavar="PATH", help="start one server per --settings entry")
    p.add_argument("--settings", nargs="+", default=["none"], metavar="SETTING",
                   help="'none' or 'SCORER[:key=value,...]', e.g. exact-topk:budget=0.03")
    p.add_argument("--server-args", default="", help="extra api_server flags, one shell-quoted string")
    p.add_argument("--startup-timeout", type=float, default=600.0)
    p.add_argument("--concurrency-sweep", nargs="+", type=int, metavar="C",
                   help="run the benchmark at each concurrency (throughput against concurrency)")
    p.add_argument("--output", default="runs/compare")
    p.add_argument("bench", nargs=argparse.REMAINDER, help="-- BENCHMARK [its flags]")


def parse_endpoint(text: str) -> tuple[str, str]:
    name, eq, url = text.rpartition("=")  # names may hold '=' (settings); URLs do not
    if not eq or not name or not url.startswith(("http://", "https://")):
        raise ValueError(f"--endpoints {text!r}: expected NAME=URL, e.g. stock=http://127.0.0.1:8000/v1")
    return name, url


def budget_point(name: str) -> tuple[str, float] | None:
    """(scorer, budget) when ``name`` is a setting with a budget; ('none', nan) for 'none'."""
    try:
        cfg = server.parse_setting(name)
    except ValueError:
        return None
    if cfg is None:
        return "none", math.nan
    return (cfg["scorer"], float(cfg["budget"])) if "budget" in cfg else None


def _bench_argv(args) -> list[str]:
    argv = args.bench[1:] if args.bench[:1] == ["--"] else args.bench
    from vllm_kvoffload.bench.__main__ import MODULES

    if not argv or argv[0] not in MODULES:
        raise ValueError(f"compare needs '-- BENCHMARK [flags]' at the end; accepted benchmarks: "
                         f"{', '.join(MODULES)}")
    for flag in ("--base-url", "--output"):
        if flag in argv:
            raise ValueError(f"compare sets {flag} itself; remove it from the benchmark flags")
    return argv


def _run_target(name: str, url: str, argv: list[str], args, rows: list[dict]) -> None:
    from vllm_kvoffload.bench.__main__ import parser, run_one

    for c in args.concurrency_sweep or [None]:
        out = Path(args.output) / name.replace("/", "_") / (f"c{c}" if c else "")
        full = [*argv, "--base-url", url, "--output", str(out)] + (["--concurrency", str(c)] if c else [])
        sub_args = parser().parse_args(full)
        s = run_one(sub_args)
        rows.append({"name": name, "concurrency": sub_args.concurrency, "summary": s})


def table(rows: list[dict], metric: str) -> str:
    cols = ["target", "conc", "done", metric, "out tok/s", "TTFT p50 ms", "TPOT p50 ms"]
    keep = [i for i, c in enumerate(cols) if not (metric == "output_tok_s" and i == 3)]
    lines = []
    for r in rows:
        s, t = r["summary"], r["summary"].get("timing", {})
        m = s["metrics"].get(metric, t.get(metric, math.nan))
        lines.append([r["name"], str(r["concurrency"]), f"{s['n_done']}/{s['n_samples']}", f"{m:.2f}",
                      f"{t.get('output_tok_s', math.nan):.1f}",
                      f"{t.get('ttft_ms', {}).get('p50', math.nan):.1f}",
                      f"{t.get('tpot_ms', {}).get('p50', math.nan):.2f}"])
    cols, lines = [cols[i] for i in keep], [[l[i] for i in keep] for l in lines]
    w = [max(len(c), *(len(l[i]) for l in lines)) for i, c in enumerate(cols)]
    fmt = lambda l: "| " + " | ".join(x.ljust(w[i]) for i, x in enumerate(l)) + " |"  # noqa: E731
    return "\n".join([fmt(cols), "|" + "|".join("-" * (x + 2) for x in w) + "|", *map(fmt, lines)])


def plots(rows: list[dict], metric: str, out: Path) -> list[Path]:
    """score_vs_budget.png (one line per scorer, 'none' dashed) when targets are settings
    with budgets; throughput_vs_concurrency.png when more than one concurrency ran."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    saved = []
    by_scorer: dict[str, list[tuple[float, float]]] = {}
    baseline = None
    for r in rows:
        pt, m = budget_point(r["name"]), r["summary"]["metrics"].get(metric)
        if pt is None or m is None:
            continue
        if pt[0] == "none":
            baseline = m
        else:
            by_scorer.setdefault(pt[0], []).append((pt[1], m))
    if by_scorer:
        fig, ax = plt.subplots(figsize=(6, 4))
        for scorer, pts in sorted(by_scorer.items()):
            xs, ys = zip(*sorted(pts))
            ax.plot(xs, ys, marker="o", label=scorer)
        if baseline is not None:
            ax.axhline(baseline, ls="--", color="gray", label="none (full KV)")
        ax.set(xscale="log", xlabel="budget", ylabel=metric, title=f"{metric} against budget")
        ax.legend()
        fig.tight_layout()
        fig.savefig(out / "score_vs_budget.png", dpi=120)
        plt.close(fig)
        saved.append(out / "score_vs_budget.png")
    concs = {r["concurrency"] for r in rows}
    if len(concs) > 1:
        fig, ax = plt.subplots(figsize=(6, 4))
        for name in dict.fromkeys(r["name"] for r in rows):
            pts = sorted((r["concurrency"], r["summary"]["timing"].get("output_tok_s", math.nan))
                         for r in rows if r["name"] == name)
            ax.plot(*zip(*pts), marker="o", label=name)
        ax.set(xscale="log", xlabel="concurrency", ylabel="output tok/s", title="throughput against concurrency")
        ax.legend()
        fig.tight_layout()
        fig.savefig(out / "throughput_vs_concurrency.png", dpi=120)
        plt.close(fig)
        saved.append(out / "throughput_vs_concurrency.png")
    return saved


def main(args) -> list[dict]:
    from vllm_kvoffload.bench.__main__ import METRIC

    argv = _bench_argv(args)
    metric = METRIC[argv[0]]
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    if args.endpoints:
        for name, url in map(parse_endpoint, args.endpoints):
            _run_target(name, url, argv, args, rows)
    else:
        settings = [(s, server.parse_setting(s)) for s in args.settings]  # validate all first
        for name, cfg in settings:
            port = server.free_port()
            cmd = server.server_cmd(args.launch_model, port, cfg, shlex.split(args.server_args))
            log = out / f"server-{name.replace('/', '_').replace(':', '_')}.log"
            print(f"starting server for setting {name!r}: {shlex.join(cmd)}")
            with server.launch(cmd, port, log, args.startup_timeout) as url:
                _run_target(name, url, [*argv, "--model", args.launch_model]
                            if "--model" not in argv else argv, args, rows)
    text = table(rows, metric)
    print(text)
    (out / "compare.md").write_text(text + "\n")
    (out / "compare.json").write_text(json.dumps(
        [{"name": r["name"], "concurrency": r["concurrency"], **r["summary"]} for r in rows], indent=1))
    for p in plots(rows, metric, out):
        print(f"saved {p}")
    return rows
