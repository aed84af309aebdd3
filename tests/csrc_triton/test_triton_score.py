import pytest
import torch

from conftest import INTERPRET, rel_err

triton = pytest.importorskip("triton")

from vllm_kvoffload.ops.quantize_ref import dequantize_fp8_ref, quantize_fp8_ref  # noqa: E402
from vllm_kvoffload.ops.score_ref import score_mass_ref  # noqa: E402
from vllm_kvoffload.ops.triton_kernels import dequantize_fp8, quantize_fp8, score_mass  # noqa: E402

FP8_INTERP = "the Triton interpreter rounds fp32->fp8 e4m3 wrongly (off by a binade); fp8 quantize runs on GPU only"


def make_inputs(B, Hq, Hkv, D, bs, max_cold, device, seed):
    g = torch.Generator().manual_seed(seed)
    nblk = -(-max_cold // bs)
    S = B * nblk + 5
    cold_lens = torch.randint(0, max_cold + 1, (B,), generator=g, dtype=torch.int32)
    cold_lens[0] = max_cold
    slots = torch.randperm(S, generator=g)[: B * nblk].view(B, nblk).int()
    keys = (torch.randn(S, Hkv, bs, D, generator=g) * 2).to(torch.bfloat16)
    q = torch.randn(B, Hq, D, generator=g).to(torch.bfloat16)
    return q.to(device), keys.to(device), slots.to(device), cold_lens.to(device)


CASES = [  # B, Hq, Hkv, D, bs, max_cold, chunk
    (2, 4, 4, 64, 16, 45, None),
    (3, 8, 2, 128, 32, 150, 64),
    (2, 16, 2, 64, 16, 77, 64),
]
if not INTERPRET:
    CASES += [(8, 32, 8, 128, 16, 5000, None), (3, 28, 4, 64, 32, 3001, 256), (2, 8, 8, 128, 16, 70001, None)]


def check_mass(mass, ref, cold_lens, G):
    for b, n in enumerate(cold_lens.tolist()):
        assert torch.isneginf(mass[b, :, n:]).all()
        if n:
            m, r = mass[b, :, :n], ref[b, :, :n]
            assert not m.isnan().any()
            assert rel_err(m, r) <= 1e-2, rel_err(m, r)
            assert torch.allclose(m.sum(-1), torch.full_like(m[:, 0], G), rtol=1e-3)


@pytest.mark.parametrize("B,Hq,Hkv,D,bs,max_cold,chunk", CASES)
@pytest.mark.parametrize("kind", ["bf16", "fp8", "fp8-bf16-widen"])
def test_score_mass(device, B, Hq, Hkv, D, bs, max_cold, chunk, kind):
    seed = torch.seed() % 2**31
    q, keys, slots, lens = make_inputs(B, Hq, Hkv, D, bs, max_cold, device, seed)
    scale = D**-0.5
    kscale = None
    if kind.startswith("fp8"):
        keys, kscale = quantize_fp8_ref(keys)  # the fp8 *load* path works in the interpreter
    out = torch.full((B, Hkv, slots.shape[1] * bs), float("nan"), device=device)
    score_mass(q, keys, kscale, slots, lens, scale, out=out, chunk=chunk, block_n=32 if INTERPRET else None,
               fp8_widen="bf16" if kind == "fp8-bf16-widen" else "fp16")
    ref = score_mass_ref(q, keys, kscale, slots, lens, scale)
    check_mass(out, ref, lens, Hq // Hkv)


@pytest.mark.skipif(INTERPRET, reason=FP8_INTERP)
@pytest.mark.parametrize("shape", [(3, 5, 16, 128), (7, 4, 32, 64), (1000, 128)])
def test_quantize_fp8(device, shape):
    x = (torch.randn(*shape, device=device) * torch.rand(*shape[:-1], 1, device=device) * 10).to(torch.bfloat16)
    x.view(-1, shape[-1])[0] = 0  # an all-zero row
    q = torch.full(shape, float("nan"), device=device).to(torch.float8_e4m3fn)
    s = torch.full(shape[:-1], float("nan"), device=device)
    quantize_fp8(x, out=q, scale=s)
    qr, sr = quantize_fp8_ref(x)
    assert torch.allclose(s, sr, rtol=1e-6)
    deq, deq_ref = dequantize_fp8_ref(q, s), dequantize_fp8_ref(qr, sr)
    assert not deq.float().isnan().any()
    # fp32 division may differ from torch by an ulp before rounding: rare 1-step fp8 ties
    assert (q.view(torch.uint8) != qr.view(torch.uint8)).float().mean() < 1e-3
    assert rel_err(deq, x) <= 0.05 and rel_err(deq, deq_ref) <= 1e-2
    x2 = torch.full(shape, float("nan"), device=device).to(torch.bfloat16)
    dequantize_fp8(q, s, out=x2)
    assert torch.equal(x2, deq)


@pytest.mark.parametrize("B,Hq,Hkv,D,bs,cold", [(3, 8, 2, 64, 16, [5, 0, 3]), (2, 28, 4, 128, 32, [7, 2])])
def test_exact_topk_fp8_scorer_through_the_kernel(device, B, Hq, Hkv, D, bs, cold):
    """exact-topk-fp8 packs fp8 keys and their fp32 scales in one uint8 summary; the kernel reads
    them through strided views. Against the scorer's own per-request torch ``score``."""
    from conftest import random_cold_slots
    from vllm_kvoffload.ops import triton_kernels
    from vllm_kvoffload.scorers import KVGeometry, create_scorer

    g = torch.Generator().manual_seed(torch.seed() % 2**31)
    scorer = create_scorer("exact-topk-fp8", KVGeometry(Hkv, Hq, D, bs, torch.bfloat16))
    slots_total = sum(cold) + 3
    keys = (torch.randn(slots_total, Hkv, bs, D, generator=g) * 2).to(torch.bfloat16)
    summaries = scorer.summarize(keys).to(device)
    cold_slots = random_cold_slots(cold, slots_total, g).to(device)
    cold_lens = (torch.tensor(cold, dtype=torch.int32) * bs).to(device)
    query = torch.randn(B, Hq, D, generator=g).to(torch.bfloat16).to(device)
    k8, ks = scorer.keys_and_scales(summaries)
    mass = triton_kernels.score_mass(query, k8, ks, cold_slots, cold_lens, D ** -0.5,
                                     block_n=32 if INTERPRET else None).cpu()
    for b, n in enumerate(cold):
        assert torch.isneginf(mass[b, :, n * bs:]).all()
        if n:
            ref = scorer.score(query[b].cpu(), summaries[cold_slots[b, :n].long()].cpu(), D ** -0.5)
            assert rel_err(mass[b, :, :n * bs], ref) <= 1e-2


def test_score_mass_names_a_bad_widening(device):
    q, keys, slots, lens = make_inputs(1, 4, 4, 64, 16, 20, device, 0)
    keys, kscale = quantize_fp8_ref(keys)
    with pytest.raises(ValueError, match="fp8_widen='fp32'"):
        score_mass(q, keys, kscale, slots, lens, 0.125, fp8_widen="fp32")
