import pytest
import torch

from conftest import CUDA, INTERPRET

triton = pytest.importorskip("triton")

from vllm_kvoffload.ops.gather_ref import gather_ref  # noqa: E402
from vllm_kvoffload.ops.triton_kernels import gather_copy_engine, gather_uva  # noqa: E402

CASES = [(2, 3, 2, 16, 64, 50, 11), (3, 2, 1, 32, 128, 70, 40)]  # B, Hkv, L, bs, D, max_cold, K
if not INTERPRET:
    CASES += [(8, 8, 2, 16, 128, 5000, 300), (4, 4, 1, 32, 64, 999, 1000)]


def make_inputs(B, Hkv, L, bs, D, max_cold, K, device, seed, pool_dtype=torch.bfloat16):
    g = torch.Generator().manual_seed(seed)
    nblk = -(-max_cold // bs)
    S = B * nblk + 3
    host = (3 * torch.randn(S, L, 2, Hkv, bs, D, generator=g)).to(pool_dtype)
    if CUDA:
        host = host.pin_memory()
    slots = torch.randperm(S, generator=g)[: B * nblk].view(B, nblk).int()
    lens = torch.randint(0, max_cold + 1, (B,), generator=g)
    idx = torch.zeros(B, Hkv, K, dtype=torch.int32)
    cnt = torch.zeros(B, Hkv, dtype=torch.int32)
    for b in range(B):
        for h in range(Hkv):
            c = min(K, int(lens[b]), int(torch.randint(0, K + 1, (1,), generator=g)))
            idx[b, h, :c] = torch.randperm(int(lens[b]), generator=g)[:c].sort().values.int()
            cnt[b, h] = c
    return host, slots, idx.to(device), cnt.to(device)


# pool dtype and output dtype: an fp8 pool widened to bf16, or kept fp8 (the engine's device cache);
# where the two agree the zero-copy kernels move rows as 32-bit words
POOLS = {"bf16": (torch.bfloat16, torch.bfloat16), "fp8": (torch.float8_e4m3fn, torch.bfloat16),
         "fp8-kept": (torch.float8_e4m3fn, torch.float8_e4m3fn)}


def bits(x: torch.Tensor) -> torch.Tensor:
    """The raw bytes, so that outputs of any dtype compare bit for bit."""
    return x.contiguous().view(torch.uint8)


@pytest.mark.parametrize("B,Hkv,L,bs,D,max_cold,K", CASES)
@pytest.mark.parametrize("path", ["uva-tensor", "uva-int", "copy-engine"])
@pytest.mark.parametrize("pool", list(POOLS))
def test_gather(device, B, Hkv, L, bs, D, max_cold, K, path, pool):
    seed = torch.seed() % 2**31
    pool_dtype, out_dtype = POOLS[pool]
    host, slots, idx, cnt = make_inputs(B, Hkv, L, bs, D, max_cold, K, device, seed, pool_dtype)
    layer = L - 1
    ok = torch.full((B, Hkv, K, D), float("nan"), dtype=out_dtype, device=device)
    ov = torch.full_like(ok, float("nan"))
    if path == "copy-engine":
        _, _, stream = gather_copy_engine(host, layer, slots, idx, cnt, out_k=ok, out_v=ov)
        if stream is not None:
            torch.cuda.current_stream().wait_stream(stream)
    else:
        gather_uva(host, layer, slots.to(device), idx, cnt, out_k=ok, out_v=ov, mode=path[4:],
                   block_t=16 if INTERPRET else 32)
    rk, rv = gather_ref(host, layer, slots, idx, cnt, out_dtype=out_dtype)
    assert rk.dtype == out_dtype and rk.float().abs().max() > 0, seed
    valid = (torch.arange(K, device=device)[None, None, :] < cnt[:, :, None])[..., None]
    for out, ref in ((ok, rk), (ov, rv)):
        if path == "copy-engine":  # rows past counts unspecified
            out = torch.where(valid, out.float(), 0).to(out.dtype)
        assert not out.float().isnan().any(), seed
        assert torch.equal(bits(out), bits(ref)), seed


@pytest.mark.parametrize("B,Hkv,L,bs,D,max_cold,K", CASES)
@pytest.mark.parametrize("pool", list(POOLS))
def test_gather_cached(device, B, Hkv, L, bs, D, max_cold, K, pool):
    """Rows selected again come from the cache, the rest from the pool. The cache here holds
    values unlike the pool's, so a row read from the wrong side is caught."""
    from vllm_kvoffload.ops.gather_cached_ref import gather_cached_ref
    from vllm_kvoffload.ops.triton_kernels import gather_cached

    seed = torch.seed() % 2**31
    pool_dtype, out_dtype = POOLS[pool]
    host, slots, idx, cnt = make_inputs(B, Hkv, L, bs, D, max_cold, K, device, seed, pool_dtype)
    g = torch.Generator().manual_seed(seed + 1)
    # The previous step: one fewer row than now, in another order; row -1 is a new request.
    Bp, KP = max(1, B - 1), K + 3
    prev_row = torch.randperm(B, generator=g).int()
    prev_row = torch.where(prev_row >= Bp, -1, prev_row)
    pidx = torch.zeros(Bp, Hkv, KP, dtype=torch.int32)
    pcnt = torch.zeros(Bp, Hkv, dtype=torch.int32)
    planted = 0  # tokens kept from this step's selection: each must be a hit (random extras may hit too)
    for b in range(B):
        p = int(prev_row[b])
        for h in range(Hkv if p >= 0 else 0):
            now = idx[b, h, : int(cnt[b, h])].cpu()
            keep = now[torch.rand(now.numel(), generator=g) < 0.6]  # about 60% selected again
            other = torch.randint(0, max_cold + 50, (int(torch.randint(0, KP - keep.numel() + 1, (1,), generator=g)),),
                                  generator=g).int()
            both = torch.cat([keep, other]).unique()  # sorted, distinct, at most KP
            pidx[p, h, : both.numel()] = both
            planted += keep.numel()
            pcnt[p, h] = both.numel()
    pk = torch.randn(Bp, Hkv, KP, D, generator=g).to(out_dtype).to(device)
    pv = torch.randn(Bp, Hkv, KP, D, generator=g).to(out_dtype).to(device)
    prev = [t.to(device) for t in (prev_row, pidx, pcnt)]
    stats = torch.zeros(2, dtype=torch.int64, device=device)
    ok = torch.full((B, Hkv, K, D), float("nan"), dtype=out_dtype, device=device)
    ov = torch.full_like(ok, float("nan"))
    gather_cached(host, L - 1, slots.to(device), idx, cnt, *prev, pk, pv, stats, out_k=ok, out_v=ov,
                  block_t=16 if INTERPRET else 32)
    ref_stats = torch.zeros(2, dtype=torch.int64, device=device)
    rk, rv = gather_cached_ref(host, L - 1, slots, idx, cnt, *prev, pk, pv, ref_stats, out_dtype=out_dtype)
    assert not ok.float().isnan().any() and not ov.float().isnan().any(), seed
    assert torch.equal(bits(ok), bits(rk)) and torch.equal(bits(ov), bits(rv)), seed
    assert stats.tolist() == ref_stats.tolist(), seed
    assert ref_stats[0] >= planted and ref_stats[1] == int(cnt.sum()), seed
