"""GPU benchmark and correctness check of --kv-offload against stock vLLM, in one run.

    python examples/gpu_offload_bench.py correctness     # tiny bf16 models: stock vs offload
    python examples/gpu_offload_bench.py throughput      # dummy Llama-3.1-8B, 32K prompts
    python examples/gpu_offload_bench.py profile         # where a decode step's time goes

Each engine runs in its own subprocess, so every configuration starts with the
whole GPU. Results go to $OUT (or ./gpu-results): correctness.json, throughput.json.
Needs vLLM 0.32 (see ../shared/gpu/README.md for the bundle on a machine without it).
"""

import argparse
import itertools
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
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


def run_child(args: list[str], timeout: int, script: str = __file__) -> dict:
    """Run one configuration in a fresh process (``script`` with ``args``); it prints one JSON line last."""
    t = time.time()
    proc = subprocess.run([sys.executable, script, *args], capture_output=True, text=True, timeout=timeout)
    lines = [l for l in proc.stdout.splitlines() if l.startswith("{")]
    if proc.returncode or not lines:
        tail = (proc.stdout + proc.stderr)[-4000:]
        errors = [l for l in tail.splitlines() if "Error:" in l]  # e.g. vLLM's start-up memory check
        reason = f": {errors[-1].split('Error:', 1)[-1].strip()[:300]}" if errors else ""
        return {"args": args, "error": f"exit {proc.returncode}{reason}", "log_tail": tail}
    result = json.loads(lines[-1])
    result["wall_s"] = round(time.time() - t, 1)
    return result


# ---- correctness: tiny bf16 model, stock vs offload at full budget ----------------------
def child_greedy(model: str, offload: str | None, n_tokens: int, prompts_file: str = "", gpu_util: float = 0.3) -> None:
    from vllm import LLM, SamplingParams

    kw = {}
    if offload:
        kw["additional_config"] = {"kv_offload": json.loads(offload)}
    # A fixed KV size (1 GiB: the 4 prompts of 10,240 tokens need about 130 MB), as accuracy.py gives its
    # engines: parallel engines then do not size their caches from each other's memory at start-up.
    llm = LLM(model=model, dtype="bfloat16", max_model_len=10240, gpu_memory_utilization=gpu_util,
              kv_cache_memory_bytes=1 << 30, enforce_eager=True, seed=0, **kw)
    if prompts_file:  # the trained model: its own task, stopping at its EOS
        prompts = json.loads(Path(prompts_file).read_text())
        params = SamplingParams(max_tokens=n_tokens, temperature=0, logprobs=1)
    else:  # random weights: no EOS to trust
        text = "".join(f"Record {i}: the code of item {i} is {i * 7919 % 10007}; " for i in range(200))
        prompts = [text[:n] for n in (1001, 2477, 3999, 5555)]
        params = SamplingParams(max_tokens=n_tokens, temperature=0, ignore_eos=True, logprobs=1)
    outs = llm.generate(prompts, params)
    from vllm_kvoffload.runtime import current_runtime  # set when the engine runs in this process

    rt = current_runtime()
    fetch = rt.fetch_stats() if rt is not None and rt.pool is not None else None
    rows = []
    for o in outs:
        c = o.outputs[0]
        rows.append({"tokens": list(c.token_ids),
                     "logprobs": [lp[t].logprob for lp, t in zip(c.logprobs, c.token_ids)]})
    print(json.dumps({"rows": rows, "fetch": fetch}))


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
    # a device cache limit nothing fits under: every offloaded step falls back to the per-request path
    "full_budget_no_cache_room": {"scorer": "exact-topk", "budget": 1.0, "window_tokens": 64, "sink_tokens": 4,
                                  "device_cache_gb": 1e-6},
    # room (18 MB) for the one-layer scratch of 4 requests of the 2-layer tiny models (about 12 MB), not for
    # their cache (about 24 MB): the scratch while 3-4 requests decode, the cache while 1-2 do
    "full_budget_scratch": {"scorer": "exact-topk", "budget": 1.0, "window_tokens": 64, "sink_tokens": 4,
                            "device_cache_gb": 0.017},
    # the batched selection of blocks and of top-p (select_cold_tokens_batched); blocks at full budget keep
    # every cold token, so they must give stock's tokens too
    "full_budget_blocks": {"scorer": "exact-topk", "budget": 1.0, "window_tokens": 64, "sink_tokens": 4,
                           "granularity": "block"},
    "blocks_3pct": {"scorer": "exact-topk", "budget": 0.03, "window_tokens": 64, "sink_tokens": 4,
                    "granularity": "block"},
    "topp_3pct": {"scorer": "exact-topk", "budget": 0.03, "window_tokens": 64, "sink_tokens": 4, "topp": 0.9},
    # the LRU device cache (4 selections wide): every variant "<name>_lru" is also compared with "<name>"
    # token for token, since both attend to the same tokens, only cached in other slots
    "full_budget_lru": {"scorer": "exact-topk", "budget": 1.0, "window_tokens": 64, "sink_tokens": 4,
                        "device_cache_factor": 4},
    "budget_3pct_lru": {"scorer": "exact-topk", "budget": 0.03, "window_tokens": 64, "sink_tokens": 4,
                        "device_cache_factor": 4},
    # rounded pools: not stock's tokens by construction (cold K/V rounded), how close is what they measure
    "full_budget_fp8": {"scorer": "exact-topk", "budget": 1.0, "window_tokens": 64, "sink_tokens": 4,
                        "host_kv_dtype": "fp8"},
    "full_budget_int4": {"scorer": "exact-topk", "budget": 1.0, "window_tokens": 64, "sink_tokens": 4,
                         "host_kv_dtype": "int4"},
    "budget_3pct_int4": {"scorer": "exact-topk", "budget": 0.03, "window_tokens": 64, "sink_tokens": 4,
                         "host_kv_dtype": "int4"},
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


# vLLM's start-up errors when engines that start together count each other's memory in its profiling:
# no memory left for the KV cache (call 28a), or free memory that rose while it profiled (call 32c1).
# child_greedy's fixed KV size skips that profiling since session 33; it ran on the GPU in session 34 (call 34b)
# one engine at a time, not yet with engines side by side, so the retry stays.
NEIGHBOUR_ERRORS = ("No available memory", "Error in memory profiling")


def failed_on_a_neighbour(error: str | None) -> bool:
    """Whether a child engine failed only because another engine started beside it."""
    return any(e in (error or "") for e in NEIGHBOUR_ERRORS)


def correctness(args) -> dict:
    from vllm_kvoffload.tiny_model import build_tiny_model

    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"  # children read the runtime's fetch counters

    report = {}
    models = {arch: (str(build_tiny_model(OUT / f"tiny-{arch}-d64", arch, max_len=10240, hidden=256, heads=8,
                                          kv_heads=2, head_dim=64, seed=1)), "") for arch in args.archs}
    if args.model:
        models["trained"] = (args.model, trained_prompts(args.model))
    util = str(round(0.9 / args.parallel, 3))
    for arch, (model, prompts) in models.items():
        stock = run_child(["_greedy", model, "", str(args.tokens), prompts, util], 600)
        entry = {"tokens_per_prompt": args.tokens, "stock_error": stock.get("error")}
        jobs = {}  # entry key -> kv_offload settings ("" = stock)
        for name in args.variants:
            cfg = VARIANTS[name]
            for scorer in (args.scorers if cfg else [None]):
                key = name if scorer in (None, "exact-topk") else f"{scorer}/{name}"
                jobs[key] = json.dumps({**cfg, "scorer": scorer}) if cfg else ""
        def greedy(cfg: str) -> dict:
            return run_child(["_greedy", model, cfg, str(args.tokens), prompts, util], 600)

        with ThreadPoolExecutor(args.parallel) as pool:  # each child is its own process and engine
            runs = dict(zip(jobs, pool.map(greedy, jobs.values())))
        for key, r in runs.items():
            if failed_on_a_neighbour(r.get("error")):  # run again, alone
                runs[key] = greedy(jobs[key]) | {"retried_alone": True}
        for key, r in runs.items():
            if "rows" in r and "rows" in stock:
                entry[key] = {**compare_rows(stock, r), "tokens": [len(x["tokens"]) for x in r["rows"]],
                              "fetch": r.get("fetch"), "wall_s": r.get("wall_s")}
            else:
                entry[key] = {"error": r.get("error"), "log_tail": r.get("log_tail", "")[-1500:]}
            if r.get("retried_alone"):
                entry[key]["retried_alone"] = True
            twin = runs.get(key.removesuffix("_lru"))
            if key.endswith("_lru") and twin and "rows" in r and "rows" in twin:
                entry[key]["against_" + key.removesuffix("_lru")] = compare_rows(twin, r)
        report[arch] = entry
    return report


def correctness_table(report: dict) -> str:
    """One line per model and variant: identical greedy tokens per prompt, the largest logprob difference
    on them, the device cache's hits, or the child's error (what the GPU scripts used to print)."""
    lines = ["| model | variant | identical tokens per prompt | largest logprob difference | cache hits | error |",
             "| --- | --- | --- | --- | --- | --- |"]
    for model, entry in report.items():
        for variant, r in entry.items():
            if isinstance(r, dict):
                hits = (r.get("fetch") or {}).get("cache_hit_rate")
                lines.append(f"| {model} | {variant} | {r.get('identical_prefix', '')} | "
                             f"{r.get('max_logprob_diff_on_prefix', '')} | {'' if hits is None else f'{hits:.1%}'} | "
                             f"{(r.get('error') or '')[:200]} |")
    return "\n".join(lines)


# ---- throughput and profile: dummy Llama-3.1-8B at 32K, steady decode steps ----------------
class SteadyEngine:
    """An in-process engine (the parent sets VLLM_ENABLE_V1_MULTIPROCESSING=0, so the offload
    runtime lives in this process) with ``n`` requests of ``context`` random tokens, ramped
    until every request decodes: from then on each step decodes the whole batch."""

    def __init__(self, model: str, n: int, context: int, offload: str | None, gpu_util: float,
                 out_tokens: int, graphs: bool):
        import random

        import torch
        from vllm import LLM, SamplingParams

        kw = {"additional_config": {"kv_offload": json.loads(offload)}} if offload else {}
        t0 = time.time()
        self.llm = LLM(model=model, load_format="dummy", skip_tokenizer_init=True, dtype="bfloat16",
                       max_model_len=context + out_tokens + 16, gpu_memory_utilization=gpu_util,
                       enforce_eager=not graphs, seed=0, max_num_seqs=n, **kw)
        self.startup_s = time.time() - t0
        self.n = n
        engine = self.engine = self.llm.llm_engine
        vocab = json.loads((Path(model) / "config.json").read_text())["vocab_size"]
        lo, hi = min(1000, vocab // 4), min(120000, vocab - 1)
        rng = random.Random(0)
        # out_tokens must outlast the ramp: the first requests decode while the last prefill
        params = SamplingParams(max_tokens=out_tokens, temperature=0, ignore_eos=True, detokenize=False)
        start = time.time()
        for i in range(n):
            engine.add_request(str(i), {"prompt_token_ids": [rng.randrange(lo, hi) for _ in range(context)]}, params)
        first = {}
        self.tokens: dict[str, int] = {}  # tokens generated so far per request
        while len(first) < n:
            for o in self.step():
                if o.outputs[0].token_ids and o.request_id not in first:
                    first[o.request_id] = time.time() - start
        self.ttft = first
        for _ in range(8):  # the last ones' first decode (their blocks go cold) is not a steady step
            self.step()
        self.sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)  # CPU: dry run

    def step(self):
        outs = self.engine.step()
        self.tokens.update({o.request_id: len(o.outputs[0].token_ids) for o in outs})
        return outs

    def timed(self, steps: int) -> dict:
        """Seconds and tokens per engine step over ``steps`` steps (tokens counted from the
        outputs: a step need not decode every request), and the offload runtime's fetch
        counters over them. Every request must still run."""
        from vllm_kvoffload.runtime import current_runtime

        rt = current_runtime()
        rt = rt if rt is not None and rt.pool is not None else None
        self.sync()
        tokens, fetched = sum(self.tokens.values()), rt.fetch_stats() if rt else None
        t = time.perf_counter()
        for _ in range(steps):
            self.step()
        self.sync()
        step_s = (time.perf_counter() - t) / steps
        assert self.engine.get_num_unfinished_requests() == self.n, "a request finished: raise out_tokens"
        running = len(self.engine.engine_core.engine_core.scheduler.running)
        assert running == self.n, f"only {running} of {self.n} requests running (preempted): fewer requests"
        out = {"step_s": step_s, "tokens_per_step": (sum(self.tokens.values()) - tokens) / steps, "fetch": None}
        if rt:
            now = rt.fetch_stats()
            gathered = now["tokens_gathered"] - fetched["tokens_gathered"]
            hits = now["cache_hits"] - fetched["cache_hits"]
            row_bytes = 2 * rt.pool.kv.shape[5] * rt.pool.kv.element_size()  # K and V of one token, head, layer
            pcie_gb = (gathered - hits) * row_bytes / steps / 1e9
            out["fetch"] = {"rows_per_step": gathered / steps, "cache_hit_rate": hits / gathered if gathered else None,
                            "pcie_gb_per_step": pcie_gb, "layers": len(rt.layer_index),
                            "pcie_gb_s_at_this_step_time": pcie_gb / step_s, "bytes_per_gathered_row": row_bytes}
        return out

    def summary(self, timing: dict) -> dict:
        import torch

        from vllm_kvoffload.runtime import current_runtime

        t = sorted(self.ttft.values())
        out = {"n_requests": self.n, "startup_s": round(self.startup_s, 1), "step_ms": 1e3 * timing["step_s"],
               "tokens_per_step": timing["tokens_per_step"], "decode_tok_s": timing["tokens_per_step"] / timing["step_s"],
               "ttft_mean_s": sum(t) / len(t), "ttft_max_s": t[-1],
               "gpu_mem_gb": torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None}
        rt = current_runtime()
        if timing["fetch"] is not None:
            out["cold_tokens_per_request"] = sorted(len(v) * rt.block_size for v in rt.cold.values())
            out["fetch"] = timing["fetch"]
        return out


def set_decode_graphs(eng: SteadyEngine, on: bool) -> None:
    """Turn the offloaded decode's CUDA graphs on or off in this process's runtime (the engine
    core must run in this process), then take the steps that are not steady: the shape's first,
    and its capture step."""
    from vllm_kvoffload.runtime import current_runtime

    rt = current_runtime()
    rt.config = rt.config.model_copy(update={"decode_graphs": on})
    for _ in range(3):
        eng.step()


def timed_under_profiler(eng: SteadyEngine, steps: int):
    """``steps`` steps under torch.profiler: (seconds per step, the profiler's key averages,
    kernel milliseconds per step)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        step_s = eng.timed(steps)["step_s"]
    ka = prof.key_averages()
    # kernels and copies are the rows with no host time of their own
    kernel_us = sum(e.self_device_time_total for e in ka if e.self_cpu_time_total == 0)
    return step_s, ka, kernel_us / 1e3 / steps


def topk_probe(step_ms: float, reps: int = 30) -> dict:
    """The top-k at this engine's last decode shape (requests, KV heads, cold lengths, k and
    budgets of its plan), on two kinds of rows timed alternately in this process: rows of one
    value, which is what the dummy-weight model hands it (examples/dummy_weight_logits.py), and
    softmax rows with a real model's long tail (``gpu_topk.masses_for``). Per layer, us, the
    masses left in L2 as the scorer leaves them. The step with softmax rows is an estimate: this
    step plus the difference times the layers."""
    import torch
    from gpu_kernels import timeit_pair
    from gpu_topk import masses_for

    from vllm_kvoffload.ops.triton_kernels import topk_select
    from vllm_kvoffload.runtime import current_runtime

    rt = current_runtime()
    plan, kv = rt.batched, rt.pool.kv
    lens, k, budgets = plan["cold_lens"], plan["k"], plan["budgets"]
    Hkv, n_max = kv.shape[3], plan["cold_slots"].shape[1] * kv.shape[4]
    gen = torch.Generator(device=lens.device).manual_seed(0)
    one, soft = (masses_for(lens, Hkv, n_max, gen, kind) for kind in ("equal", "softmax"))
    t_one, t_soft = timeit_pair(lambda: topk_select(one, lens, k, budgets=budgets),
                                lambda: topk_select(soft, lens, k, budgets=budgets), reps, torch.empty(1, device=lens.device))
    layers = len(rt.layer_index)
    return {"topk_us_rows_of_one_value": t_one * 1e6, "topk_us_softmax_rows": t_soft * 1e6, "layers": layers,
            "step_ms_with_softmax_rows_est": step_ms + layers * (t_soft - t_one) * 1e3}


def synthetic_misses_from_env(offload: str | None) -> float | None:
    """--synthetic-miss-rates: the parent puts one rate in the environment; an offload child
    wraps its scorer before the engine starts (vllm_kvoffload/bench/synthetic_misses.py)."""
    from vllm_kvoffload.bench import synthetic_misses

    rate = os.environ.get(synthetic_misses.ENV)
    if not offload or rate is None:
        return None
    synthetic_misses.install(float(rate), float(os.environ.get(synthetic_misses.JITTER_ENV, 0)))
    return float(rate)


def child_throughput(model: str, n: int, context: int, offload: str | None, gpu_util: float, steps: int,
                     graphs: bool, decode_graphs_ab: bool = False) -> None:
    """Decode tok/s of the full batch over ``steps`` steady steps; fetch counters over them.
    ``decode_graphs_ab``: then ``steps`` more with the offloaded decode eager and ``steps`` with
    its graphs again (same process and requests: the A/B of the decode graphs, no machine noise)."""
    miss_rate = synthetic_misses_from_env(offload)
    eng = SteadyEngine(model, n, context, offload, gpu_util, out_tokens=512, graphs=graphs)
    out = eng.summary(eng.timed(steps))
    out["synthetic_miss_rate"] = miss_rate
    if decode_graphs_ab:
        for tag, on in (("eager", False), ("graphs_again", True)):
            set_decode_graphs(eng, on)
            out[f"step_ms_decode_{tag}"] = 1e3 * eng.timed(steps)["step_s"]
    if offload and "fetch" in out:
        try:  # a diagnostic: it must not cost the run its figures
            out["topk_probe"] = topk_probe(out["step_ms"])
        except Exception as e:  # noqa: BLE001
            out["topk_probe"] = {"error": repr(e)}
    print(json.dumps(out))


def child_profile(model: str, n: int, context: int, offload: str | None, gpu_util: float, steps: int,
                  tag: str, graphs: bool) -> None:
    """``steps`` plain steps, then ``steps`` under torch.profiler (kernel time per step, top
    kernels and host ops), then ``steps`` under cProfile (Python)."""
    import cProfile
    import io
    import pstats

    miss_rate = synthetic_misses_from_env(offload)
    eng = SteadyEngine(model, n, context, offload, gpu_util, out_tokens=512, graphs=graphs)
    plain = eng.timed(steps)
    profiled, ka, kernel_ms = timed_under_profiler(eng, steps)
    (OUT / f"profile-{tag}-gpu.txt").write_text(ka.table(sort_by="self_device_time_total", row_limit=40))
    (OUT / f"profile-{tag}-cpu.txt").write_text(ka.table(sort_by="self_cpu_time_total", row_limit=40))
    pr = cProfile.Profile()
    pr.enable()
    cprof = eng.timed(steps)["step_s"]
    pr.disable()
    text = io.StringIO()
    pstats.Stats(pr, stream=text).sort_stats("cumulative").print_stats(60)
    pstats.Stats(pr, stream=text).sort_stats("tottime").print_stats(40)
    (OUT / f"profile-{tag}-python.txt").write_text(text.getvalue())
    print(json.dumps({"tag": tag, **eng.summary(plain), "synthetic_miss_rate": miss_rate,
                      "steps": steps, "step_ms_under_torch_profiler": 1e3 * profiled,
                      "kernel_ms_per_step": kernel_ms, "step_ms_under_cprofile": 1e3 * cprof}))


def dummy_llama() -> Path:
    model = Path(os.environ.get("BENCH_MODEL_DIR", "/tmp/llama-3.1-8b-dummy"))  # not under $OUT
    model.mkdir(parents=True, exist_ok=True)
    (model / "config.json").write_text(json.dumps(LLAMA_31_8B))
    return model


def offload_settings(args, scorer: str, budget: float, device_cache: bool = True, factor: int = 1) -> str:
    return json.dumps({"scorer": scorer, "budget": budget, "window_tokens": 256, "sink_tokens": 16,
                       "host_gb": args.host_gb, "device_cache": device_cache, "host_kv_dtype": args.host_kv_dtype,
                       "device_cache_factor": factor})


def profile_steps(args) -> dict:
    import torch

    model = dummy_llama()
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    runs = [] if args.no_stock else [("stock", args.stock_requests, "", "0.9")]
    for scorer in args.scorers or [args.scorer]:
        for factor in args.device_cache_factors:
            tag = f"{scorer}-{args.budgets[0]}" + (f"-x{factor}" if factor > 1 else "")
            runs.append((tag, args.offload_requests, offload_settings(args, scorer, args.budgets[0], factor=factor),
                         str(args.offload_gpu_util)))
    graphs = "1" if args.cuda_graphs else ""
    set_synthetic_miss_rate((args.synthetic_miss_rates or [None])[0], args.synthetic_jitter)  # stock ignores it
    results = [run_child(["_profile", str(model), str(n), str(args.context), c, util, str(args.steps), tag, graphs],
                         600) for tag, n, c, util in runs]
    return {"device": torch.cuda.get_device_name(), "results": results}


def set_synthetic_miss_rate(rate: float | None, jitter: float = 0.0) -> None:
    """The rate and jitter the next offload child reads (vllm_kvoffload/bench/synthetic_misses.py), or none."""
    from vllm_kvoffload.bench import synthetic_misses

    if rate is None:
        os.environ.pop(synthetic_misses.ENV, None)
    else:
        os.environ[synthetic_misses.ENV] = str(rate)
    os.environ[synthetic_misses.JITTER_ENV] = str(jitter)


def throughput(args) -> dict:
    """Stock, then the scorer at each budget (and without the device cache with
    --no-cache-too), each in a fresh process, all against the stock figure of this run."""
    import torch

    model = dummy_llama()
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    device = torch.cuda.get_device_name()
    graphs = "1" if args.cuda_graphs else ""
    stock = run_child(["_throughput", str(model), str(args.stock_requests), str(args.context), "", "0.9",
                       str(args.steps), graphs], 600)
    stock.update(config="stock", budget=None, device=device, context=args.context, cuda_graphs=args.cuda_graphs)
    results = [stock]
    variants = [(b, True, f) for b in args.budgets for f in args.device_cache_factors]
    variants += [(args.budgets[0], False, 1)] if args.no_cache_too else []
    for scorer, (budget, cache, factor), rate in itertools.product(args.scorers or [args.scorer], variants,
                                                                   args.synthetic_miss_rates or [None]):
        set_synthetic_miss_rate(rate, args.synthetic_jitter)
        r = run_child(["_throughput", str(model), str(args.offload_requests), str(args.context),
                       offload_settings(args, scorer, budget, cache, factor), str(args.offload_gpu_util), str(args.steps),
                       graphs, "1" if args.decode_graphs_ab else ""], 600)
        r.update(config=scorer, budget=budget, device_cache=cache, device_cache_factor=factor,
                 synthetic_jitter=args.synthetic_jitter if rate is not None else None, host_kv_dtype=args.host_kv_dtype,
                 host_gb=args.host_gb, device=device, context=args.context,
                 cuda_graphs=args.cuda_graphs, stock_decode_tok_s=stock.get("decode_tok_s"),
                 stock_n_requests=args.stock_requests)
        if "decode_tok_s" in r and stock.get("decode_tok_s"):
            r["speedup_vs_stock"] = r["decode_tok_s"] / stock["decode_tok_s"]
        results.append(r)
        print(json.dumps({k: r.get(k) for k in ("budget", "device_cache", "device_cache_factor", "synthetic_miss_rate",
                                                 "decode_tok_s", "speedup_vs_stock", "error")}),
              flush=True)
    return {"device": device, "command": " ".join(sys.argv), "results": results}


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "_greedy":
        return child_greedy(sys.argv[2], sys.argv[3] or None, int(sys.argv[4]), sys.argv[5], float(sys.argv[6]))
    if len(sys.argv) > 1 and sys.argv[1] == "_throughput":
        a = sys.argv[2:]
        return child_throughput(a[0], int(a[1]), int(a[2]), a[3] or None, float(a[4]), int(a[5]), bool(a[6]),
                                bool(a[7]) if len(a) > 7 else False)
    if len(sys.argv) > 1 and sys.argv[1] == "_profile":
        a = sys.argv[2:]
        return child_profile(a[0], int(a[1]), int(a[2]), a[3] or None, float(a[4]), int(a[5]), a[6], bool(a[7]))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("correctness")
    c.add_argument("--tokens", type=int, default=256)
    c.add_argument("--archs", nargs="*", default=["llama", "qwen3"], help="random-weight tiny models")
    c.add_argument("--model", help="also a trained model folder (prompts: its held-out Text2JSON)")
    c.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    c.add_argument("--scorers", nargs="+", default=["exact-topk"],
                   help="run each offload variant with each of these scorers (stock runs once)")
    c.add_argument("--parallel", type=int, default=1, help="engines at once (each gets 0.9/N of the GPU)")
    t = sub.add_parser("throughput", help="decode tok/s of full batches in steady state, against stock")
    p = sub.add_parser("profile", help="time, torch.profiler and cProfile of steady decode steps")
    for q in (t, p):
        q.add_argument("--context", type=int, default=32768)
        q.add_argument("--stock-requests", type=int, default=13, help="stock's maximum at 32K on an H100")
        q.add_argument("--offload-requests", type=int, default=16, help="what a 64 GiB pinned pool holds at 32K")
        q.add_argument("--offload-gpu-util", type=float, default=0.45,
                       help="vLLM's share; the scorer's summaries live outside it")
        q.add_argument("--host-gb", type=float, default=64)
        q.add_argument("--host-kv-dtype", choices=("auto", "fp8", "int4"), default="auto",
                       help="offloaded K/V in the model's dtype, or fp8 (twice the requests per GiB)")
        q.add_argument("--scorer", default="exact-topk")
        q.add_argument("--synthetic-miss-rates", type=float, nargs="+", metavar="RATE",
                       help="dummy weights never miss the device cache; redraw this share of a random token "
                            "ranking per step so that selections change (about 1 - RATE of hits), one offload "
                            "run per rate (profile: the first); vllm_kvoffload/bench/synthetic_misses.py")
        q.add_argument("--synthetic-jitter", type=float, default=0.0, metavar="J",
                       help="with --synthetic-miss-rates: add J times a fresh uniform draw per step, so that "
                            "tokens near the selection's edge leave it and come back (what a wider device cache "
                            "serves); rate 0.2 with J 0.09 mimics the trained model's replay at 3%%")
        q.add_argument("--device-cache-factors", type=int, nargs="+", default=[1], metavar="F",
                       help="one offload run per device cache factor (device_cache_factor: slots per request, "
                            "layer and KV head in selections; above 1 the LRU cache)")
        q.add_argument("--budgets", type=float, nargs="+", default=[0.03])
        q.add_argument("--steps", type=int, default=8 if q is p else 32, help="timed steady steps")
        q.add_argument("--cuda-graphs", action="store_true", help="let vLLM capture CUDA graphs (both engines)")
    for q in (t, p):
        q.add_argument("--scorers", nargs="+", help="run each of these scorers (default: --scorer)")
    p.add_argument("--no-stock", action="store_true", help="skip the stock engine")
    t.add_argument("--no-cache-too", action="store_true", help="also the first budget without the device cache")
    t.add_argument("--decode-graphs-ab", action="store_true",
                   help="in each offload engine, also time --steps steps with the offloaded decode eager, "
                        "then with its CUDA graphs again (step_ms_decode_eager, step_ms_decode_graphs_again)")
    args = parser.parse_args()
    bad = [r for r in getattr(args, "synthetic_miss_rates", None) or [] if not 0.0 <= r <= 1.0]
    if bad:
        parser.error(f"--synthetic-miss-rates {bad[0]}: accepted 0 to 1 (the share of the ranking redrawn per step)")
    if not 0.0 <= getattr(args, "synthetic_jitter", 0.0) <= 1.0:
        parser.error(f"--synthetic-jitter {args.synthetic_jitter}: accepted 0 to 1")
    bad = [f for f in getattr(args, "device_cache_factors", None) or [] if not 1 <= f <= 16]
    if bad:
        parser.error(f"--device-cache-factors {bad[0]}: accepted whole numbers from 1 to 16")
    OUT.mkdir(parents=True, exist_ok=True)
    report = {"correctness": correctness, "throughput": throughput, "profile": profile_steps}[args.cmd](args)
    (OUT / f"{args.cmd}.json").write_text(json.dumps(report, indent=1))
    print(json.dumps(report, indent=1)[-6000:])
    if args.cmd == "correctness":
        print(correctness_table(report))


if __name__ == "__main__":
    main()
