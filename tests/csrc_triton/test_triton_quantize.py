"""csrc_triton/quantize.py's quantize_fp8 against ops/quantize_ref.py, bit for bit: the GPU
path of exact-topk-fp8's summarize (keys gathered from a kv5 cache view, made contiguous)."""

import pytest
import torch

triton = pytest.importorskip("triton")

from vllm_kvoffload.ops.quantize_ref import quantize_fp8_ref  # noqa: E402
from vllm_kvoffload.ops.triton_kernels import quantize_fp8  # noqa: E402

# One row quantized with scale exactly 1 (max |x| = 448): e4m3 rounding ties, to even, in
# every regime: normal (84 -> 80, 92 -> 96, 124 -> 128 across a binade), subnormal
# (2**-10 -> 0, 3 * 2**-10 -> 2**-8), below the grid, and signed zeros.
TIES = [448.0, 84.0, 92.0, 124.0, -124.0, 2**-10, 3 * 2**-10, -(2**-10), 2**-12, -0.0, 0.0, 0.25 + 2**-6]


def assert_bit_equal(x, seed):
    q, s = quantize_fp8(x.contiguous())
    qr, sr = quantize_fp8_ref(x)
    assert torch.equal(s.view(torch.int32), sr.view(torch.int32)), f"seed {seed}"
    diff = q.view(torch.uint8) != qr.view(torch.uint8)
    assert not diff.any(), f"seed {seed}: {int(diff.sum())} of {diff.numel()} fp8 bytes differ"


@pytest.mark.parametrize("n,Hkv,bs,D", [(5, 3, 16, 64), (3, 2, 32, 128), (1, 1, 16, 32)])
def test_quantize_fp8_equals_reference_on_gathered_keys(device, n, Hkv, bs, D):
    seed = torch.seed() % 2**31
    g = torch.Generator().manual_seed(seed)
    nb = 2 * n + 1
    # a cache [blocks, bs, Hkv, 2D] with keys of very different magnitudes per token and head
    cache = torch.randn(nb, bs, Hkv, 2 * D, generator=g) * torch.rand(nb, bs, Hkv, 1, generator=g).pow(4) * 30
    cache[0, 0, 0, :D] = 0  # an all-zero key row
    kv5 = cache.to(device, torch.bfloat16).unflatten(-1, (2, D)).movedim(3, 0)  # [2, blocks, bs, Hkv, D]
    blocks = torch.randperm(nb, generator=g)[:n].to(device)
    blocks[0] = 0
    keys = kv5[0, blocks].transpose(1, 2)  # [n, Hkv, bs, D], as HostPool gathers them
    assert Hkv == 1 or not keys.is_contiguous()
    assert_bit_equal(keys, seed)


def test_quantize_fp8_rounds_ties_to_even(device):
    row = torch.zeros(32)
    row[: len(TIES)] = torch.tensor(TIES)
    x = torch.stack([row, -row, row * 2**-20]).to(device, torch.bfloat16)
    assert torch.equal(x.float().cpu()[0, : len(TIES)], torch.tensor(TIES))  # exact in bf16
    assert_bit_equal(x, 0)
    q, _ = quantize_fp8(x)
    assert q[0, 1:7].float().tolist() == [80.0, 96.0, 128.0, -128.0, 0.0, 2**-8]  # independently of torch


def test_exact_topk_fp8_summarize_on_device_equals_cpu(device):
    """The scorer's summary (the kernel on GPU) is the CPU reference summary, bit for bit."""
    from vllm_kvoffload.scorers import KVGeometry, create_scorer

    seed = torch.seed() % 2**31
    g = torch.Generator().manual_seed(seed)
    scorer = create_scorer("exact-topk-fp8", KVGeometry(2, 4, 64, 16, torch.bfloat16))
    keys = (torch.randn(3, 16, 2, 64, generator=g) * 5).to(torch.bfloat16).transpose(1, 2)  # non-contiguous
    assert torch.equal(scorer.summarize(keys.to(device)).cpu(), scorer.summarize(keys)), f"seed {seed}"
