"""The CPU page layout probe reads back exactly what vLLM's own write op stored."""

import pytest
import torch
from vllm import _custom_ops as ops
from vllm.v1.attention.backends.cpu_attn import _get_attn_isa

from vllm_kvoffload.attention.backend import cpu_kv_views


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("head_dim", [32, 64])
def test_views_match_vllm_writes(dtype, head_dim):
    nb, h, bs = 5, 2, 32
    isa = _get_attn_isa(dtype, bs, head_dim, "auto")
    cache = torch.zeros(nb, h, bs, 2 * head_dim, dtype=dtype)
    kv = cache.view(nb, h, 2 * bs, head_dim)
    n = 3 * bs - 7  # not a multiple of the block size
    k, v = torch.randn(n, h, head_dim).to(dtype), torch.randn(n, h, head_dim).to(dtype)
    slots = torch.arange(n) + bs  # blocks 1.. onwards
    ops.cpu_attn_reshape_and_cache(k, v, kv[:, :, :bs], kv[:, :, bs:], slots, isa,
                                   k_scale=1.0, v_scale=1.0, kv_cache_dtype="auto")
    keys, values = cpu_kv_views(cache, isa)
    got_k = keys[1:4].transpose(0, 1).flatten(1, 2)[:, :n]
    got_v = values[1:4].transpose(0, 1).flatten(1, 2)[:, :n]
    assert torch.equal(got_k, k.transpose(0, 1)) and torch.equal(got_v, v.transpose(0, 1))
