"""Run the four benchmarks at small sizes and compare two endpoints.

    python examples/benchmark.py                       # starts a tiny-model vLLM server on CPU
    python examples/benchmark.py --base-url http://127.0.0.1:8000/v1 --model NAME --tokenizer TOK

Results land in runs/example/<benchmark>/ (records.jsonl, summary.json) and
runs/example/compare/ (compare.md, plots). Rerunning resumes instead of redoing.
"""

import argparse
import json

from vllm_kvoffload.bench import server
from vllm_kvoffload.bench.__main__ import main as bench


def run_all(url: str, extra: list[str]) -> None:
    small = ["--context-tokens", "2000", "--max-tokens", "32", "--base-url", url, *extra]
    for name, args in [("text2json", ["--synthetic", "8"]), ("needle", ["--synthetic", "8", "--needles", "4"]),
                       ("html2tsv", ["--synthetic", "4"]), ("throughput", ["--num-prompts", "16"])]:
        assert bench([name, *args, *small, "--output", f"runs/example/{name}"]) == 0
        print(json.dumps(json.load(open(f"runs/example/{name}/summary.json"))["metrics"]))
    # the same benchmark on two endpoints (here the same server twice), one table + plots
    assert bench(["compare", "--endpoints", f"a={url}", f"b={url}", "--concurrency-sweep", "1", "4",
                  "--output", "runs/example/compare", "--", "throughput", "--num-prompts", "8",
                  "--context-tokens", "2000", "--max-tokens", "32", *extra]) == 0


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base-url", help="an already running OpenAI-compatible server")
    ap.add_argument("--model")
    ap.add_argument("--tokenizer")
    a = ap.parse_args()
    extra = [f for k, v in (("--model", a.model), ("--tokenizer", a.tokenizer)) if v for f in (k, v)]
    if a.base_url:
        run_all(a.base_url, extra)
    else:
        from vllm_kvoffload.tiny_model import default_model_path

        model, port = str(default_model_path()), server.free_port()
        cmd = server.server_cmd(model, port, None, ["--dtype", "float32", "--max-model-len", "4096",
                                                    "--kv-cache-memory-bytes", str(256 << 20), "--enforce-eager"])
        print("starting", " ".join(cmd))
        with server.launch(cmd, port, "runs/example-server.log") as url:
            run_all(url, extra)
