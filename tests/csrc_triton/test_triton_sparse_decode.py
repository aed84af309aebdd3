import pytest
import torch

from conftest import INTERPRET, rel_err

triton = pytest.importorskip("triton")

from vllm_kvoffload.ops.sparse_decode_ref import sparse_decode_ref  # noqa: E402
from vllm_kvoffload.ops.triton_kernels import load, sparse_decode  # noqa: E402


def make_inputs(B, Hq, Hkv, D, bs, max_res, K, device, seed, with_valid=False, sel_dtype=torch.bfloat16):
    g = torch.Generator().manual_seed(seed)
    bf = torch.bfloat16
    res_lens = torch.randint(1, max_res + 1, (B,), generator=g, dtype=torch.int32)
    max_blocks = -(-max_res // bs)
    num_blocks = B * max_blocks + 3
    perm = torch.randperm(num_blocks, generator=g)[: B * max_blocks].view(B, max_blocks).int()
    kv = torch.randn(2, num_blocks, bs, Hkv, D, generator=g).to(bf)
    q = torch.randn(B, Hq, D, generator=g).to(bf)
    sk = torch.randn(B, Hkv, K, D, generator=g).to(sel_dtype)
    sv = torch.randn(B, Hkv, K, D, generator=g).to(sel_dtype)
    sel_lens = torch.randint(0, K + 1, (B, Hkv), generator=g, dtype=torch.int32)
    valid = (torch.rand(B, Hkv, K, generator=g) < 0.8) if with_valid else None
    to = lambda t: None if t is None else t.to(device)  # noqa: E731
    return [to(t) for t in (q, kv, perm, res_lens, sk, sv, sel_lens)], to(valid)


CASES = [  # B, Hq, Hkv, D, bs, max_res, K, chunk
    (2, 4, 4, 64, 16, 37, 21, None),    # GQA 1
    (3, 8, 2, 64, 32, 70, 45, 64),      # GQA 4, multi-chunk resident
    (2, 16, 2, 128, 16, 29, 77, 64),    # GQA 8, D 128, multi-chunk selected
    (1, 6, 3, 128, 32, 50, 0, None),    # no selected tokens
]
if not INTERPRET:
    CASES += [(8, 32, 8, 128, 16, 1000, 333, None), (5, 28, 4, 64, 32, 700, 130, 128), (4, 8, 8, 128, 16, 4099, 17, None)]


@pytest.mark.parametrize("B,Hq,Hkv,D,bs,max_res,K,chunk", CASES)
@pytest.mark.parametrize("with_valid", [False, True])
def test_sparse_decode(device, B, Hq, Hkv, D, bs, max_res, K, chunk, with_valid):
    for seed in (torch.seed() % 2**31, torch.seed() % 2**31):  # fresh inputs each run
        (q, kv, bt, rl, sk, sv, sl), valid = make_inputs(B, Hq, Hkv, D, bs, max_res, K, device, seed, with_valid)
        scale = D**-0.5
        out = torch.full_like(q, float("nan"))
        sparse_decode(q, kv, bt, rl, sk, sv, sl, scale, sel_valid=valid, out=out, chunk=chunk,
                      block_n=32 if INTERPRET else None)
        ref = sparse_decode_ref(q, kv, bt, rl, sk, sv, sl, scale, sel_valid=valid)
        assert not out.isnan().any(), f"seed {seed}"
        assert rel_err(out, ref) <= 1e-2, f"seed {seed}: {rel_err(out, ref)}"
        arrivals = load("_common")._BUFFERS.get(("arrivals", q.device))
        assert arrivals is None or not arrivals.any()  # every (request, KV head)'s last program reset its counter


@pytest.mark.parametrize("B,Hq,Hkv,D,bs,max_res,K,chunk", CASES[1:3])
def test_sparse_decode_widens_fp8_selections(device, B, Hq, Hkv, D, bs, max_res, K, chunk):
    """Selections gathered from an fp8 pool stay fp8 on the device; the kernel widens them to fp16
    as it loads them (exact) and runs their dots in fp16, so its result is at least about as close
    to the fp32 reference as attending over bf16-widened copies (bf16 probabilities)."""
    seed = torch.seed() % 2**31
    (q, kv, bt, rl, sk, sv, sl), _ = make_inputs(B, Hq, Hkv, D, bs, max_res, K, device, seed,
                                                 sel_dtype=torch.float8_e4m3fn)
    kwargs = dict(chunk=chunk, block_n=32 if INTERPRET else None)
    out = sparse_decode(q, kv, bt, rl, sk, sv, sl, D**-0.5, out=torch.full_like(q, float("nan")), **kwargs)
    widened = sparse_decode(q, kv, bt, rl, sk.bfloat16(), sv.bfloat16(), sl, D**-0.5, **kwargs)
    ref = sparse_decode_ref(q, kv, bt, rl, sk, sv, sl, D**-0.5)
    assert not out.isnan().any() and rel_err(out, ref) <= 1e-2, f"seed {seed}: {rel_err(out, ref)}"
    # the output's own bf16 rounding dominates both errors (about 4-5e-3); fp16 is 0.8-0.95x bf16
    assert rel_err(out, ref) <= 1.1 * rel_err(widened, ref), f"seed {seed}"


@pytest.mark.parametrize("pad", [1, 8])
def test_sparse_decode_reads_selections_whose_rows_are_not_16_aligned(device, pad):
    """Rows of sel_k/sel_v that start at odd element offsets (views into wider buffers) are read
    correctly: the kernel's vectorization hint comes from the strides (``row_align``)."""
    from csrc_triton._common import row_align

    B, Hq, Hkv, D, bs, max_res, K = 3, 8, 2, 64, 16, 40, 50
    seed = torch.seed() % 2**31
    for sel_dtype in (torch.bfloat16, torch.float8_e4m3fn):
        (q, kv, bt, rl, sk, sv, sl), _ = make_inputs(B, Hq, Hkv, D, bs, max_res, K, device, seed, sel_dtype=sel_dtype)
        wide_k = torch.zeros(B, Hkv, K, D + pad, device=device, dtype=sel_dtype)
        wide_v = torch.zeros_like(wide_k)
        wide_k[..., :D], wide_v[..., :D] = sk, sv
        vk, vv = wide_k[..., :D], wide_v[..., :D]
        assert row_align(vk) == (1 if pad == 1 else 8) and row_align(sk) == 16
        out = sparse_decode(q, kv, bt, rl, vk, vv, sl, D**-0.5, out=torch.full_like(q, float("nan")),
                            block_n=32 if INTERPRET else None)
        ref = sparse_decode_ref(q, kv, bt, rl, sk, sv, sl, D**-0.5)
        assert not out.isnan().any() and rel_err(out, ref) <= 1e-2, f"seed {seed} {sel_dtype}"


@pytest.mark.parametrize("B,Hq,Hkv,D,bs,max_res,K,chunk", CASES[1:3])
def test_sparse_decode_reads_each_request_s_row_of_the_selections(device, B, Hq, Hkv, D, bs, max_res, K, chunk):
    """sel_rows: request b attends to row sel_rows[b] of sel_k/sel_v (the in-place device cache,
    one row per request in any order, more rows than requests)."""
    seed = torch.seed() % 2**31
    (q, kv, bt, rl, sk, sv, sl), _ = make_inputs(B, Hq, Hkv, D, bs, max_res, K, device, seed)
    g = torch.Generator().manual_seed(seed)
    R = B + 2
    rows = torch.randperm(R, generator=g)[:B].int().to(device)
    big_k = torch.randn(R, Hkv, K, D, generator=g).to(sk.dtype).to(device)
    big_v = torch.randn(R, Hkv, K, D, generator=g).to(sk.dtype).to(device)
    big_k[rows.long()], big_v[rows.long()] = sk, sv
    out = sparse_decode(q, kv, bt, rl, big_k, big_v, sl, D**-0.5, out=torch.full_like(q, float("nan")), chunk=chunk,
                        block_n=32 if INTERPRET else None, sel_rows=rows)
    ref = sparse_decode_ref(q, kv, bt, rl, sk, sv, sl, D**-0.5)
    assert not out.isnan().any() and rel_err(out, ref) <= 1e-2, f"seed {seed}: {rel_err(out, ref)}"
    assert torch.equal(sparse_decode_ref(q, kv, bt, rl, big_k, big_v, sl, D**-0.5, sel_rows=rows), ref)


@pytest.mark.parametrize("B,Hq,Hkv,D,bs,max_res,K,chunk", CASES[1:3])
@pytest.mark.parametrize("sel_dtype", [torch.bfloat16, torch.float8_e4m3fn])
def test_sparse_decode_reads_the_selection_through_its_slots(device, B, Hq, Hkv, D, bs, max_res, K, chunk, sel_dtype):
    """sel_pos: selected token j of (b, h) sits at slot sel_pos[b, h, j] of row sel_rows[b] of a wider
    cache (the LRU device cache: C slots, in any order, the others holding other tokens)."""
    seed = torch.seed() % 2**31
    (q, kv, bt, rl, sk, sv, sl), _ = make_inputs(B, Hq, Hkv, D, bs, max_res, K, device, seed, sel_dtype=sel_dtype)
    g = torch.Generator().manual_seed(seed)
    R, C = B + 1, 3 * K + 1
    rows = torch.randperm(R, generator=g)[:B].int().to(device)
    big_k = torch.randn(R, Hkv, C, D, generator=g).to(sel_dtype).to(device)
    big_v = torch.randn(R, Hkv, C, D, generator=g).to(sel_dtype).to(device)
    pos = torch.stack([torch.stack([torch.randperm(C, generator=g)[:K] for _ in range(Hkv)]) for _ in range(B)])
    pos = pos.int().to(device)
    for b in range(B):
        for h in range(Hkv):
            big_k[rows[b].long(), h, pos[b, h].long()] = sk[b, h]
            big_v[rows[b].long(), h, pos[b, h].long()] = sv[b, h]
    out = sparse_decode(q, kv, bt, rl, big_k, big_v, sl, D**-0.5, out=torch.full_like(q, float("nan")), chunk=chunk,
                        block_n=32 if INTERPRET else None, sel_rows=rows, sel_pos=pos)
    ref = sparse_decode_ref(q, kv, bt, rl, sk, sv, sl, D**-0.5)
    assert not out.isnan().any() and rel_err(out, ref) <= 1e-2, f"seed {seed}: {rel_err(out, ref)}"
    assert torch.equal(sparse_decode_ref(q, kv, bt, rl, big_k, big_v, sl, D**-0.5, sel_rows=rows, sel_pos=pos), ref)


@pytest.mark.parametrize("B,Hq,Hkv,D,bs,max_res,K,chunk", CASES[:3])
@pytest.mark.parametrize("through_slots", [False, True])
def test_sparse_decode_reads_4bit_selections(device, B, Hq, Hkv, D, bs, max_res, K, chunk, through_slots):
    """4-bit selections (``ops/int4_ref.py``): the kernel unpacks each row's halves and
    scale as it loads them and matches the reference on the same packed rows, directly and through the
    LRU cache's rows and slots, with top-p's mask."""
    from vllm_kvoffload.ops.int4_ref import pack_int4_ref, unpack_int4_ref

    seed = torch.seed() % 2**31
    (q, kv, bt, rl, sk, sv, sl), valid = make_inputs(B, Hq, Hkv, D, bs, max_res, K, device, seed, with_valid=True)
    pk, pv = pack_int4_ref(sk.cpu()).to(device), pack_int4_ref(sv.cpu()).to(device)
    kwargs = dict(chunk=chunk, block_n=32 if INTERPRET else None, sel_valid=valid)
    ref = sparse_decode_ref(q, kv, bt, rl, pk, pv, sl, D**-0.5, sel_valid=valid)
    unpacked = [unpack_int4_ref(x, torch.bfloat16) for x in (pk, pv)]
    assert torch.equal(sparse_decode_ref(q, kv, bt, rl, *unpacked, sl, D**-0.5, sel_valid=valid), ref)
    if through_slots:  # R rows of C slots, request b's tokens at slots pos[b, h] of row rows[b]
        g = torch.Generator().manual_seed(seed)
        R, C = B + 1, 2 * K + 3
        rows = torch.randperm(R, generator=g)[:B].int().to(device)
        pos = torch.stack([torch.stack([torch.randperm(C, generator=g)[:K] for _ in range(Hkv)]) for _ in range(B)])
        big = [pack_int4_ref(torch.randn(R, Hkv, C, D, generator=g) * 5).to(device) for _ in range(2)]  # other tokens
        for b in range(B):
            for h in range(Hkv):
                big[0][rows[b].long(), h, pos[b, h].long()] = pk[b, h]
                big[1][rows[b].long(), h, pos[b, h].long()] = pv[b, h]
        out = sparse_decode(q, kv, bt, rl, *big, sl, D**-0.5, out=torch.full_like(q, float("nan")),
                            sel_rows=rows, sel_pos=pos.int().to(device), **kwargs)
    else:
        out = sparse_decode(q, kv, bt, rl, pk, pv, sl, D**-0.5, out=torch.full_like(q, float("nan")), **kwargs)
    assert not out.isnan().any() and rel_err(out, ref) <= 1e-2, f"seed {seed}: {rel_err(out, ref)}"
    exact = sparse_decode_ref(q, kv, bt, rl, sk, sv, sl, D**-0.5, sel_valid=valid)
    if int(sl.sum()) > 0:
        assert rel_err(exact, ref) > 1e-3, f"seed {seed}"  # four bits do round the selection
