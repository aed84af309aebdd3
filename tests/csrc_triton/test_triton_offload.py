import pytest
import torch

from conftest import INTERPRET

triton = pytest.importorskip("triton")

from vllm_kvoffload.ops.offload_ref import store_blocks_ref  # noqa: E402
from vllm_kvoffload.ops.triton_kernels import store_blocks_uva  # noqa: E402


@pytest.mark.parametrize("Hkv,BS,D", [(2, 16, 64), (8, 16, 128), (1, 32, 64)])
@pytest.mark.parametrize("mode", ["tensor", "int"])
def test_store_blocks(device, Hkv, BS, D, mode):
    if INTERPRET and mode == "int":
        pytest.skip("the interpreter cannot dereference raw integer addresses")
    nb, slots_total, layers = 11, 9, 3
    # the cache as vLLM's FlashAttention logical view [blocks, Hkv, bs, 2D] with NHD strides
    phys = torch.randn(nb, BS, Hkv, 2 * D, device=device).to(torch.bfloat16)
    kv = phys.transpose(1, 2)
    k, v = kv.transpose(1, 2).split(D, dim=-1)
    kv5 = torch.as_strided(kv, (2, *k.shape), (v.storage_offset() - k.storage_offset(), *k.stride()),
                           k.storage_offset())
    pin = device.type == "cuda"
    host = torch.full((slots_total, layers, 2, Hkv, BS, D), float("nan"), dtype=torch.bfloat16, pin_memory=pin)
    want = host.clone()
    blocks = torch.tensor([3, 0, 10, 7], device=device)
    slots = torch.tensor([8, 1, 4, 0], device=device)
    store_blocks_uva(kv5, blocks, host, 2, slots, mode=mode)
    if device.type == "cuda":
        torch.cuda.synchronize()
    store_blocks_ref(kv5, blocks, want, 2, slots)
    assert torch.equal(host.nan_to_num(7.0), want.nan_to_num(7.0))  # untouched slots stay NaN
    assert torch.equal(host[8, 2, 0], phys[3, :, :, :D].transpose(0, 1).cpu())
