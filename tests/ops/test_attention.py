"""With a budget covering every cold token, offloaded decode attention equals dense
attention (bf16 tolerance), for several GQA ratios and lengths off the block grid."""

import math

import pytest
import torch

from vllm_kvoffload.host_pool import HostPool
from vllm_kvoffload.ops.attention import dense_decode_attention, sparse_decode_attention
from vllm_kvoffload.ops.select import select_cold_tokens
from vllm_kvoffload.scorers import KVGeometry, available, create_scorer


def offloaded_attention(q, keys, values, *, block_size, sink_blocks, window, scorer, k_budget, host_dtype=None):
    """Split a sequence like the engine does (sinks + window resident, gap in the host
    pool), score, select, gather, attend."""
    hkv, n, d = keys.shape
    nblocks = -(-n // block_size)
    last_gap = max(sink_blocks, (n - 1 - window) // block_size)
    cold_blocks = list(range(sink_blocks, last_gap))
    g = KVGeometry(hkv, q.shape[0], d, block_size, keys.dtype)
    pool = HostPool(len(cold_blocks) + 1, 1, hkv, block_size, d, keys.dtype, create_scorer(scorer, g),
                    torch.device("cpu"), host_dtype=host_dtype)
    pad = nblocks * block_size - n
    kb = torch.nn.functional.pad(keys, (0, 0, 0, pad)).view(hkv, nblocks, block_size, d).transpose(0, 1)
    vb = torch.nn.functional.pad(values, (0, 0, 0, pad)).view(hkv, nblocks, block_size, d).transpose(0, 1)
    slots = torch.arange(len(cold_blocks))
    if cold_blocks:
        pool.store(0, slots, kb[cold_blocks], vb[cold_blocks])
    resident = [b for b in range(nblocks) if b not in cold_blocks]
    rk = kb[resident].transpose(0, 1).flatten(1, 2)[:, : n - len(cold_blocks) * block_size]
    rv = vb[resident].transpose(0, 1).flatten(1, 2)[:, : n - len(cold_blocks) * block_size]
    scale = 1 / math.sqrt(d)
    if not cold_blocks:
        return sparse_decode_attention(q, rk, rv, rk[:, :0], rv[:, :0], None, scale), 0
    mass = pool.scorer.score(q, pool.summaries[0][slots], scale)
    idx, valid = select_cold_tokens(mass, k_budget, block_size=block_size)
    sk, sv = pool.gather(0, slots, idx)
    return sparse_decode_attention(q, rk, rv, sk, sv, valid, scale), len(cold_blocks) * block_size


@pytest.mark.parametrize("scorer", ["exact-topk", "oracle"])
@pytest.mark.parametrize("hq, hkv", [(4, 4), (8, 2), (8, 1), (16, 2)])
@pytest.mark.parametrize("n", [37, 300, 517])
def test_full_budget_equals_dense(scorer, hq, hkv, n):
    torch.manual_seed(n * 31 + hq)
    d, bs = 64, 16
    q = torch.randn(hq, d, dtype=torch.bfloat16)
    keys = torch.randn(hkv, n, d, dtype=torch.bfloat16)
    values = torch.randn(hkv, n, d, dtype=torch.bfloat16)
    out, n_cold = offloaded_attention(q, keys, values, block_size=bs, sink_blocks=1, window=40,
                                      scorer=scorer, k_budget=n)
    assert n < 100 or n_cold > 0
    ref = dense_decode_attention(q, keys, values, 1 / math.sqrt(d))
    torch.testing.assert_close(out.float(), ref.float(), atol=1e-2, rtol=1e-2)


@pytest.mark.parametrize("hq, hkv", [(8, 2), (16, 2)])
def test_full_budget_with_an_fp8_pool_is_close_to_dense_but_not_equal(hq, hkv):
    """host_kv_dtype=fp8 rounds the cold K/V to e4m3: the attention output stays within fp8's
    error of dense attention (about 2^-4 relative per element, averaged down), and differs."""
    torch.manual_seed(hq)
    d, bs, n = 64, 16, 517
    q = torch.randn(hq, d, dtype=torch.bfloat16)
    keys = torch.randn(hkv, n, d, dtype=torch.bfloat16)
    values = torch.randn(hkv, n, d, dtype=torch.bfloat16)
    out, n_cold = offloaded_attention(q, keys, values, block_size=bs, sink_blocks=1, window=40,
                                      scorer="exact-topk", k_budget=n, host_dtype=torch.float8_e4m3fn)
    ref = dense_decode_attention(q, keys, values, 1 / math.sqrt(d))
    assert n_cold > 400 and not torch.equal(out, ref)
    err = ((out.float() - ref.float()).norm() / ref.float().norm()).item()
    assert err < 0.05, err


def test_small_budget_differs_from_dense():
    """The comparison above can fail: at a tiny budget the result changes."""
    torch.manual_seed(0)
    q, keys, values = torch.randn(4, 32), torch.randn(2, 600, 32) * 3, torch.randn(2, 600, 32)
    out, _ = offloaded_attention(q, keys, values, block_size=16, sink_blocks=1, window=32,
                                 scorer="exact-topk", k_budget=2)
    ref = dense_decode_attention(q, keys, values, 1 / math.sqrt(32))
    assert (out - ref).abs().max() > 1e-2


def test_selection_covers_everything_at_full_budget():
    mass = torch.rand(3, 50)
    idx, valid = select_cold_tokens(mass, 50)
    assert valid.all() and all(row.tolist() == list(range(50)) for row in idx)
    idx, valid = select_cold_tokens(mass, 64, granularity="block", block_size=16)
    assert set(idx[valid].tolist()) == set(range(50))


def test_topp_keeps_tokens_until_mass_reached():
    mass = torch.tensor([[0.5, 0.3, 0.1, 0.05, 0.05]])
    idx, valid = select_cold_tokens(mass, 5, topp=0.75)
    assert idx[valid].tolist() == [0, 1]
    idx, valid = select_cold_tokens(mass, 1, topp=0.99)  # the budget caps top-p
    assert idx[valid].tolist() == [0]


def test_every_scorer_is_registered():
    assert set(available()) >= {"exact-topk", "oracle"}
