"""vllm-kvoffload-bench: benchmarks against any OpenAI-compatible server.

    python -m vllm_kvoffload.bench text2json --synthetic 20 --context-tokens 16000 --base-url URL
    python -m vllm_kvoffload.bench needle | html2tsv | throughput ...
    python -m vllm_kvoffload.bench compare --endpoints a=URL b=URL --output DIR -- needle --synthetic 10
"""

from __future__ import annotations

import argparse
import asyncio
import sys

from vllm_kvoffload.bench import html2tsv, needle, text2json, throughput, tokens
from vllm_kvoffload.bench.client import Client, ServerUnreachable
from vllm_kvoffload.bench.runner import Bench, run

MODULES = {"text2json": text2json, "needle": needle, "html2tsv": html2tsv, "throughput": throughput}
MAX_TOKENS = {"text2json": 1024, "needle": 128, "html2tsv": 1024, "throughput": 256}
METRIC = {"text2json": "score", "needle": "recall", "html2tsv": "f1", "throughput": "output_tok_s"}


def _common(p: argparse.ArgumentParser, name: str) -> None:
    p.add_argument("--base-url", default="http://127.0.0.1:8000/v1", help="OpenAI API base URL")
    p.add_argument("--model", help="served model name (default: the first one the server lists)")
    p.add_argument("--tokenizer", help="HF tokenizer for token counts (default: --model if a local folder)")
    p.add_argument("--concurrency", type=int, default=8, help="requests in flight")
    p.add_argument("--max-tokens", type=int, default=MAX_TOKENS[name], help="new tokens per request")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    p.add_argument("--api", choices=("chat", "completions"), default="chat")
    p.add_argument("--output", default=f"runs/{name}", help="folder for records.jsonl and summary.json")
    p.add_argument("--overwrite", action="store_true", help="discard a previous run in --output")
    p.add_argument("--retries", type=int, default=3, help="attempts per request on connection errors")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds per request")
    p.add_argument("--no-progress", action="store_true")


def _synthetic(p: argparse.ArgumentParser, data: bool, n: str = "--synthetic", default_n: int = 20,
               ctx: int = 8000) -> None:
    if data:
        p.add_argument("--data", help="jsonl file with 'problem' and 'answer' per line")
        p.add_argument("--limit", type=int, help="use only the first N samples of --data")
    p.add_argument(n, type=int, default=None if data else default_n, dest="synthetic",
                   help=f"generate N samples (default {default_n})")
    p.add_argument("--context-tokens", type=int, default=ctx, help="prompt length in tokens")
    p.add_argument("--seed", type=int, default=0)


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="vllm-kvoffload-bench", description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("text2json", help="extract entities as JSON; soft-IoU score")
    _synthetic(p, data=True)
    _common(p, "text2json")
    p = sub.add_parser("needle", help="multi-needle retrieval; recall per needle")
    _synthetic(p, data=False)
    p.add_argument("--needles", type=int, default=8, help="needles per sample")
    _common(p, "needle")
    p = sub.add_parser("html2tsv", help="HTML page to TSV rows; row-level F1")
    _synthetic(p, data=True)
    _common(p, "html2tsv")
    p = sub.add_parser("throughput", help="concurrent long-prompt requests; tok/s, TTFT, TPOT")
    _synthetic(p, data=False, n="--num-prompts", default_n=32)
    p.add_argument("--backend", choices=("openai", "vllm-bench"), default="openai",
                   help="our OpenAI client, or vLLM's 'vllm bench serve' (random dataset)")
    p.add_argument("--no-ignore-eos", action="store_true", help="let requests stop at EOS")
    _common(p, "throughput")
    from vllm_kvoffload.bench import compare

    compare.add_parser(sub)
    return ap


def _resolve_model(args) -> str:
    if args.model:
        return args.model
    client = Client(args.base_url, retries=args.retries, timeout=args.timeout)

    async def go():
        try:
            return await client.resolve_model()
        finally:
            await client.close()

    return asyncio.run(go())


def build(args, model: str) -> Bench:
    mod = MODULES[args.cmd]
    data = getattr(args, "data", None)
    if data and args.synthetic:
        raise ValueError("give either --data or --synthetic, not both")
    config = {"benchmark": args.cmd, "model": model, "max_tokens": args.max_tokens,
              "temperature": args.temperature, "api": args.api}
    if data:
        samples = (text2json.load if args.cmd == "text2json" else _load_tsv)(data, args.limit)
        config |= {"data": data, "limit": args.limit}
    else:
        n = args.synthetic if args.synthetic is not None else 20
        if n < 1:
            raise ValueError(f"--synthetic {n} must be >= 1")
        tok = tokens.resolve(args.tokenizer, model)
        count = tokens.counter(tok)
        extra = {"needles": args.needles} if args.cmd == "needle" else {}
        samples = mod.generate(n, args.context_tokens, args.seed, count, **extra)
        config |= {"synthetic": n, "context_tokens": args.context_tokens, "seed": args.seed,
                   "tokenizer": tok, **extra}
    if args.cmd == "throughput":
        config["ignore_eos"] = not args.no_ignore_eos
    return Bench(args.cmd, samples, mod.score_one, mod.summarize, config)


def _load_tsv(path, limit):
    from vllm_kvoffload.bench import data

    check = lambda a: None if isinstance(a, str) and "\n" in a else "'answer' must be TSV text: a header line, then rows"  # noqa: E731
    return data.load(path, limit, check)


def run_one(args) -> dict:
    """Run one benchmark subcommand; returns its summary."""
    model = _resolve_model(args)
    if args.cmd == "throughput" and args.backend == "vllm-bench":
        from pathlib import Path

        cmd = throughput.vllm_bench_cmd(args.base_url, model, tokens.resolve(args.tokenizer, model),
                                        args.context_tokens, args.max_tokens, args.synthetic,
                                        args.concurrency, Path(args.output), args.seed)
        return throughput.run_vllm_bench(cmd, Path(args.output))
    bench = build(args, model)
    extra_body = {"ignore_eos": True} if args.cmd == "throughput" and not args.no_ignore_eos else None
    client = Client(args.base_url, model, api=args.api, retries=args.retries, timeout=args.timeout,
                    extra_body=extra_body)
    return run(bench, client, args.output, concurrency=args.concurrency, max_tokens=args.max_tokens,
               temperature=args.temperature, overwrite=args.overwrite, progress=not args.no_progress)


def report(summary: dict) -> str:
    t = summary.get("timing", {})
    name = summary["benchmark"]
    head = f"{name}: {summary['n_done']}/{summary['n_samples']} samples"
    if not summary["complete"]:
        head += " (incomplete: rerun the same command to resume)"
    parts = [f"{k}={v:.2f}" for k, v in summary.get("metrics", {}).items() if isinstance(v, float)]
    if t:
        parts += [f"output_tok_s={t['output_tok_s']:.1f}",
                  f"ttft_p50_ms={t['ttft_ms'].get('p50', float('nan')):.1f}",
                  f"tpot_p50_ms={t['tpot_ms'].get('p50', float('nan')):.2f}"]
    return head + "\n  " + " ".join(parts)


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        if args.cmd == "compare":
            from vllm_kvoffload.bench import compare

            compare.main(args)
            return 0
        summary = run_one(args)
        print(report(summary))
        print(f"wrote {args.output}/summary.json")
        return 0
    except KeyboardInterrupt:
        print("\ninterrupted: finished samples are kept; rerun the same command to resume",
              file=sys.stderr)
        return 130
    except (ServerUnreachable, ValueError, RuntimeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
