"""The accuracy table: every scorer at every budget, through vLLM, on held-out synthetic
Text2JSON and multi-needle prompts, against full attention (stock vLLM).

    python -m vllm_kvoffload.evaluation.accuracy --out docs/results/accuracy.json

Each configuration runs in its own process (one ``vllm.LLM`` engine each; ``--parallel``
of them at once share the GPU), on the same samples, greedy. Writes the JSON (one object
per configuration, with every sample's output and score), a markdown table and a plot
beside it. Bytes are computed for the served model's geometry: device bytes per token are
the scorer's summary over all layers; PCIe bytes per step are the selected tokens' K and V
over all layers for one sequence of ``--context`` tokens.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from vllm_kvoffload.bench import needle, text2json, tokens

BUDGETS = (0.015, 0.03, 0.06)
MAX_TOKENS = {"text2json": 1400, "needle": 400}


def make_samples(model: str, context: int, n: int, seed: int) -> list[dict]:
    count = tokens.counter(tokens.resolve(None, model))
    from vllm_kvoffload.training.data import MAX_ENTITIES, MAX_NEEDLES  # the trained model's task sizes

    t2j = text2json.generate(n, context, seed, count, max_entities=MAX_ENTITIES)
    ndl = needle.generate(n, context, seed, count, needles=MAX_NEEDLES)
    return [{"task": "text2json", **s} for s in t2j] + [{"task": "needle", **s} for s in ndl]


def run_config(model: str, scorer: str, budget: float | None, samples: list[dict], engine: dict,
               max_tokens: int | None = None, host_kv_dtype: str = "auto") -> dict:
    """One engine, all samples, greedy; returns per-sample records and the summary."""
    from vllm import LLM, SamplingParams

    extra = {}
    if scorer != "full":
        extra["additional_config"] = {"kv_offload": {"scorer": scorer, "budget": budget, "host_gb": 2.0,
                                                     "host_kv_dtype": host_kv_dtype}}
    t0 = time.time()
    llm = LLM(model=model, seed=0, **engine, **extra)
    started = time.time() - t0
    convs = [[{"role": "user", "content": s["prompt"]}] for s in samples]
    params = [SamplingParams(temperature=0, max_tokens=max_tokens or MAX_TOKENS[s["task"]]) for s in samples]
    t0 = time.time()
    outs = llm.chat(convs, params, use_tqdm=False)
    gen_s = time.time() - t0
    records = []
    for s, o in zip(samples, outs):
        text = o.outputs[0].text
        score = (text2json if s["task"] == "text2json" else needle).score_one(text, s)
        records.append({"task": s["task"], "id": s["id"], "output": text, "prompt_tokens": len(o.prompt_token_ids),
                        "output_tokens": len(o.outputs[0].token_ids), **score})
    llm.llm_engine.engine_core.shutdown()
    return {"scorer": scorer, "budget": budget, **summarize(records), "startup_s": round(started, 1),
            "generate_s": round(gen_s, 1), "records": records}


def summarize(records: list[dict]) -> dict:
    t2j = [r for r in records if r["task"] == "text2json"]
    ndl = [r for r in records if r["task"] == "needle"]
    out = {}
    if t2j:
        out["text2json"] = round(text2json.summarize(t2j)["score"], 2)
    if ndl:
        out["needle_recall"] = round(needle.summarize(ndl)["recall"], 2)
    return out


def traffic(model: str, scorer: str, budget: float | None, context: int, host_kv_dtype: str = "auto") -> dict:
    """Device bytes per token (summaries, all layers) and PCIe bytes per decode step."""
    import torch

    from vllm_kvoffload.scorers import KVGeometry, create_scorer

    cfg = json.loads((Path(model) / "config.json").read_text())
    hkv, hq = cfg["num_key_value_heads"], cfg["num_attention_heads"]
    d = cfg.get("head_dim") or cfg["hidden_size"] // hq
    layers = cfg["num_hidden_layers"]
    dtype = getattr(torch, cfg.get("torch_dtype", "bfloat16"))  # what vLLM serves with dtype "auto"
    values = 2 * hkv * d * layers  # K and V of one token, all layers
    kv_token = values * dtype.itemsize
    if scorer == "full":
        return {"device_bytes_per_token": kv_token, "pcie_bytes_per_step": 0}
    geom = KVGeometry(hkv, hq, d, 16, dtype)
    summary = create_scorer(scorer, geom).summary_bytes_per_token() * layers
    host_token = values * {"auto": dtype.itemsize, "fp8": 1, "int4": 0.5}[host_kv_dtype]
    # a 4-bit pool keeps one fp32 scale per token, KV head, K or V and layer in device memory (HostPool.scales)
    scales = 2 * hkv * layers * 4 if host_kv_dtype == "int4" else 0
    return {"device_bytes_per_token": round(summary) + scales,
            "pcie_bytes_per_step": round(round(budget * context) * host_token)}


def _child(spec_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    samples = [json.loads(line) for line in open(spec["samples"])]
    res = run_config(spec["model"], spec["scorer"], spec["budget"], samples, spec["engine"], spec["max_tokens"],
                     spec["host_kv_dtype"])
    Path(spec["result"]).write_text(json.dumps(res))


def budget_label(budget: float | None) -> str:
    return "full" if budget is None else f"{100 * budget:g}%"


def table(rows: list[dict]) -> str:
    lines = ["| scorer | budget | Text2JSON | needle recall % | device B/token | PCIe MB/step |",
             "| --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        lines.append(f"| {r['scorer']} | {budget_label(r['budget'])} | {r.get('text2json', float('nan')):.1f} | "
                     f"{r.get('needle_recall', float('nan')):.1f} | {r['device_bytes_per_token']:,} | "
                     f"{r['pcie_bytes_per_step'] / 1e6:.2f} |")
    return "\n".join(lines)


def config_order(row: dict) -> tuple:
    """Full attention first, then the scorers in registry order, budgets ascending."""
    from vllm_kvoffload.scorers import available

    names = available()
    scorer = row["scorer"]
    return (scorer != "full", names.index(scorer) if scorer in names else len(names), row["budget"] or 0.0)


def report(out: Path) -> tuple[int, int]:
    """Write the markdown table and the plot beside ``out`` (the JSON); returns (measured, failed)."""
    rows = sorted(json.loads(out.read_text())["configs"], key=config_order)
    ok = [r for r in rows if "error" not in r]
    md = table(ok)
    failed = [r for r in rows if "error" in r]
    if failed:
        md += "\n\nNot measured: " + "; ".join(
            f"{r['scorer']} {budget_label(r['budget'])} ({r['error']})" for r in failed) + "."
    out.with_suffix(".md").write_text(md + "\n")
    if ok:
        plot(ok, out.with_suffix(".png"))
    print(md)
    return len(ok), len(failed)


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    full = next((r for r in rows if r["scorer"] == "full"), None)
    scorers = [s for s in dict.fromkeys(r["scorer"] for r in rows) if s != "full"]
    budgets = sorted({r["budget"] for r in rows if r["budget"] is not None})
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    for ax, metric, title in ((axes[0], "text2json", "Text2JSON score"), (axes[1], "needle_recall", "needle recall %")):
        width = 0.8 / max(1, len(budgets))
        for j, b in enumerate(budgets):
            vals = [next((r.get(metric, 0) for r in rows if r["scorer"] == s and r["budget"] == b), 0) for s in scorers]
            ax.bar([i + j * width for i in range(len(scorers))], vals, width, label=f"budget {100 * b:g}%")
        if full and metric in full:
            ax.axhline(full[metric], color="k", ls="--", lw=1, label="full attention")
        ax.set_xticks([i + width * (len(budgets) - 1) / 2 for i in range(len(scorers))], scorers, rotation=30)
        ax.set_ylim(0, 105)
        ax.set_title(title)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=9)  # below the bars
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    fig.savefig(path, dpi=120)


def parser() -> argparse.ArgumentParser:
    from vllm_kvoffload.scorers import available

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="model folder (default: the shipped trained model)")
    ap.add_argument("--scorers", nargs="+", default=available(), help=f"any of: {', '.join(available())}")
    ap.add_argument("--budgets", nargs="+", type=float, default=list(BUDGETS), help="fractions of the context")
    ap.add_argument("--context", type=int, default=8192, help="prompt tokens")
    ap.add_argument("--samples", type=int, default=16, help="samples per task")
    ap.add_argument("--tasks", nargs="+", choices=("text2json", "needle"), default=["text2json", "needle"])
    ap.add_argument("--seed", type=int, default=0, help="held-out seed (training never uses integer seeds)")
    ap.add_argument("--parallel", type=int, default=1, help="engines at once")
    ap.add_argument("--no-full", action="store_true", help="skip the full-attention baseline")
    ap.add_argument("--gpu-memory-utilization", type=float, default=None,
                    help="per engine (default: 0.9 / --parallel on GPU)")
    ap.add_argument("--max-tokens", type=int, default=None,
                    help=f"new tokens per request (default: {MAX_TOKENS})")
    ap.add_argument("--host-kv-dtype", choices=("auto", "fp8", "int4"), default="auto",
                    help="offloaded K/V in the model's dtype (exact), fp8 or int4 (the setting of every offload row)")
    ap.add_argument("--append", action="store_true", help="keep --out's finished configurations; run the rest")
    ap.add_argument("--timeout", type=float, default=3600, help="seconds per configuration")
    ap.add_argument("--out", default="docs/results/accuracy.json")
    ap.add_argument("--report-only", action="store_true", help="only rewrite --out's table and plot from its JSON")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    return ap


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.child:
        _child(args.child)
        return 0
    from vllm_kvoffload.scorers import available
    from vllm_kvoffload.tiny_model import default_model_path

    if args.report_only:
        if not Path(args.out).is_file():
            raise SystemExit(f"--report-only: {args.out} does not exist")
        return 1 if report(Path(args.out))[1] else 0
    bad = [s for s in args.scorers if s not in available()]
    if bad:
        raise SystemExit(f"--scorers {' '.join(bad)}: unknown; accepted: {', '.join(available())}")
    if not all(0 < b <= 1 for b in args.budgets):
        raise SystemExit(f"--budgets {args.budgets}: each must be a fraction in (0, 1]")
    if args.samples < 1 or args.parallel < 1:
        raise SystemExit("--samples and --parallel must be >= 1")
    model = args.model or str(default_model_path())
    samples = [s for s in make_samples(model, args.context, args.samples, args.seed) if s["task"] in args.tasks]
    import torch

    gpu = torch.cuda.is_available()
    # A fixed KV size (every sample fits at once), so concurrent engines never profile
    # each other's memory.
    engine = {"max_model_len": args.context + (args.max_tokens or max(MAX_TOKENS.values())) + 64, "enforce_eager": True,
              "max_num_seqs": len(samples), "kv_cache_memory_bytes": 2 << 30}
    if gpu:
        engine["gpu_memory_utilization"] = args.gpu_memory_utilization or round(min(0.1, 0.9 / args.parallel), 3)
    else:
        engine["dtype"] = "float32"
    configs = ([] if args.no_full else [("full", None)]) + [(s, b) for s in args.scorers for b in args.budgets]
    out = Path(args.out)
    kept: list[dict] = []
    calls: list[dict] = []  # every invocation that wrote --out's rows
    if args.append and out.exists():  # keep the finished configurations of the same setting
        prev = json.loads(out.read_text())
        if ((prev["context"], prev["samples_per_task"], prev["seed"], prev.get("host_kv_dtype", "auto"))
                != (args.context, args.samples, args.seed, args.host_kv_dtype)):
            raise SystemExit(f"--append: {out} was made with another context/samples/seed/host K/V dtype")
        kept = [r for r in prev["configs"] if "error" not in r]
        calls = prev["calls"]
        configs = [c for c in configs if not any((r["scorer"], r["budget"]) == c for r in kept)]
    work = Path(tempfile.mkdtemp(prefix="kvoffload-accuracy-"))
    with open(work / "samples.jsonl", "w") as f:
        f.writelines(json.dumps(s) + "\n" for s in samples)

    device = torch.cuda.get_device_name() if gpu else "cpu"
    out.parent.mkdir(parents=True, exist_ok=True)
    t0, done, lock = time.time(), list(kept), threading.Lock()

    def save(rows: list[dict]) -> None:
        """Rewrite --out with the rows so far: a run cut short keeps them for --append."""
        result = {"device": device, "model": model, "context": args.context, "samples_per_task": args.samples,
                  "seed": args.seed, "tasks": args.tasks, "host_kv_dtype": args.host_kv_dtype,
                  "calls": calls + [{"command": "python -m vllm_kvoffload.evaluation.accuracy "
                                     + " ".join(argv or sys.argv[1:]), "wall_s": round(time.time() - t0, 1)}],
                  "configs": sorted(rows, key=config_order)}
        tmp = out.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(result, indent=1))
        tmp.replace(out)

    def launch(i_cfg):
        i, (scorer, budget) = i_cfg
        spec = {"model": model, "scorer": scorer, "budget": budget, "engine": engine, "max_tokens": args.max_tokens,
                "host_kv_dtype": args.host_kv_dtype,
                "samples": str(work / "samples.jsonl"), "result": str(work / f"result{i}.json")}
        (work / f"spec{i}.json").write_text(json.dumps(spec))
        log = open(work / f"log{i}.txt", "w")
        proc = subprocess.Popen([sys.executable, "-m", "vllm_kvoffload.evaluation.accuracy", "--child",
                                 str(work / f"spec{i}.json")], stdout=log, stderr=subprocess.STDOUT,
                                env={**os.environ, "VLLM_LOGGING_LEVEL": os.environ.get("VLLM_LOGGING_LEVEL", "WARNING")},
                                start_new_session=True)
        try:
            rc = proc.wait(timeout=args.timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)  # the engine core is a child of the child
            rc = f"timeout after {args.timeout} s"
        if rc:
            tail = (work / f"log{i}.txt").read_text()[-3000:]
            print(f"[{scorer} {budget}] failed (rc {rc}):\n{tail}", flush=True)
            res = {"scorer": scorer, "budget": budget, "error": f"rc {rc}", "log_tail": tail}
        else:
            res = (json.loads((work / f"result{i}.json").read_text())
                   | traffic(model, scorer, budget, args.context, args.host_kv_dtype))
            print(f"[{scorer} {budget}] text2json={res.get('text2json')} needle={res.get('needle_recall')} "
                  f"(start {res['startup_s']} s, generate {res['generate_s']} s)", flush=True)
        with lock:  # failures too: --append re-runs them
            done.append(res)
            save(done)
        return res

    with ThreadPoolExecutor(args.parallel) as pool:
        list(pool.map(launch, enumerate(configs)))  # each launch saves its row into ``done``
    save(done)  # once more, for this call's final wall time
    return 1 if report(out)[1] else 0


if __name__ == "__main__":
    sys.exit(main())
