"""GPU benchmark and correctness check of --kv-offload against stock vLLM, in one run.

    python examples/gpu_offload_bench.py correctness     # tiny bf16 models: stock vs offload
    python examples/gpu_offload_bench.py throughput      # dummy Llama-3.1-8B, 32K prompts

Each engine runs in its own subprocess, so every configuration starts with the
whole GPU. Results go to $OUT (or ./gpu-results): correctness.json, throughput.json.
Needs vLLM 0.32 (see ../shared/gpu/README.md for the bundle on a machine without it).
"""

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

OUT = Path(os.environ.get("OUT", "gpu-results"))
LLAMA_31_8B = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 4096,
    "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32,
    "num_key_value_heads": 8, "head_dim": 128, "vocab_size": 128256, "max_position_embeddings": 131072,
    "rms_norm_eps": 1e-5, "rope_theta": 500000.0, "hidden_act": "silu", "tie_word_embeddings": False,
    "rope_scaling": {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                     "original_max_position_embeddings": 8192, "rope_type": "llama3"},
    "torch_dtype": "bfloat16", "bos_token_id": 128000, "eos_token_id": 128001,
}


def run_child(args: list[str], timeout: int) -> dict:
    """Run one configuration in a fresh process; it prints one JSON line last."""
    t = time.time()
    proc = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True, timeout=timeout)
    lines = [l for l in proc.stdout.splitlines() if l.startswith("{")]
    if proc.returncode or not lines:
        tail = (proc.stdout + proc.stderr)[-4000:]
        return {"args": args, "error": f"exit {proc.returncode}", "log_tail": tail}
    result = json.loads(lines[-1])
    result["wall_s"] = round(time.time() - t, 1)
    return result


# ---- correctness: tiny bf16 model, stock vs offload at full budget ----------------------
def child_greedy(model: str, offload: str | None, n_tokens: int, prompts_file: str = "") -> None:
    from vllm import LLM, SamplingParams

    kw = {}
    if offload:
        kw["additional_config"] = {"kv_offload": json.loads(offload)}
    llm = LLM(model=model, dtype="bfloat16", max_model_len=10240, gpu_memory_utilization=0.3,
              enforce_eager=True, seed=0, **kw)
    if prompts_file:  # the trained model: its own task, stopping at its EOS
        prompts = json.loads(Path(prompts_file).read_text())
        params = SamplingParams(max_tokens=n_tokens, temperature=0, logprobs=1)
    else:  # random weights: no EOS to trust
        text = "".join(f"Record {i}: the code of item {i} is {i * 7919 % 10007}; " for i in range(200))
        prompts = [text[:n] for n in (1001, 2477, 3999, 5555)]
        params = SamplingParams(max_tokens=n_tokens, temperature=0, ignore_eos=True, logprobs=1)
    outs = llm.generate(prompts, params)
    rows = []
    for o in outs:
        c = o.outputs[0]
        rows.append({"tokens": list(c.token_ids),
                     "logprobs": [lp[t].logprob for lp, t in zip(c.logprobs, c.token_ids)]})
    print(json.dumps({"rows": rows}))


def compare_rows(ref: dict, other: dict) -> dict:
    """Greedy agreement with the reference: identical prefix per prompt, and the largest
    chosen-token logprob gap on that prefix."""
    agree, diffs = [], []
    for s, f in zip(ref["rows"], other["rows"]):
        n = next((i for i, (a, b) in enumerate(zip(s["tokens"], f["tokens"])) if a != b), len(s["tokens"]))
        agree.append(n)
        diffs += [abs(a - b) for a, b in zip(s["logprobs"][:n], f["logprobs"][:n])]
    return {"identical_prefix": agree, "max_logprob_diff_on_prefix": max(diffs) if diffs else None}


VARIANTS = {  # name -> kv_offload settings ("" = stock)
    "stock_again": "",
    "kernel_only": {"scorer": "exact-topk", "budget": 1.0, "window_tokens": 7000, "sink_tokens": 4},
    "full_budget": {"scorer": "exact-topk", "budget": 1.0, "window_tokens": 64, "sink_tokens": 4},
    "budget_3pct": {"scorer": "exact-topk", "budget": 0.03, "window_tokens": 64, "sink_tokens": 4},
}


def trained_prompts(model: str) -> str:
    """Chat-formatted held-out Text2JSON prompts (8K tokens, 6-10 entities: long answers)."""
    from vllm_kvoffload.bench import text2json, tokens
    from vllm_kvoffload.training.data import encode_prompt

    count = tokens.counter(model)
    samples = text2json.generate(4, 8192, 0, count, min_entities=6, max_entities=10)
    path = OUT / "trained_prompts.json"
    # token ids through the training chat format (a test checks it equals the tokenizer's template)
    path.write_text(json.dumps([{"prompt_token_ids": encode_prompt(s["prompt"])} for s in samples]))
    return str(path)


def correctness(args) -> dict:
    from vllm_kvoffload.tiny_model import build_tiny_model

    report = {}
    models = {arch: (str(build_tiny_model(OUT / f"tiny-{arch}-d64", arch, max_len=8192, hidden=256, heads=8,
                                          kv_heads=2, head_dim=64, seed=1)), "") for arch in args.archs}
    if args.model:
        models["trained"] = (args.model, trained_prompts(args.model))
    for arch, (model, prompts) in models.items():
        stock = run_child(["_greedy", model, "", str(args.tokens), prompts], 600)
        entry = {"tokens_per_prompt": args.tokens, "stock_error": stock.get("error")}
        for name in args.variants:
            cfg = VARIANTS[name]
            r = run_child(["_greedy", model, json.dumps(cfg) if cfg else "", str(args.tokens), prompts], 600)
            if "rows" in r and "rows" in stock:
                entry[name] = {**compare_rows(stock, r), "tokens": [len(x["tokens"]) for x in r["rows"]]}
            else:
                entry[name] = {"error": r.get("error"), "log_tail": r.get("log_tail", "")[-1500:]}
        report[arch] = entry
    return report


# ---- throughput: dummy Llama-3.1-8B at 32K ---------------------------------------------------
def child_throughput(model: str, n_requests: int, context: int, out_tokens: int, offload: str | None,
                     gpu_util: float) -> None:
    import random

    import torch
    from vllm import LLM, SamplingParams

    kw = {}
    if offload:
        kw["additional_config"] = {"kv_offload": json.loads(offload)}
    t0 = time.time()
    llm = LLM(model=model, load_format="dummy", skip_tokenizer_init=True, dtype="bfloat16",
              max_model_len=context + out_tokens + 16, gpu_memory_utilization=gpu_util,
              enforce_eager=True, seed=0, max_num_seqs=max(n_requests, 1), **kw)
    startup = time.time() - t0
    engine = llm.llm_engine
    rng = random.Random(0)
    params = SamplingParams(max_tokens=out_tokens, temperature=0, ignore_eos=True, detokenize=False)
    start = time.time()
    for i in range(n_requests):
        engine.add_request(str(i), {"prompt_token_ids": [rng.randrange(1000, 120000) for _ in range(context)]}, params)
    first_token, produced, t_all_started, tokens_at_start, finished = {}, {}, None, 0, 0
    peak_running = 0
    while engine.has_unfinished_requests():
        for out in engine.step():
            n = len(out.outputs[0].token_ids)
            produced[out.request_id] = n
            if n and out.request_id not in first_token:
                first_token[out.request_id] = time.time() - start
            finished += out.finished
        if t_all_started is None and len(first_token) == n_requests:
            t_all_started, tokens_at_start = time.time(), sum(produced.values())
    end = time.time()
    decode_tokens = sum(produced.values()) - tokens_at_start
    result = {
        "n_requests": n_requests, "context": context, "out_tokens": out_tokens, "startup_s": round(startup, 1),
        "decode_tok_s": decode_tokens / max(end - t_all_started, 1e-9),
        "decode_tokens": decode_tokens, "decode_s": end - t_all_started,
        "ttft_mean_s": sum(first_token.values()) / len(first_token), "ttft_max_s": max(first_token.values()),
        "finished": finished, "gpu_mem_gb": torch.cuda.max_memory_allocated() / 2**30,
    }
    prof = os.environ.get("VLLM_KVOFFLOAD_PROFILE")
    if prof and Path(prof).exists():
        result["profile"] = json.loads(Path(prof).read_text())
    print(json.dumps(result))


def throughput(args) -> dict:
    import torch

    model = OUT / "llama-3.1-8b-dummy"
    model.mkdir(parents=True, exist_ok=True)
    (model / "config.json").write_text(json.dumps(LLAMA_31_8B))
    device = torch.cuda.get_device_name()
    results = []
    stock = run_child(["_throughput", str(model), str(args.stock_requests), str(args.context),
                       str(args.out_tokens), "", "0.9"], 600)
    stock.update(config="stock", budget=None, device=device)
    results.append(stock)
    for budget in args.budgets:
        cfg = {"scorer": "exact-topk", "budget": budget, "window_tokens": 256, "sink_tokens": 16,
               "host_gb": args.host_gb}
        os.environ["VLLM_KVOFFLOAD_PROFILE"] = str(OUT / f"profile-{budget}.json")
        r = run_child(["_throughput", str(model), str(args.offload_requests), str(args.context),
                       str(args.out_tokens), json.dumps(cfg), str(args.offload_gpu_util)], 600)
        r.update(config="exact-topk", budget=budget, device=device,
                 stock_decode_tok_s=stock.get("decode_tok_s"), stock_n_requests=args.stock_requests)
        if "decode_tok_s" in r and stock.get("decode_tok_s"):
            r["speedup_vs_stock"] = r["decode_tok_s"] / stock["decode_tok_s"]
        results.append(r)
    return {"device": device, "results": results}


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "_greedy":
        return child_greedy(sys.argv[2], sys.argv[3] or None, int(sys.argv[4]), sys.argv[5])
    if len(sys.argv) > 1 and sys.argv[1] == "_throughput":
        a = sys.argv[2:]
        return child_throughput(a[0], int(a[1]), int(a[2]), int(a[3]), a[4] or None, float(a[5]))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("correctness")
    c.add_argument("--tokens", type=int, default=256)
    c.add_argument("--archs", nargs="*", default=["llama", "qwen3"], help="random-weight tiny models")
    c.add_argument("--model", help="also a trained model folder (prompts: its held-out Text2JSON)")
    c.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    t = sub.add_parser("throughput")
    t.add_argument("--context", type=int, default=32768)
    t.add_argument("--out-tokens", type=int, default=64)
    t.add_argument("--stock-requests", type=int, default=13)
    t.add_argument("--offload-requests", type=int, default=16)
    t.add_argument("--offload-gpu-util", type=float, default=0.45)
    t.add_argument("--host-gb", type=float, default=64)
    t.add_argument("--budgets", type=float, nargs="+", default=[0.03])
    args = parser.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    report = correctness(args) if args.cmd == "correctness" else throughput(args)
    (OUT / f"{args.cmd}.json").write_text(json.dumps(report, indent=1))
    print(json.dumps(report, indent=1)[-6000:])


if __name__ == "__main__":
    main()
