"""The worker runtime end to end on CPU with a FlashAttention-layout cache: a real
offload plan from the manager, then the batched decode path (the GPU path's logic,
run here on the torch references) against the per-row path and dense attention."""

import dataclasses
import logging
import math
from types import SimpleNamespace

import pytest
import torch

from test_kv_spec import decode_step, make_manager  # same folder (pytest prepends it)
from vllm_kvoffload.attention.backend_cuda import OffloadFlashAttentionImpl
from vllm_kvoffload.config import KVOffloadConfig, KVOffloadConfigError
from vllm_kvoffload.device_cache import DeviceCache
from vllm_kvoffload.ops.attention import dense_decode_attention
from vllm_kvoffload.runtime import OffloadRuntime
from vllm_kvoffload.scorers import available

BS, HQ, HKV, D = 16, 8, 2, 64


class FlashLayoutImpl:
    """Geometry plus the CUDA impl's own cache views (the code under test reads them)."""

    num_heads, num_kv_heads, head_size, scale = HQ, HKV, D, 1 / math.sqrt(D)
    _kv5 = None  # OffloadFlashAttentionImpl.kv5 caches its view here
    kv5 = OffloadFlashAttentionImpl.kv5
    kv_views = OffloadFlashAttentionImpl.kv_views


def setup(budget, seq_lens=(300, 150, 40), scorer="exact-topk", device="cpu", dtype=torch.float32, **settings):
    torch.manual_seed(0)
    cfg = KVOffloadConfig.parse({"scorer": scorer, "budget": budget, "sink_tokens": 4, "window_tokens": 40,
                                 **settings})
    manager, _ = make_manager(num_blocks=128, host_blocks=64, sink=4, window=40)
    runtime = OffloadRuntime(cfg, BS)
    caches = []
    for name in ("layer.0", "layer.1"):
        cache = torch.randn(128, HKV, BS, 2 * D).to(device, dtype)  # vLLM's logical [blocks, heads, tokens, 2*dim]
        caches.append(cache)
        runtime.add_layer(name, SimpleNamespace(impl=FlashLayoutImpl(), kv_cache=cache))
    ids = ["a", "b", "c"]
    table = torch.zeros(3, 32, dtype=torch.int32)
    for i, (req, n) in enumerate(zip(ids, seq_lens)):
        manager.allocate_new_blocks(req, n - 1, n - 1)
        blocks = [b.block_id for b in manager.req_to_blocks[req]]  # the worker keeps these ids
        decode_step(manager, req, n - 1)  # offloads, then allocates the slot of token n-1
        blocks = blocks + [b.block_id for b in manager.req_to_blocks[req][len(blocks):]]
        table[i, : len(blocks)] = torch.tensor(blocks)
    runtime.runner = SimpleNamespace(input_batch=SimpleNamespace(req_ids=ids))
    table = table.to(device)
    runtime.apply_plan(manager.take_plan(), 64)
    rows = runtime.plan_decodes(3, torch.tensor(seq_lens), table)
    return runtime, rows, table, caches


@pytest.mark.parametrize("scorer", available())
@pytest.mark.parametrize("budget", [1.0, 0.1, 3])
def test_batched_path_matches_per_row_path(budget, scorer):
    check_batched_path_against_per_row_path(budget, scorer)


@pytest.mark.parametrize("settings", [{"granularity": "block"}, {"topp": 0.6, "topp_min_tokens": 2}])
@pytest.mark.parametrize("budget", [1.0, 0.1, 3])
def test_batched_path_with_blocks_or_top_p_matches_per_row_path(budget, settings):
    """Block granularity and top-p select in torch on the batched path (``select_cold_tokens_batched``)."""
    runtime = check_batched_path_against_per_row_path(budget, "exact-topk", **settings)
    assert runtime.use_batched_kernels() and runtime.batched["k"] % BS == 0


@pytest.mark.parametrize("settings", [{"granularity": "block"}, {"topp": 0.6}])
def test_device_cache_across_steps_with_blocks_or_top_p(settings):
    """Top-p's counts change from step to step (a shrunk count re-reads the row); blocks come whole."""
    runtime, rows, table, _ = setup(0.2, **settings)
    q1 = torch.randn(3, HQ, D)
    run_step(runtime, rows, table, q1)
    for scale in (0.05, 1.0):  # a close query (hits), then an unrelated one
        run_step(runtime, rows, table, q1 + scale * torch.randn_like(q1))
    assert runtime.fetch_stats()["cache_hits"] > 0


def wandering_queries(steps, seed=0):
    """Queries that move among a few directions and come back, as a trained model's attention does:
    tokens leave the selection and return some steps later."""
    g = torch.Generator().manual_seed(seed)
    bases = torch.randn(4, 3, HQ, D, generator=g)
    return [bases[(s * 3) % 4] + 0.05 * torch.randn(3, HQ, D, generator=g) for s in range(steps)]


@pytest.mark.parametrize("settings", [{}, {"host_kv_dtype": "fp8"}, {"host_kv_dtype": "int4"}, {"granularity": "block"},
                                      {"topp": 0.6}])
def test_lru_device_cache_equals_the_per_request_path_and_hits_more(settings):
    """device_cache_factor 3: steps whose queries come back to earlier directions, each layer against
    the per-request reference (which reads the pool); the wider cache serves more of them."""
    hits = {}
    for factor in (1, 3):
        runtime, rows, table, _ = setup(0.1, device_cache_factor=factor, **settings)
        for q in wandering_queries(8):
            check_steps_against_the_per_request_path(runtime, rows, table, q)
        assert runtime.device_cache.shape.lru == (factor > 1)
        hits[factor] = runtime.fetch_stats()["cache_hits"]
    assert hits[3] > hits[1] > 0


def test_lru_device_cache_reads_its_rows_not_the_pool_and_forgets_a_released_request():
    runtime, rows, table, _ = setup(0.1, device_cache_factor=2)
    queries = wandering_queries(4)
    outs = [run_step(runtime, rows, table, q) for q in queries]
    runtime.pool.kv.fill_(float("nan"))  # from here on, any read of the pool shows
    runtime.apply_plan(SimpleNamespace(released=["b"], copies=[]), 64)  # b finished; its id came back
    runtime.cold["b"] = rows[1].cold_slots.tolist()
    again = run_step(runtime, rows, table, queries[3], check_per_row=False)  # a selection the cache holds
    torch.testing.assert_close(again[0], outs[3][0])
    assert again[1].isnan().all()  # b's row is fresh: read from the (poisoned) pool


@pytest.mark.parametrize("budget", [1.0, 0.1])
def test_batched_path_matches_per_row_path_with_an_fp8_pool(budget):
    """The batched path keeps an fp8 pool's selections in fp8 (widened by the attention); the
    per-row path widens them as it reads the pool: the same values either way."""
    runtime = check_batched_path_against_per_row_path(budget, "exact-topk", host_kv_dtype="fp8")
    assert runtime.pool.kv.dtype == torch.float8_e4m3fn


@pytest.mark.parametrize("budget", [1.0, 0.1])
def test_batched_path_matches_per_row_path_with_an_int4_pool(budget):
    """A 4-bit pool (``ops/int4_ref.py``): the device cache keeps the packed rows and the attention unpacks
    them; the per-row path unpacks them as it reads the pool: the same values either way."""
    from vllm_kvoffload.ops.int4_ref import INT4, nibble_bytes, row_bytes

    runtime = check_batched_path_against_per_row_path(budget, "exact-topk", host_kv_dtype="int4")
    assert runtime.pool.kv.dtype == INT4 and runtime.pool.kv.shape[-1] == nibble_bytes(D)
    assert runtime.pool.scales is not None and runtime.pool.scales.shape == runtime.pool.kv.shape[:5]
    assert runtime.device_cache.shape.dtype == INT4 and runtime.device_cache.shape.head_size == row_bytes(D)


def check_batched_path_against_per_row_path(budget, scorer, **settings):
    runtime, rows, table, _ = setup(budget, scorer=scorer, **settings)
    assert [r.cold_slots.numel() for r in rows] == [15, 5, 0]  # a and b offloaded, c too short
    query = torch.randn(3, HQ, D)
    impl = FlashLayoutImpl()
    for name, layer in runtime.layers.items():
        per_row = torch.empty_like(query)
        runtime._decode_rows(name, impl, query, layer.kv_cache, rows, per_row)
        runtime.plan_batched(rows, table)
        batched = torch.full_like(query, float("nan"))
        runtime._decode_batched(name, impl, query, layer.kv_cache, batched)
        torch.testing.assert_close(batched, per_row, atol=1e-5, rtol=1e-5)
    return runtime


def test_full_budget_equals_dense_over_the_original_cache():
    runtime, rows, table, caches = setup(1.0)
    query = torch.randn(3, HQ, D)
    impl = FlashLayoutImpl()
    out = torch.empty_like(query)
    runtime.plan_batched(rows, table)
    runtime._decode_batched("layer.1", impl, query, caches[1], out)
    for i, n in enumerate((300, 150, 40)):
        kv = caches[1][table[i, : -(-n // BS)].long()]  # [blocks, heads, tokens, 2D], unchanged on host
        k = kv[..., :D].transpose(0, 1).flatten(1, 2)[:, :n]
        v = kv[..., D:].transpose(0, 1).flatten(1, 2)[:, :n]
        # exact-topk scores with bf16 keys, but at full budget every cold token is attended
        torch.testing.assert_close(out[i], dense_decode_attention(query[i], k, v, impl.scale), atol=1e-5, rtol=1e-5)


def run_step(runtime, rows, table, query, check_per_row=True):
    """One decode step over every layer of the batched path (optionally checked against the
    per-row path); returns the last layer's output."""
    impl = FlashLayoutImpl()
    runtime.plan_batched(rows, table)
    for name, layer in runtime.layers.items():
        out = torch.full_like(query, float("nan"))
        runtime._decode_batched(name, impl, query, layer.kv_cache, out)
        if check_per_row:
            ref = torch.empty_like(query)
            runtime._decode_rows(name, impl, query, layer.kv_cache, rows, ref)
            torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    return out


def test_device_cache_serves_reselected_tokens_across_reordered_rows():
    runtime, rows, table, _ = setup(0.2)
    q1 = torch.randn(3, HQ, D)
    run_step(runtime, rows, table, q1, check_per_row=False)  # (the per-request path's reads count too)
    first = runtime.fetch_stats()
    assert first["cache_hits"] == 0 and first["tokens_gathered"] > 0
    order = [2, 0, 1]  # vLLM may reorder its batch between steps
    q2 = (q1 + 0.05 * torch.randn_like(q1))[order]  # the next queries, close to the last ones
    run_step(runtime, [rows[i] for i in order], table[order], q2, check_per_row=False)
    stats = runtime.fetch_stats()
    gathered = stats["tokens_gathered"] - first["tokens_gathered"]
    assert gathered > 0 and stats["cache_hits"] > 0.5 * gathered


def test_device_cache_rows_are_read_instead_of_the_pool_and_dropped_on_release():
    runtime, rows, table, _ = setup(0.2)
    query = torch.randn(3, HQ, D)
    before = run_step(runtime, rows, table, query)
    runtime.pool.kv.fill_(float("nan"))  # from here on, any read of the pool shows
    runtime.apply_plan(SimpleNamespace(released=["b"], copies=[]), 64)  # b finished; its id came back
    runtime.cold["b"] = rows[1].cold_slots.tolist()
    after = run_step(runtime, rows, table, query, check_per_row=False)
    torch.testing.assert_close(after[0], before[0])  # a: the same selection, all from the cache
    assert after[1].isnan().all()  # b: its cache rows were dropped, so it read the (poisoned) pool
    torch.testing.assert_close(after[2], before[2])  # c: nothing cold


def test_device_cache_off_reads_the_pool():
    runtime, rows, table, _ = setup(0.2)
    runtime.config = runtime.config.model_copy(update={"device_cache": False})
    query = torch.randn(3, HQ, D)
    run_step(runtime, rows, table, query)
    runtime.pool.kv.fill_(float("nan"))
    after = run_step(runtime, rows, table, query, check_per_row=False)
    assert after[0].isnan().all() and runtime.fetch_stats()["cache_hits"] == 0


def test_rows_follow_blocks_going_cold_between_steps():
    """A plan that moves one more block of a request to the host changes its next rows:
    one cold slot more, one resident block less (the cached cold-slot tensors follow)."""
    runtime, rows, table, caches = setup(0.2)
    a = runtime.cold["a"]
    logical = runtime.sink_blocks + len(a)  # a's first resident block after the sink
    free = next(s for s in range(64) if all(s not in slots for slots in runtime.cold.values()))
    block = int(table[0, logical])
    runtime.apply_plan(SimpleNamespace(released=[], copies=[("a", logical, block, free)]), 64)
    after = runtime.plan_decodes(3, torch.tensor((300, 150, 40)), table)
    assert after[0].cold_slots.tolist() == rows[0].cold_slots.tolist() + [free]
    assert after[0].resident_blocks.tolist() == [b for b in rows[0].resident_blocks.tolist() if b != block]
    assert after[0].resident_tokens == rows[0].resident_tokens - BS
    k, v = runtime.pool.read_blocks(0, torch.tensor([free]))
    assert torch.equal(k[0], caches[0][block, :, :, :D]) and torch.equal(v[0], caches[0][block, :, :, D:])
    for r_after, r_before in zip(after[1:], rows[1:]):  # b and c: unchanged
        assert r_after.cold_slots.tolist() == r_before.cold_slots.tolist()
        assert r_after.resident_blocks.tolist() == r_before.resident_blocks.tolist()
    run_step(runtime, after, table, torch.randn(3, HQ, D))  # batched path == per-row path


def test_block_table_rows_come_from_vllms_host_copy():
    """plan_decodes reads vLLM's host block table (no device sync); it falls back to copying the
    device table when the runner has none that matches."""
    from vllm.v1.worker.block_table import MultiGroupBlockTable

    tables = MultiGroupBlockTable(max_num_reqs=4, max_num_batched_tokens=64, pin_memory=False,
                                  device=torch.device("cpu"), block_sizes=[BS], max_num_blocks=[8])
    host = tables[0].get_numpy_array()
    host[:3, :5] = torch.arange(15).view(3, 5).numpy() + 1
    tables.commit_block_table(3)
    runtime = OffloadRuntime(KVOffloadConfig.parse({"scorer": "exact-topk"}), BS)
    runtime.runner = SimpleNamespace(input_batch=SimpleNamespace(req_ids=[], block_table=tables))
    rows = runtime._block_table_rows(tables[0].get_device_tensor(3), 2)
    assert rows.ctypes.data == host.ctypes.data and (rows == host[:2]).all()  # the host copy itself
    other = torch.full((3, 8), 7, dtype=torch.int32)
    assert (runtime._block_table_rows(other, 2) == 7).all()


def test_a_pool_the_host_cannot_hold_fails_with_the_setting_named():
    """The pool is allocated at start-up (``prepare_pool``, from vLLM's initialize_kv_cache); an
    allocation the host refuses raises a config error that names host_gb and what to change."""
    cfg = KVOffloadConfig.parse({"scorer": "exact-topk", "budget": 0.03, "host_gb": 1 << 40})
    runtime = OffloadRuntime(cfg, BS)
    runtime.add_layer("layer.0", SimpleNamespace(impl=FlashLayoutImpl(), kv_cache=torch.zeros(4, HKV, BS, 2 * D)))
    with pytest.raises(KVOffloadConfigError, match=r"host_gb=1099511627776.*lower --kv-offload-host-gb"):
        runtime.prepare_pool(1 << 36)  # 1 PiB of host memory: no host holds it
    assert runtime.pool is None
    runtime.prepare_pool(8)
    assert runtime.pool is not None and runtime.pool.num_slots == 8


def check_steps_against_the_per_request_path(runtime, rows, table, query):
    """One decode step through ``decode``, each layer checked against the per-request reference."""
    impl = FlashLayoutImpl()
    runtime.plan_batched(rows, table)
    for name, layer in runtime.layers.items():
        out, ref = torch.full_like(query, float("nan")), torch.empty_like(query)
        runtime.decode(name, impl, query, layer.kv_cache, rows, out)
        runtime._decode_rows(name, impl, query, layer.kv_cache, rows, ref)
        torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


def full_cache_bytes(rows):
    runtime, r, table, _ = setup(0.2)
    runtime.plan_batched(r, table)
    return DeviceCache.bytes_for(dataclasses.replace(runtime.device_cache.shape, rows=rows))


def test_a_batch_whose_device_cache_does_not_fit_decodes_in_a_scratch_then_gets_its_cache():
    """device_cache_gb below what three rows take: the steps run the batched path in a one-layer
    scratch (the same outputs, every token from the pool), and once a request ends, two rows fit."""
    runtime, rows, table, _ = setup(0.2, device_cache_gb=full_cache_bytes(2) / 2**30)
    query = torch.randn(3, HQ, D)
    for _ in range(2):
        check_steps_against_the_per_request_path(runtime, rows, table, query)
        assert runtime.batched is not None and runtime.device_cache.shape.shared
    stats = runtime.fetch_stats()
    assert stats["cache_hits"] == 0 and stats["tokens_gathered"] > 0 and stats["steps_without_device_cache"] == 2
    runtime.apply_plan(SimpleNamespace(released=["c"], copies=[]), 64)  # c finished
    runtime.runner.input_batch.req_ids = ["a", "b"]
    for _ in range(2):
        check_steps_against_the_per_request_path(runtime, rows[:2], table[:2], query[:2])
    assert not runtime.device_cache.shape.shared and runtime.device_cache.shape.rows == 2
    stats = runtime.fetch_stats()
    assert stats["cache_hits"] > 0 and stats["steps_without_device_cache"] == 2  # the second step hit


def test_an_lru_cache_that_does_not_fit_falls_back_to_the_one_selection_scratch():
    """device_cache_factor 4 under a limit that holds one selection's cache but not four: the scratch
    (one selection wide, in place), the same outputs."""
    runtime, rows, table, _ = setup(0.2, device_cache_factor=4, device_cache_gb=full_cache_bytes(3) / 2**30)
    for q in wandering_queries(2):
        check_steps_against_the_per_request_path(runtime, rows, table, q)
        assert runtime.device_cache.shape.shared and not runtime.device_cache.shape.lru
    assert runtime.fetch_stats()["steps_without_device_cache"] == 2


def test_a_batch_whose_scratch_does_not_fit_either_decodes_on_the_per_request_path():
    runtime, rows, table, _ = setup(0.2, device_cache_gb=1e-9)
    query = torch.randn(3, HQ, D)
    check_steps_against_the_per_request_path(runtime, rows, table, query)
    assert runtime.batched is None and runtime.device_cache.shape is None
    stats = runtime.fetch_stats()  # the per-request path reads every selected token from the pool
    assert stats["tokens_gathered"] > 0 and stats["cache_hits"] == 0 and stats["steps_without_device_cache"] == 1


def test_start_up_says_how_large_the_device_cache_can_grow_and_warns_past_its_limit():
    logged = []
    handler = logging.Handler()
    handler.emit = lambda record: logged.append((record.levelname, record.getMessage()))
    log = logging.getLogger("vllm.kvoffload.runtime")
    level = log.level
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    try:
        runtime, _, _, _ = setup(0.1, device_cache_gb=0.001)
        runtime.prepare_pool(64, max_requests=4, max_model_len=4096)
    finally:
        log.removeHandler(handler)
        log.setLevel(level)
    # 2 layers x 2 KV heads x 448 slots (10% of 4096, in buckets of 64) x 64 dims x K and V x 4 bytes, plus the arrays
    row = 2 * (2 * 2 * 448 * 64 * 4 + 2 * (2 * 2 * 448 + 2) * 4)
    assert any(level == "INFO" and f"{4 * row / 2**30:.2f} GiB with max_num_seqs=4" in m for level, m in logged)
    warning = [m for level, m in logged if level == "WARNING"]
    assert len(warning) == 1 and f"holds the device cache of {2**30 // 1000 // row} requests" in warning[0]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("settings", [{}, {"granularity": "block"}])
def test_the_per_request_path_on_the_gpu_equals_the_batched_path(settings):
    """The last fallback of a device cache that does not fit, on the GPU (session 28's call 28a: it
    failed there, a selection on the GPU indexing host slots), against the batched path (with blocks:
    ``select_cold_tokens_batched`` on the GPU)."""
    runtime, rows, table, _ = setup(1.0, device="cuda", dtype=torch.bfloat16, **settings)  # every cold token
    query = torch.randn(3, HQ, D, device="cuda", dtype=torch.bfloat16)
    impl = FlashLayoutImpl()
    runtime.plan_batched(rows, table)
    for name, layer in runtime.layers.items():
        batched, per_row = torch.full_like(query, float("nan")), torch.full_like(query, float("nan"))
        runtime._decode_batched(name, impl, query, layer.kv_cache, batched)
        runtime._decode_rows(name, impl, query, layer.kv_cache, rows, per_row)
        torch.testing.assert_close(per_row, batched, atol=2e-2, rtol=2e-2)
