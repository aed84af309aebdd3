"""Serving throughput: N long-prompt requests, ``--concurrency`` at a time, through the
OpenAI API (output tok/s, TTFT and TPOT percentiles), or vLLM's own ``vllm bench serve``."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

from vllm_kvoffload.bench import synth


def generate(n: int, context_tokens: int, seed: int, count) -> list[dict]:
    """``n`` distinct prompts of ``context_tokens`` tokens; each starts differently, so a
    prefix cache cannot serve one request from another."""
    out = []
    for i in range(n):
        rng = random.Random(f"throughput/{seed}/{i}")
        head = f"Request {i}. Read the notes below and summarise them.\n\n"
        prompt = synth.fit(count, context_tokens, lambda f, head=head: head + synth.paragraphs(f), rng,
                           what=f"throughput prompt {i}")
        out.append({"id": f"{seed}-{i}", "prompt": prompt})
    return out


def score_one(output: str, sample: dict) -> dict:
    return {}


def summarize(records: list[dict]) -> dict:
    return {}  # the runner's timing block is the result


# vLLM's CLI wrapper needs its distribution's metadata; the benchmark itself does not.
_CHILD = """import sys
from vllm.benchmarks.serve import add_cli_args, main
from vllm.utils.argparse_utils import FlexibleArgumentParser
p = FlexibleArgumentParser(prog="vllm bench serve"); add_cli_args(p)
main(p.parse_args(sys.argv[1:]))
"""


def vllm_bench_cmd(base_url: str, model: str, tokenizer: str, input_len: int, output_len: int,
                   num_prompts: int, concurrency: int, out: Path, seed: int = 0) -> list[str]:
    root = base_url.rstrip("/").removesuffix("/v1")
    return [sys.executable, "-c", _CHILD, "--backend", "openai", "--base-url", root,
            "--model", model, "--tokenizer", tokenizer, "--dataset-name", "random",
            "--random-input-len", str(input_len), "--random-output-len", str(output_len),
            "--num-prompts", str(num_prompts), "--max-concurrency", str(concurrency),
            "--seed", str(seed), "--ignore-eos", "--disable-tqdm", "--save-result",
            "--result-dir", str(out), "--result-filename", "vllm_bench.json",
            "--percentile-metrics", "ttft,tpot,itl,e2el", "--metric-percentiles", "50,90,99"]


def run_vllm_bench(cmd: list[str], out: Path) -> dict:
    """Run ``vllm bench serve`` (same code as the CLI) and map its result to our summary."""
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "vllm_bench.log", "w") as log:
        rc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT).returncode
    res_path = out / "vllm_bench.json"
    if rc != 0 or not res_path.exists():
        tail = (out / "vllm_bench.log").read_text()[-2000:]
        raise RuntimeError(f"vllm bench serve failed (exit {rc}); log {out / 'vllm_bench.log'}:\n{tail}")
    r = json.loads(res_path.read_text())
    pick = lambda m: {k: r[f"{k}_{m}_ms"] for k in ("mean", "p50", "p90", "p99")}  # noqa: E731
    summary = {"benchmark": "throughput", "backend": "vllm-bench", "complete": r["failed"] == 0,
               "n_samples": r["num_prompts"], "n_done": r["completed"], "n_errors": r["failed"],
               "metrics": {}, "model": r["model_id"],
               "timing": {"requests": r["completed"], "busy_s": r["duration"],
                          "output_tokens": r["total_output_tokens"], "prompt_tokens": r["total_input_tokens"],
                          "output_tok_s": r["output_throughput"], "request_s": r["request_throughput"],
                          "ttft_ms": pick("ttft"), "tpot_ms": pick("tpot")}}
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary
