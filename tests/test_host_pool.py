"""Blocks go to the host pool and come back bit-exactly."""

import pytest
import torch

from vllm_kvoffload.host_pool import HostPool
from vllm_kvoffload.scorers import KVGeometry, create_scorer


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_store_and_read_back_bit_exact(dtype):
    g = KVGeometry(num_kv_heads=2, num_q_heads=4, head_dim=8, block_size=16, dtype=dtype)
    pool = HostPool(10, 3, 2, 16, 8, dtype, create_scorer("oracle", g), torch.device("cpu"))
    keys, values = torch.randn(4, 2, 16, 8).to(dtype), torch.randn(4, 2, 16, 8).to(dtype)
    slots = torch.tensor([7, 2, 5, 0])
    pool.store(1, slots, keys, values)
    k, v = pool.read_blocks(1, slots)
    assert torch.equal(k, keys) and torch.equal(v, values)
    assert torch.equal(pool.summaries[1][slots], keys)  # oracle keeps the exact keys


def test_gather_picks_per_head_tokens():
    g = KVGeometry(num_kv_heads=2, num_q_heads=2, head_dim=4, block_size=4, dtype=torch.float32)
    pool = HostPool(6, 1, 2, 4, 4, torch.float32, create_scorer("exact-topk", g), torch.device("cpu"))
    keys, values = torch.randn(3, 2, 4, 4), torch.randn(3, 2, 4, 4)
    slots = torch.tensor([4, 1, 3])
    pool.store(0, slots, keys, values)
    idx = torch.tensor([[0, 5, 11], [2, 3, 9]])  # cold-token indices per head
    k, v = pool.gather(0, slots, idx)
    for h in range(2):
        for j, t in enumerate(idx[h].tolist()):
            assert torch.equal(k[h, j], keys[t // 4, h, t % 4])
            assert torch.equal(v[h, j], values[t // 4, h, t % 4])
    assert pool.summaries[0].dtype == torch.bfloat16  # exact-topk keeps compact bf16 keys


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gather_takes_the_selection_on_the_device_and_the_slots_on_the_host():
    """The per-request decode path selects on the GPU and keeps a request's slots on the host
    (session 28's GPU run failed here: an index on the GPU into a host tensor)."""
    g = KVGeometry(num_kv_heads=2, num_q_heads=2, head_dim=4, block_size=4, dtype=torch.float32)
    pool = HostPool(6, 1, 2, 4, 4, torch.float32, create_scorer("exact-topk", g), torch.device("cuda"))
    keys, values = torch.randn(3, 2, 4, 4), torch.randn(3, 2, 4, 4)
    slots = torch.tensor([4, 1, 3])
    pool.store(0, slots, keys.cuda(), values.cuda())
    idx = torch.tensor([[0, 5, 11], [2, 3, 9]])
    k, v = pool.gather(0, slots, idx.cuda())
    k_cpu, v_cpu = pool.gather(0, slots, idx)
    assert torch.equal(k, k_cpu) and torch.equal(v, v_cpu) and torch.equal(k[1, 2], keys[2, 1, 1])


def test_fp8_pool_stores_rounded_saturated_kv_and_reads_the_model_dtype():
    """host_kv_dtype=fp8: the pool holds float8 e4m3 (half the bytes), rounded to nearest and
    saturated at +-448; reads widen to the model's dtype; summaries come from the exact keys."""
    from vllm_kvoffload.ops.offload_ref import to_host

    torch.manual_seed(0)
    dt, fp8 = torch.bfloat16, torch.float8_e4m3fn
    g = KVGeometry(num_kv_heads=2, num_q_heads=4, head_dim=8, block_size=16, dtype=dt)
    exact = HostPool(10, 2, 2, 16, 8, dt, create_scorer("oracle", g), torch.device("cpu"))
    pool = HostPool(10, 2, 2, 16, 8, dt, create_scorer("oracle", g), torch.device("cpu"), host_dtype=fp8)
    assert pool.kv.dtype == fp8 and pool.kv.element_size() * 2 == exact.kv.element_size()
    keys = (torch.randn(4, 2, 16, 8) * 40).to(dt)
    keys[0, 0, 0, :2] = torch.tensor([1000.0, -3000.0])  # past fp8's range
    values = torch.randn(4, 2, 16, 8).to(dt)
    slots = torch.tensor([7, 2, 5, 0])
    pool.store(1, slots, keys, values)
    k, v = pool.read_blocks(1, slots)
    assert k.dtype == dt and v.dtype == dt
    assert k[0, 0, 0, :2].tolist() == [448.0, -448.0]  # saturated, not NaN
    assert torch.equal(k, keys.float().clamp(-448, 448).to(fp8).to(dt)) and torch.equal(v, to_host(values, fp8).to(dt))
    rel = ((k.float() - keys.float().clamp(-448, 448)).abs() / keys.float().abs().clamp_min(2**-6)).max()
    assert 0 < rel <= 2**-4  # e4m3 rounding: at most half a step of 3 mantissa bits
    assert torch.equal(pool.summaries[1][slots], keys)  # scoring sees the exact keys
    idx = torch.tensor([[0, 17, 40], [3, 33, 63]])
    gk, gv = pool.gather(1, slots, idx)
    assert gk.dtype == dt and torch.equal(gk[1, 1], k[33 // 16, 1, 33 % 16])


def test_int4_pool_stores_packed_rows_and_reads_the_model_dtype():
    """A 4-bit pool holds D/2 bytes per token and KV head on the host and the row's
    fp32 scale in ``scales`` (the device's memory); reads unpack to the model's dtype within half a step
    of 4 bits; summaries come from the exact keys."""
    from vllm_kvoffload.ops.int4_ref import INT4, pack_int4_ref, unpack_int4_ref

    torch.manual_seed(0)
    dt = torch.bfloat16
    g = KVGeometry(num_kv_heads=2, num_q_heads=4, head_dim=16, block_size=16, dtype=dt)
    pool = HostPool(10, 2, 2, 16, 16, dt, create_scorer("oracle", g), torch.device("cpu"), host_dtype=INT4)
    assert pool.kv.dtype == torch.uint8 and pool.kv.shape[-1] == 16 // 2 and pool.cache_row == 16 // 2 + 4
    assert pool.scales.shape == (10, 2, 2, 2, 16) and pool.scales.dtype == torch.float32
    keys, values = (torch.randn(4, 2, 16, 16) * 5).to(dt), torch.randn(4, 2, 16, 16).to(dt)
    slots = torch.tensor([7, 2, 5, 0])
    pool.store(1, slots, keys, values)
    k, v = pool.read_blocks(1, slots)
    assert k.dtype == dt and torch.equal(k, unpack_int4_ref(pack_int4_ref(keys), dt))
    assert torch.equal(pool.kv[slots, 1, 0], pack_int4_ref(keys)[..., :-4])  # the nibbles on the host
    assert torch.equal(pool.scales[slots, 1, 1], values.float().abs().amax(-1) / 7)  # the scales apart
    step = keys.float().abs().amax(-1, keepdim=True) / 7
    assert ((k.float() - keys.float()).abs() <= step / 2 + 0.02 * keys.float().abs()).all()  # + bf16's rounding
    assert torch.equal(pool.summaries[1][slots], keys)  # scoring sees the exact keys
    gk, gv = pool.gather(1, slots, torch.tensor([[0, 17, 40], [3, 33, 63]]))
    assert torch.equal(gk[1, 1], k[33 // 16, 1, 33 % 16]) and torch.equal(gv[0, 2], v[40 // 16, 0, 40 % 16])


def test_pool_is_head_major():
    """The blocks of one (layer, KV head) lie together, a block's keys just before its values, behind
    the logical [slot, layer, 2, kv_head, token, dim] shape: a step's reads of one layer and head stay
    within a small part of the pool (scattered zero-copy reads slow down as they spread), and a
    token's K and V rows share a page (misses are bound by address translations)."""
    g = KVGeometry(num_kv_heads=2, num_q_heads=4, head_dim=8, block_size=4, dtype=torch.float32)
    pool = HostPool(5, 3, 2, 4, 8, torch.float32, create_scorer("exact-topk", g), torch.device("cpu"))
    assert pool.kv.shape == (5, 3, 2, 2, 4, 8)
    for layer in range(3):
        for h in range(2):
            part = pool.kv[:, layer, :, h]  # [slot, 2, token, dim]
            assert part.is_contiguous()
            assert part.data_ptr() == pool.kv.data_ptr() + ((layer * 2 + h) * 5 * 2 * 4 * 8) * 4
            # a token's value row is one block of keys (4 tokens x 8) after its key row
            assert pool.kv[3, layer, 1, h, 2].data_ptr() - pool.kv[3, layer, 0, h, 2].data_ptr() == 4 * 8 * 4
