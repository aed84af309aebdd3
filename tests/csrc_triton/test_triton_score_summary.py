"""The fused summary scorers (csrc_triton/score_summary.py: qlandmark, qlandmark-scalar, infinigen, lrqk) against
each scorer's own torch ``score``, one request at a time, on fresh random keys and paddings that
are not multiples of the tile (G = 7, rows without cold blocks, slots in random order)."""

import pytest
import torch

from conftest import CUDA, INTERPRET, random_cold_slots, rel_err

triton = pytest.importorskip("triton")

from vllm_kvoffload.ops import triton_kernels  # noqa: E402
from vllm_kvoffload.scorers import create_scorer  # noqa: E402
from vllm_kvoffload.scorers.base import KVGeometry  # noqa: E402

CASES = [  # B, Hq, Hkv, D, block_size, cold blocks per row
    (3, 8, 2, 64, 16, [5, 0, 3]),
    (2, 4, 4, 64, 32, [7, 2]),
    (2, 16, 2, 128, 16, [3, 1]),
]
if not INTERPRET:
    CASES += [(8, 32, 8, 128, 16, [301, 7, 0, 150, 299, 1, 64, 33]), (4, 28, 4, 64, 32, [1001, 3, 500, 77]),
              (2, 32, 8, 128, 16, [4200, 9])]  # rows of 64K tokens or more: qlandmark-scalar's long-row chunks


def make_case(name, B, Hq, Hkv, D, bs, cold, device):
    seed = torch.seed() % 2**31
    g = torch.Generator().manual_seed(seed)
    scorer = create_scorer(name, KVGeometry(num_kv_heads=Hkv, num_q_heads=Hq, head_dim=D, block_size=bs,
                                            dtype=torch.bfloat16))
    slots_total = sum(cold) + 4
    bias = torch.randn(Hkv, 1, D, generator=g) * 0.5  # keys with a per-head offset, like real ones
    keys = (torch.randn(slots_total, Hkv, bs, D, generator=g) * 2 + bias[None]).to(torch.bfloat16)
    summaries = scorer.summarize(keys.to(device))
    cold_slots = random_cold_slots(cold, slots_total, g)
    query = (torch.randn(B, Hq, D, generator=g) * 1.5).to(torch.bfloat16)
    cold_lens = torch.tensor(cold, dtype=torch.int32) * bs
    return scorer, query.to(device), summaries, cold_slots.to(device), cold_lens.to(device)


@pytest.mark.parametrize("name", ["qlandmark", "qlandmark-scalar", "infinigen", "lrqk"])
@pytest.mark.parametrize("B,Hq,Hkv,D,bs,cold", CASES)
def test_fused_summary_mass_matches_scorer(device, name, B, Hq, Hkv, D, bs, cold):
    scorer, query, summaries, cold_slots, cold_lens = make_case(name, B, Hq, Hkv, D, bs, cold, device)
    scale = D ** -0.5
    mass = scorer.fused_mass(triton_kernels, query, summaries, cold_slots, cold_lens, scale).cpu()
    assert mass.shape == (B, Hkv, cold_slots.shape[1] * bs) and not mass.isnan().any()
    for b, n in enumerate(cold):
        assert torch.isneginf(mass[b, :, n * bs:]).all()
        if n:
            ref = scorer.score(query[b], summaries[cold_slots[b, :n].long()], scale).cpu()
            assert rel_err(mass[b, :, :n * bs], ref) <= 1e-2, rel_err(mass[b, :, :n * bs], ref)
            torch.testing.assert_close(mass[b, :, :n * bs].sum(-1), torch.full((Hkv,), Hq / Hkv), rtol=1e-3,
                                       atol=1e-3)


@pytest.mark.parametrize("name", ["qlandmark", "qlandmark-scalar", "infinigen", "lrqk"])
def test_kernels_write_every_entry(device, name):
    """Poisoned outputs: every entry of ``out`` is written (a mass or -inf), never left NaN."""
    B, Hq, Hkv, D, bs, cold = 3, 8, 2, 64, 16, [4, 0, 2]
    scorer, query, summaries, cold_slots, cold_lens = make_case(name, B, Hq, Hkv, D, bs, cold, device)
    out = torch.full((B, Hkv, cold_slots.shape[1] * bs), float("nan"), device=device)
    if name == "qlandmark":
        from vllm_kvoffload.scorers.qlandmark import CODES, VEC, gaussian_codebook, hadamard
        q_rot = query.float() @ hadamard(D, device)
        triton_kernels.qlandmark_mass(q_rot, summaries, gaussian_codebook(VEC, CODES, device=device), cold_slots,
                                      cold_lens, D ** -0.5, out=out)
    elif name == "qlandmark-scalar":
        from vllm_kvoffload.scorers.qlandmark import UNIFORM_STEP
        triton_kernels.qscalar_mass(scorer.rotated(query), summaries, UNIFORM_STEP, cold_slots, cold_lens, D ** -0.5,
                                    out=out)
    elif name == "infinigen":
        triton_kernels.infinigen_mass(query, summaries, cold_slots, cold_lens, D ** -0.5, out=out)
    else:
        triton_kernels.lrqk_mass(query, summaries, 8, cold_slots, cold_lens, D ** -0.5, out=out)
    assert not out.isnan().any()
    assert torch.isneginf(out[1]).all() and torch.isfinite(out[0]).all()


def test_small_blocks_are_refused_with_the_reason(device):
    scorer, query, summaries, cold_slots, cold_lens = make_case("infinigen", 1, 4, 2, 64, 8, [3], device)
    with pytest.raises(ValueError, match="block_size >= 16, got head_dim=64, block_size=8"):
        triton_kernels.infinigen_mass(query, summaries, cold_slots, cold_lens, 0.125)


@pytest.mark.skipif(not CUDA, reason="the scorers pick the fused kernel on CUDA tensors only")
@pytest.mark.parametrize("name", ["qlandmark", "qlandmark-scalar", "infinigen", "lrqk"])
def test_score_batched_uses_the_kernel_on_cuda(name, monkeypatch):
    scorer, query, summaries, cold_slots, cold_lens = make_case(name, 2, 8, 2, 64, 16, [3, 2], "cuda")
    calls = []
    kernel = "qscalar_mass" if name == "qlandmark-scalar" else f"{name}_mass"
    real = getattr(triton_kernels, kernel)
    monkeypatch.setattr(triton_kernels, kernel, lambda *a, **k: calls.append(1) or real(*a, **k))
    scorer.score_batched(query, summaries, cold_slots, cold_lens, 0.125)
    assert calls == [1]


def test_qlandmark_codebook_in_program_equals_global_gathers(device):
    """The two ways to read the codebook (held by the program, or gathered from memory per code)."""
    B, Hq, Hkv, D, bs, cold = 2, 8, 2, 64, 16, [6, 3]
    scorer, query, summaries, cold_slots, cold_lens = make_case("qlandmark", B, Hq, Hkv, D, bs, cold, device)
    from vllm_kvoffload.scorers.qlandmark import CODES, VEC, gaussian_codebook, hadamard
    args = (query.float() @ hadamard(D, device), summaries, gaussian_codebook(VEC, CODES, device=device),
            cold_slots, cold_lens, D ** -0.5)
    local = triton_kernels.qlandmark_mass(*args, local_cb=True)
    gathered = triton_kernels.qlandmark_mass(*args, local_cb=False, block_n=32)
    torch.testing.assert_close(local, gathered, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("block_n", [16, 64])
def test_qscalar_level_decodings_agree(device, block_n):
    """qlandmark-scalar's ways to turn 2-bit levels into dot operands: fp16 conversion and
    fp16 bit patterns compute the same logits (up to fp32 rounding); the int8 ones nearly so, as
    the scorer's query is already on int8 steps (the fp16 ones round it to 11 bits); the
    packed int8 decoding (inline PTX on the GPU) computes exactly what the plain int8 one does."""
    B, Hq, Hkv, D, bs, cold = 3, 12, 3, 128, 16, [9, 4, 0]
    scorer, query, summaries, cold_slots, cold_lens = make_case("qlandmark-scalar", B, Hq, Hkv, D, bs, cold, device)
    from vllm_kvoffload.scorers.qlandmark import UNIFORM_STEP
    args = (scorer.rotated(query), summaries, UNIFORM_STEP, cold_slots, cold_lens, D ** -0.5)
    fp16, bits, int8, packed = (triton_kernels.qscalar_mass(*args, decode=d, block_n=block_n,
                                                            logits_dtype=torch.float32).cpu()
                                for d in (0, 1, 2, 3))
    valid = torch.isfinite(fp16)
    assert torch.equal(valid, torch.isfinite(bits)) and torch.equal(valid, torch.isfinite(int8))
    assert rel_err(bits[valid], fp16[valid]) <= 1e-4
    assert rel_err(int8[valid], fp16[valid]) <= 1e-3
    assert torch.equal(packed, int8)


@pytest.mark.parametrize("B,Hq,Hkv,D,bs,cold", CASES + [(2, 4, 2, 64, 16, [3, 2]), (2, 32, 2, 128, 16, [2, 3])])
def test_qscalar_token_major_equals_the_dot_rows(device, B, Hq, Hkv, D, bs, cold):
    """The token-major dot (tokens on M, head g in column 2g, the epilogue on the heads' lanes)
    computes what the dot with the heads on its 16 padded rows computes, for groups of 4, 1, 8, 7,
    2 and 16 heads (16: 32 columns) and every decoding the head size allows."""
    scorer, query, summaries, cold_slots, cold_lens = make_case("qlandmark-scalar", B, Hq, Hkv, D, bs, cold, device)
    from vllm_kvoffload.scorers.qlandmark import UNIFORM_STEP
    args = (scorer.rotated(query), summaries, UNIFORM_STEP, cold_slots, cold_lens, D ** -0.5)
    fp32 = dict(logits_dtype=torch.float32)  # the layouts' sums are compared, not fp16's roundings of them
    for decode in (1, 3) if D >= 128 else (1,):
        padded = triton_kernels.qscalar_mass(*args, decode=decode, token_major=False, **fp32).cpu()
        tokens = triton_kernels.qscalar_mass(*args, decode=decode, token_major=True, **fp32).cpu()
        valid = torch.isfinite(padded)
        assert torch.equal(valid, torch.isfinite(tokens)) and not tokens.isnan().any()
        torch.testing.assert_close(tokens[valid], padded[valid], rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("B,Hq,Hkv,D,bs,cold", CASES[:3])
def test_qscalar_fp16_logits_match_fp32(device, B, Hq, Hkv, D, bs, cold):
    """The first pass's logits rounded to fp16 in the workspace (the default) give the masses of fp32
    logits to within fp16's rounding of a log2-scaled logit (at most 2^-11 of it, relative)."""
    scorer, query, summaries, cold_slots, cold_lens = make_case("qlandmark-scalar", B, Hq, Hkv, D, bs, cold, device)
    from vllm_kvoffload.scorers.qlandmark import UNIFORM_STEP
    args = (scorer.rotated(query), summaries, UNIFORM_STEP, cold_slots, cold_lens, D ** -0.5)
    wide = triton_kernels.qscalar_mass(*args, logits_dtype=torch.float32).cpu()
    half = triton_kernels.qscalar_mass(*args, logits_dtype=torch.float16).cpu()
    valid = torch.isfinite(wide)
    assert torch.equal(valid, torch.isfinite(half)) and not half.isnan().any()
    assert 0 < rel_err(half[valid], wide[valid]) <= 2e-3, rel_err(half[valid], wide[valid])


def test_qscalar_refuses_a_summary_of_the_wrong_width(device):
    scorer, query, summaries, cold_slots, cold_lens = make_case("qlandmark-scalar", 1, 4, 2, 64, 16, [2], device)
    with pytest.raises(ValueError, match="got 287 for head_dim=64"):
        triton_kernels.qscalar_mass(scorer.rotated(query), summaries[..., :-1], 1.0, cold_slots, cold_lens, 0.125)
    with pytest.raises(ValueError, match="decode=4: accepted 0, 1, 2, 3"):
        triton_kernels.qscalar_mass(scorer.rotated(query), summaries, 1.0, cold_slots, cold_lens, 0.125, decode=4)
    with pytest.raises(ValueError, match="decode=3 .int8 dots. needs head_dim >= 128, got head_dim=64"):
        triton_kernels.qscalar_mass(scorer.rotated(query), summaries, 1.0, cold_slots, cold_lens, 0.125, decode=3)


@pytest.mark.parametrize("nb,Hkv,bs,D", [(5, 2, 16, 64), (3, 4, 32, 128), (0, 2, 16, 64)])
def test_quantize_2bit_planar_matches_the_scorers_reference(device, nb, Hkv, bs, D):
    """The GPU summarize of qlandmark-scalar against its torch path, on a strided view like the
    paged cache's: the same bytes, but for codes whose rotated value lies within rounding of a
    level boundary (fp32 sums in another order), and bf16 scales at most one ulp apart."""
    scorer = create_scorer("qlandmark-scalar", KVGeometry(Hkv, 2 * Hkv, D, bs, torch.bfloat16))
    g = torch.Generator().manual_seed(torch.seed() % 2**31)
    paged = (torch.randn(nb, bs, Hkv, D, generator=g) * 2 + torch.randn(D, generator=g)).to(torch.bfloat16)
    keys = paged.transpose(1, 2)  # [nb, Hkv, bs, D], not contiguous
    ref = scorer.summarize(keys)
    from vllm_kvoffload.scorers.qlandmark import UNIFORM_STEP, hadamard
    out = triton_kernels.quantize_2bit_planar(keys.to(device), hadamard(D, device), UNIFORM_STEP).cpu()
    assert out.shape == ref.shape == (nb, *scorer.summary_spec()[0]) and out.dtype == torch.uint8
    ref_codes, ref_scale = scorer.codes_and_scales(ref)
    codes, scale = scorer.codes_and_scales(out)
    if nb:
        assert (codes != ref_codes).float().mean() <= 2e-3
        assert (scale != ref_scale).float().mean() <= 1e-2
        torch.testing.assert_close(scale.float(), ref_scale.float(), rtol=8e-3, atol=0)
