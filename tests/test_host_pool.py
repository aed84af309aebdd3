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
