"""The worker runtime end to end on CPU with a FlashAttention-layout cache: a real
offload plan from the manager, then the batched decode path (the GPU path's logic,
run here on the torch references) against the per-row path and dense attention."""

import math
from types import SimpleNamespace

import pytest
import torch

from test_kv_spec import decode_step, make_manager  # same folder (pytest prepends it)
from vllm_kvoffload.attention.backend_cuda import OffloadFlashAttentionImpl
from vllm_kvoffload.config import KVOffloadConfig
from vllm_kvoffload.ops.attention import dense_decode_attention
from vllm_kvoffload.runtime import OffloadRuntime
from vllm_kvoffload.scorers import available

BS, HQ, HKV, D = 16, 8, 2, 64


class FlashLayoutImpl:
    """Geometry plus the CUDA impl's own cache views (the code under test reads them)."""

    num_heads, num_kv_heads, head_size, scale = HQ, HKV, D, 1 / math.sqrt(D)
    kv5 = OffloadFlashAttentionImpl.kv5
    kv_views = OffloadFlashAttentionImpl.kv_views


def setup(budget, seq_lens=(300, 150, 40), scorer="exact-topk"):
    torch.manual_seed(0)
    cfg = KVOffloadConfig.parse({"scorer": scorer, "budget": budget, "sink_tokens": 4, "window_tokens": 40})
    manager, _ = make_manager(num_blocks=128, host_blocks=64, sink=4, window=40)
    runtime = OffloadRuntime(cfg, BS)
    caches = []
    for name in ("layer.0", "layer.1"):
        cache = torch.randn(128, HKV, BS, 2 * D)  # vLLM's logical [blocks, heads, tokens, 2*dim]
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
    runtime.apply_plan(manager.take_plan(), 64)
    rows = runtime.plan_decodes(3, torch.tensor(seq_lens), table)
    return runtime, rows, table, caches


@pytest.mark.parametrize("scorer", available())
@pytest.mark.parametrize("budget", [1.0, 0.1, 3])
def test_batched_path_matches_per_row_path(budget, scorer):
    runtime, rows, table, _ = setup(budget, scorer=scorer)
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
