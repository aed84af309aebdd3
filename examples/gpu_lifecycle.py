"""Requests that come and go on a crowded engine: aborts, late arrivals and preemption, with
vLLM's CUDA graphs, the offloaded decode's own graphs and the device cache on (GPU), stock
vLLM beside it. Every engine must end with its block accounting whole, and every request that
finishes under both stock and full-budget offload must give the same greedy tokens.

    python examples/gpu_lifecycle.py [--model DIR] [--pool-prompts 1.5]   # OUT=dir: lifecycle.json

The model is the project's trained one (real masses, so the device cache also misses); its
prompts are held-out Text2JSON of 8K tokens, and the device pool holds ``--pool-prompts`` of
them (blocks of 32 tokens, none spare for what they generate), so requests wait, and running
ones may be preempted as they grow (vLLM admits a request only once its whole prompt fits, so
with offload, whose decoding requests hold a few blocks each, that is rare: hence the forced
preemption below). The schedule, by engine step: 8
requests at once; at the first step where a request has 8 tokens, the lowest-numbered such
request and the highest-numbered unfinished one are aborted; 5 steps later every running request
is preempted (``reset_prefix_cache(reset_running_requests=True)``, as RL trainers do after a
weight update) and resumes by recomputing; 10 steps after the abort 4 more arrive.
Prefill goes in chunks of 1,024 tokens, so requests are admitted before they fit whole.
Each engine runs in its own process (gpu_offload_bench.run_child). On a machine without CUDA it
runs the same schedule eagerly in float32 (slow; for checking the script).
"""

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from gpu_offload_bench import OUT, run_child, trained_prompts  # noqa: E402
from gpu_offload_bench import VARIANTS as BENCH_VARIANTS  # noqa: E402

DEFAULT_MODEL = str(Path(__file__).resolve().parents[1] / "vllm_kvoffload" / "models" / "kvoffload-tiny")
VARIANTS = {  # name -> kv_offload settings ("" = stock)
    "stock": "",
    "full_budget": BENCH_VARIANTS["full_budget"],  # exact-topk, budget 1.0, window 64, 4 sinks
    "qlandmark-scalar_3pct": {**BENCH_VARIANTS["budget_3pct"], "scorer": "qlandmark-scalar"},
}
N_FIRST, N_LATE, N_TOKENS, PREEMPT_AFTER, LATE_AFTER = 8, 4, 128, 5, 10
BLOCK = 32  # tokens per KV block, on both backends
CHUNK = 1024  # tokens per step: prefills go in chunks beside the decodes


def external(request_id: str) -> str:
    """The id given to add_request ("r3"): the scheduler's own ids carry a suffix ("r3-1f2e...")."""
    return request_id.rsplit("-", 1)[0]


def child_lifecycle(model: str, offload: str, prompts_file: str, pool_prompts: float) -> None:
    import torch
    from vllm import LLM, SamplingParams

    from vllm_kvoffload.runtime import current_runtime

    cuda = torch.cuda.is_available()
    prompts = json.loads(Path(prompts_file).read_text())
    longest = max(len(p["prompt_token_ids"]) for p in prompts)
    blocks = -(-int(pool_prompts * longest) // BLOCK)  # vLLM admits a request once its prompt fits
    kw = {"additional_config": {"kv_offload": json.loads(offload)}} if offload else {}
    if cuda:
        kw["gpu_memory_utilization"] = 0.3
    llm = LLM(model=model, dtype="bfloat16" if cuda else "float32", max_model_len=longest + N_TOKENS + 64,
              block_size=BLOCK, num_gpu_blocks_override=blocks, enable_prefix_caching=False,
              enforce_eager=not cuda, seed=0, max_num_seqs=N_FIRST + N_LATE, max_num_batched_tokens=CHUNK, **kw)
    engine = llm.llm_engine
    scheduler = engine.engine_core.engine_core.scheduler  # in-process (the parent sets it)
    params = SamplingParams(max_tokens=N_TOKENS, temperature=0, ignore_eos=True, detokenize=False)

    def add(i: int) -> None:
        engine.add_request(f"r{i}", prompts[i % len(prompts)], params)

    t0 = time.time()
    for i in range(N_FIRST):
        add(i)
    tokens, finished, aborted, preempted = {}, {}, [], {}
    steps, abort_step, preempted_all_at, graph_steps = 0, None, None, 0
    while engine.has_unfinished_requests():
        outputs = engine.step()
        rt = current_runtime()  # steps whose offloaded decode replayed (or captured) its own graphs
        graph_steps += bool(rt is not None and getattr(rt, "graphs", None) is not None and rt.graphs.graphs)
        for o in outputs:
            tokens[o.request_id] = list(o.outputs[0].token_ids)
            if o.finished:
                finished[o.request_id] = tokens[o.request_id]
        steps += 1
        live = {external(rid): req for rid, req in scheduler.requests.items()}
        for rid, req in live.items():
            if req.num_preemptions:
                preempted[rid] = max(preempted.get(rid, 0), req.num_preemptions)
        decoding = sorted((r for r, t in tokens.items() if len(t) >= 8 and r not in finished),
                          key=lambda r: int(r[1:]))
        if abort_step is None and decoding:
            unfinished = sorted((r for r in live if r not in finished), key=lambda r: int(r[1:]))
            aborted = sorted({decoding[0], unfinished[-1]}, key=lambda r: int(r[1:]))
            engine.abort_request(aborted)
            abort_step = steps
        if abort_step is not None and steps == abort_step + PREEMPT_AFTER:  # vLLM's public way to
            preempted_all_at = steps  # preempt every running request (they resume by recomputing)
            engine.reset_prefix_cache(reset_running_requests=True)
        if abort_step is not None and steps == abort_step + LATE_AFTER:
            for i in range(N_FIRST, N_FIRST + N_LATE):
                add(i)
    wall = time.time() - t0
    out = {"device_blocks": blocks, "steps": steps, "abort_step": abort_step, "preempted_all_at": preempted_all_at,
           "aborted": aborted, "preempted": preempted,
           "finished": finished, "wall_s_schedule": round(wall, 1), "decode_graph_steps": graph_steps,
           "async_scheduling": bool(getattr(engine.vllm_config.scheduler_config, "async_scheduling", False))}
    if offload:
        from vllm_kvoffload.stats import engine_stats

        stats = engine_stats(llm)
        out["stats"] = {k: v for k, v in stats.items() if k != "requests"}
        out["requests_left"] = stats["requests"]
        out["accounting_whole"] = (stats["requests"] == {}
                                   and stats["device_blocks_free"] == stats["device_blocks_total"]
                                   and stats["host_blocks_free"] == stats["host_blocks_total"])
        rt = current_runtime()
        out["fetch"] = rt.fetch_stats() if rt is not None and rt.pool is not None else None
    print(json.dumps(out))


def summarize(results: dict) -> list[dict]:
    """One row per variant: what finished, what was aborted and preempted, whether the accounting
    came back whole, and greedy agreement with stock on the requests both finished."""
    stock = results.get("stock", {})
    rows = []
    for name, r in results.items():
        if "error" in r:
            rows.append({"variant": name, "error": r["error"]})
            continue
        expected = N_FIRST + N_LATE - len(r["aborted"])
        complete = sum(len(t) == N_TOKENS for t in r["finished"].values())
        row = {"variant": name, "finished": f"{complete}/{expected}", "aborted": r["aborted"],
               "preemptions": sum(r["preempted"].values()), "accounting_whole": r.get("accounting_whole"),
               "steps": r["steps"], "decode_graph_steps": r.get("decode_graph_steps"),
               "async_scheduling": r.get("async_scheduling"),
               "cache_hit_rate": (r.get("fetch") or {}).get("cache_hit_rate")}
        if name != "stock" and "finished" in stock:
            both = sorted(set(stock["finished"]) & set(r["finished"]))
            same = [rid for rid in both if stock["finished"][rid] == r["finished"][rid]]
            row["same_tokens_as_stock"] = f"{len(same)}/{len(both)}"
        rows.append(row)
    return rows


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "_lifecycle":
        a = sys.argv[2:]
        return child_lifecycle(a[0], a[1], a[2], float(a[3]))
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=DEFAULT_MODEL, help="a trained model folder (default: the shipped one)")
    p.add_argument("--pool-prompts", type=float, default=2.0,
                   help="the device KV pool, in prompts it holds (at least 1: vLLM needs one request to fit)")
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    args = p.parse_args()
    if not args.pool_prompts >= 1:
        p.error(f"--pool-prompts {args.pool_prompts}: must be at least 1 (one request must fit the device pool)")
    OUT.mkdir(parents=True, exist_ok=True)
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"  # the children read their scheduler and runtime
    prompts = trained_prompts(args.model)
    results = {}
    for name in args.variants:
        cfg = VARIANTS[name]
        results[name] = run_child(["_lifecycle", args.model, json.dumps(cfg) if cfg else "", prompts,
                                   str(args.pool_prompts)], 1200, script=__file__)
    rows = summarize(results)
    (OUT / "lifecycle.json").write_text(json.dumps({"rows": rows, "runs": results}, indent=1))
    for row in rows:
        print(row)


if __name__ == "__main__":
    main()
