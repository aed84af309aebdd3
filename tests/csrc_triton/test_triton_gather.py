import pytest
import torch

from conftest import CUDA, INTERPRET

triton = pytest.importorskip("triton")

from vllm_kvoffload.host_pool import HostPool  # noqa: E402
from vllm_kvoffload.ops.int4_ref import INT4, row_bytes  # noqa: E402
from vllm_kvoffload.ops.gather_ref import gather_ref  # noqa: E402
from vllm_kvoffload.ops.triton_kernels import gather_copy_engine, gather_uva  # noqa: E402

CASES = [(2, 3, 2, 16, 64, 50, 11), (3, 2, 1, 32, 128, 70, 40)]  # B, Hkv, L, bs, D, max_cold, K
if not INTERPRET:
    CASES += [(8, 8, 2, 16, 128, 5000, 300), (4, 4, 1, 32, 64, 999, 1000)]


def make_inputs(B, Hkv, L, bs, D, max_cold, K, device, seed, pool_dtype=torch.bfloat16, as_host_pool=True,
                memory="pinned"):
    """as_host_pool: the pool laid out as HostPool does (head-major, in ``memory``'s pages); else
    contiguous (slot-major)."""
    g = torch.Generator().manual_seed(seed)
    nblk = -(-max_cold // bs)
    S = B * nblk + 3
    if pool_dtype == INT4:  # packed 4-bit rows: the gathers move them as bytes, whatever they hold
        values = torch.randint(0, 256, (S, L, 2, Hkv, bs, row_bytes(D)), generator=g, dtype=torch.uint8)
    else:
        values = (3 * torch.randn(S, L, 2, Hkv, bs, D, generator=g)).to(pool_dtype)
    if as_host_pool and pool_dtype == INT4:  # packed rows in HostPool's layout (its own rows: split_scales)
        from vllm_kvoffload.host_memory import host_empty

        host = host_empty((L, Hkv, S, 2, bs, values.shape[-1]), INT4, CUDA, memory).permute(2, 0, 3, 1, 4, 5)
        host.copy_(values)
    elif as_host_pool:
        host = HostPool.kv_tensor(S, L, Hkv, bs, D, pool_dtype, pin=CUDA, memory=memory)
        host.copy_(values)
    else:
        host = values.pin_memory() if CUDA else values
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
         "fp8-kept": (torch.float8_e4m3fn, torch.float8_e4m3fn),
         "int4-rows": (INT4, INT4),  # D/2 + 4 bytes per row, kept packed in the device cache
         "int4-scales": (INT4, INT4)}  # the same rows, their scales apart in device memory (split_scales)


def split_scales(host, device):
    """A pool of packed 4-bit rows [..., D/2 + 4] as (nibble rows [..., D/2] on the host, in the same
    layout, pinned on GPU hosts; the rows' fp32 scales [S, L, 2, Hkv, BS] on the device)."""
    from vllm_kvoffload.host_memory import host_empty

    S, L, two, H, BS, W = host.shape
    if host.is_contiguous():
        nibbles = host_empty((S, L, two, H, BS, W - 4), host.dtype, CUDA, "pinned")
    else:  # HostPool's head-major layout
        nibbles = host_empty((L, H, S, two, BS, W - 4), host.dtype, CUDA, "pinned").permute(2, 0, 3, 1, 4, 5)
    nibbles.copy_(host[..., :-4])
    return nibbles, host[..., -4:].contiguous().view(torch.float32)[..., 0].to(device)


def for_kernels(host, pool, device):
    """(the pool the kernels read, its scales or None, its rows' width in the outputs)."""
    if pool != "int4-scales":
        return host, None, host.shape[-1]
    nibbles, scales = split_scales(host, device)
    return nibbles, scales, host.shape[-1]


def poisoned(shape, dtype, device):
    """A buffer whose every element differs from what a kernel writes: NaN, or 0xAB bytes for packed rows."""
    if dtype == INT4:
        return torch.full(shape, 0xAB, dtype=dtype, device=device)
    return torch.full(shape, float("nan")).to(dtype).to(device)


def bits(x: torch.Tensor) -> torch.Tensor:
    """The raw bytes, so that outputs of any dtype compare bit for bit."""
    return x.contiguous().view(torch.uint8)


@pytest.mark.parametrize("B,Hkv,L,bs,D,max_cold,K", CASES)
@pytest.mark.parametrize("path", ["uva-tensor", "uva-int", "copy-engine"])
@pytest.mark.parametrize("pool", list(POOLS))
@pytest.mark.parametrize("as_host_pool", [True, False], ids=["head-major", "slot-major"])
def test_gather(device, B, Hkv, L, bs, D, max_cold, K, path, pool, as_host_pool):
    seed = torch.seed() % 2**31
    pool_dtype, out_dtype = POOLS[pool]
    host, slots, idx, cnt = make_inputs(B, Hkv, L, bs, D, max_cold, K, device, seed, pool_dtype, as_host_pool)
    assert host.is_contiguous() != as_host_pool
    if pool == "int4-scales" and path == "copy-engine":
        pytest.skip("the copy engine does not take a 4-bit pool's scales apart (not built)")
    src, scales, width = for_kernels(host, pool, device)
    layer = L - 1
    ok = poisoned((B, Hkv, K, width), out_dtype, device)
    ov = poisoned((B, Hkv, K, width), out_dtype, device)
    if path == "copy-engine":
        _, _, stream = gather_copy_engine(host, layer, slots, idx, cnt, out_k=ok, out_v=ov)
        if stream is not None:
            torch.cuda.current_stream().wait_stream(stream)
    else:
        gather_uva(src, layer, slots.to(device), idx, cnt, out_k=ok, out_v=ov, mode=path[4:],
                   block_t=16 if INTERPRET else 32, scales=scales)
    rk, rv = gather_ref(host, layer, slots, idx, cnt, out_dtype=out_dtype)  # (4-bit: the packed rows, scales in)
    if scales is not None:  # the reference with the scales apart gives the packed rows too
        for a, b_ in zip(gather_ref(src, layer, slots, idx, cnt, out_dtype=out_dtype, scales=scales), (rk, rv)):
            assert torch.equal(bits(a), bits(b_)), seed
    assert rk.dtype == out_dtype and rk.float().abs().max() > 0, seed
    valid = (torch.arange(K, device=device)[None, None, :] < cnt[:, :, None])[..., None]
    for out, ref in ((ok, rk), (ov, rv)):
        if path == "copy-engine":  # rows past counts unspecified
            out = torch.where(valid, out.float(), 0).to(out.dtype)
        assert not out.float().isnan().any(), seed
        assert torch.equal(bits(out), bits(ref)), seed


@pytest.mark.parametrize("pool", ["bf16", "fp8-kept"])
def test_gather_from_huge_pages(device, pool):
    """The pool in 2 MiB pages locked with cudaHostRegister (host_memory.py) is read by the zero-copy
    kernel as the pinned one is."""
    seed = torch.seed() % 2**31
    pool_dtype, out_dtype = POOLS[pool]
    B, Hkv, L, bs, D, max_cold, K = CASES[-1]
    host, slots, idx, cnt = make_inputs(B, Hkv, L, bs, D, max_cold, K, device, seed, pool_dtype, memory="hugepages")
    assert host.data_ptr() % (2 * 2**20) == 0 and host.is_pinned() == CUDA
    ok = torch.full((B, Hkv, K, D), float("nan"), dtype=out_dtype, device=device)
    ov = torch.full_like(ok, float("nan"))
    gather_uva(host, L - 1, slots.to(device), idx, cnt, out_k=ok, out_v=ov, block_t=16 if INTERPRET else 32)
    rk, rv = gather_ref(host, L - 1, slots, idx, cnt, out_dtype=out_dtype)
    assert rk.float().abs().max() > 0, seed
    assert torch.equal(bits(ok), bits(rk)) and torch.equal(bits(ov), bits(rv)), seed


def next_selection(idx, cnt, max_cold, g, keep_share=0.6):
    """Another step's selection: about keep_share of each (request, KV head)'s tokens again, the rest
    new, the same count (as a fixed budget gives), ascending."""
    nidx = torch.zeros_like(idx)
    for b in range(idx.shape[0]):
        for h in range(idx.shape[1]):
            n = int(cnt[b, h])
            now = idx[b, h, :n]
            keep = now[torch.rand(n, generator=g) < keep_share]
            rest = torch.tensor([t for t in torch.randperm(max_cold, generator=g).tolist() if t not in set(keep.tolist())])
            both = torch.cat([keep, rest[: n - keep.numel()].int()]).sort().values
            nidx[b, h, :n] = both
    return nidx


@pytest.mark.parametrize("B,Hkv,L,bs,D,max_cold,K", CASES)
@pytest.mark.parametrize("pool", ["bf16", "fp8-kept", "int4-rows", "int4-scales"])
@pytest.mark.parametrize("block_t", [16, 32])  # 16 rows of 4 warps: values replicated across warps
def test_gather_inplace(device, B, Hkv, L, bs, D, max_cold, K, pool, block_t):
    """Three steps of the in-place device cache against its reference, bit for bit: a first step
    (fresh rows: every token read into slot j), then two with about 60% of each selection kept,
    the batch reordered, one request new (fresh) and one (request, KV head) whose count changed.
    After each step the slots [0, count) of every row hold exactly its selected tokens' pool rows."""
    from vllm_kvoffload.ops.gather_inplace_ref import gather_inplace_ref
    from vllm_kvoffload.ops.gather_ref import gather_ref
    from vllm_kvoffload.ops.triton_kernels import gather_inplace

    seed = torch.seed() % 2**31
    pool_dtype, _ = POOLS[pool]
    host, slots, idx, cnt = make_inputs(B, Hkv, L, bs, D, max_cold, K, device, seed, pool_dtype)
    src, scales, width = for_kernels(host, pool, device)
    lens_ok = max_cold  # every cold index below max_cold is a valid token of the pool
    g = torch.Generator().manual_seed(seed + 1)
    R, KC = B + 2, K + 5
    rows = torch.randperm(R, generator=g)[:B].int()
    fresh = torch.ones(B, dtype=torch.int32)

    def state():
        cache = [poisoned((R, Hkv, KC, width), pool_dtype, device) for _ in range(2)]
        index = [[torch.zeros(R, Hkv, KC, dtype=torch.int32, device=device) for _ in range(2)] for _ in range(2)]
        counts = [torch.zeros(R, Hkv, dtype=torch.int32, device=device) for _ in range(2)]
        return cache, index, counts
    mine, ref = state(), state()
    stats = torch.zeros(2, dtype=torch.int64, device=device)
    ref_stats = torch.zeros(2, dtype=torch.int64, device=device)
    for step in range(3):
        p = step % 2  # this step's parity: reads 1 - p, writes p
        args = lambda s: (s[1][0][1 - p], s[1][1][1 - p], s[2][1 - p], s[1][0][p], s[1][1][p], s[2][p],  # noqa: E731
                          s[0][0], s[0][1])
        common = (src, L - 1, slots.to(device), idx, cnt, rows.to(device), fresh.to(device))
        gather_inplace(*common, *args(mine), stats, block_t=block_t, scales=scales)
        gather_inplace_ref(*common, *args(ref), ref_stats, scales)
        for a, b_ in zip(args(mine)[3:], args(ref)[3:]):
            assert torch.equal(bits(a), bits(b_)), (seed, step)
        assert stats.tolist() == ref_stats.tolist(), (seed, step)
        want_k, want_v = (x.cpu() for x in gather_ref(host, L - 1, slots, idx, cnt))
        for b in range(B):  # slots [0, n) hold the selection's rows, in its slot order
            r = int(rows[b])
            for h in range(Hkv):
                n = int(cnt[b, h])
                pos = mine[1][1][p][r, h, :n].long().cpu()
                assert sorted(pos.tolist()) == list(range(n)), (seed, step)
                assert torch.equal(bits(mine[0][0][r, h][pos].cpu()), bits(want_k[b, h, :n])), (seed, step)
                assert torch.equal(bits(mine[0][1][r, h][pos].cpu()), bits(want_v[b, h, :n])), (seed, step)
        # the next step: the same requests in another order, one new; about 60% kept
        idx = next_selection(idx.cpu(), cnt.cpu(), lens_ok, g).to(device)
        order = torch.randperm(B, generator=g)
        idx, cnt, rows = idx[order], cnt[order].clone(), rows[order]
        fresh = torch.zeros(B, dtype=torch.int32)
        if B > 1:  # the last one a new request, in a row no one had
            rows = rows.clone()
            rows[-1] = next(r for r in range(R) if r not in rows.tolist())
            fresh[-1] = 1
        if int(cnt[0, 0]) > 1:  # one (request, KV head) selects one token fewer (then all are read)
            cnt[0, 0] -= 1
        for h in range(1, Hkv):  # and its other heads select up to two more (a grown budget: new slots)
            n = int(cnt[0, h])
            extra = [t for t in range(max_cold) if t not in set(idx[0, h, :n].tolist())][: min(2, K - n)]
            if extra:
                grown = torch.cat([idx[0, h, :n].cpu(), torch.tensor(extra, dtype=torch.int32)]).sort().values
                idx[0, h, : n + len(extra)] = grown.to(device)
                cnt[0, h] = n + len(extra)
        slots = slots[order]
    assert ref_stats[0] > 0 or cnt.sum() < 8, seed  # some hits across steps 2-3


LRU_CASES = [(2, 3, 2, 16, 64, 50, 11, 3), (3, 2, 1, 32, 128, 70, 40, 2), (2, 2, 1, 16, 64, 1500, 600, 4)]  # ..., K, M (C = M * K + 3)
if not INTERPRET:
    LRU_CASES += [(8, 8, 2, 16, 128, 5000, 300, 4), (4, 4, 1, 32, 64, 3000, 1000, 3)]


@pytest.mark.parametrize("B,Hkv,L,bs,D,max_cold,K,M", LRU_CASES)
@pytest.mark.parametrize("pool", ["bf16", "fp8-kept", "int4-rows", "int4-scales"])
def test_gather_lru(device, B, Hkv, L, bs, D, max_cold, K, M, pool):
    """Six steps of the LRU device cache against its reference, every array bit for bit: a first step
    (fresh rows), then steps that keep about 60% of each selection (so evicted tokens come back), the
    batch reordered, a new request (fresh) in the row another one had, then one in a row nobody has, and
    counts that change.
    After each step every selected token's slot holds its pool row."""
    from vllm_kvoffload.ops.gather_lru_ref import EMPTY, gather_lru_ref
    from vllm_kvoffload.ops.triton_kernels import gather_lru

    seed = torch.seed() % 2**31
    pool_dtype, _ = POOLS[pool]
    host, slots, idx, cnt = make_inputs(B, Hkv, L, bs, D, max_cold, K, device, seed, pool_dtype)
    src, scales, width = for_kernels(host, pool, device)
    g = torch.Generator().manual_seed(seed + 1)
    R, C = B + 2, M * K + 3  # a width that is no multiple of the kernels' tiles
    T = slots.shape[1] * bs + 5
    rows = torch.randperm(R, generator=g)[:B].int()
    fresh = torch.ones(B, dtype=torch.int32)

    def state():
        i32 = dict(dtype=torch.int32, device=device)
        return dict(slot_of=torch.zeros(R, Hkv, T, **i32), token_at=torch.full((R, Hkv, C), -1, **i32),
                    used_at=torch.full((R, Hkv, C), EMPTY, **i32), clock=torch.zeros(R, Hkv, **i32),
                    cache_k=poisoned((R, Hkv, C, width), pool_dtype, device),
                    cache_v=poisoned((R, Hkv, C, width), pool_dtype, device),
                    stats=torch.zeros(2, dtype=torch.int64, device=device))
    mine, ref = state(), state()
    for step in range(6):
        common = (src, L - 1, slots.to(device), idx, cnt, rows.to(device), fresh.to(device))
        pos = {}
        for name, s, fn in (("mine", mine, gather_lru), ("ref", ref, gather_lru_ref)):
            pos[name] = torch.full((B, Hkv, K), -9, dtype=torch.int32, device=device)
            fn(*common, s["slot_of"], s["token_at"], s["used_at"], s["clock"], pos[name], s["cache_k"], s["cache_v"],
               s["stats"], scales=scales)
        for key in mine:
            assert torch.equal(bits(mine[key]), bits(ref[key])), (seed, step, key)
        want_k, want_v = (x.cpu() for x in gather_ref(host, L - 1, slots, idx, cnt))
        for b in range(B):
            r = int(rows[b])
            for h in range(Hkv):
                n = int(cnt[b, h])
                p = pos["mine"][b, h, :n].long().cpu()
                assert torch.equal(p, pos["ref"][b, h, :n].long().cpu()), (seed, step)
                assert torch.equal(bits(mine["cache_k"][r, h].cpu()[p]), bits(want_k[b, h, :n])), (seed, step)
                assert torch.equal(bits(mine["cache_v"][r, h].cpu()[p]), bits(want_v[b, h, :n])), (seed, step)
        idx = next_selection(idx.cpu(), cnt.cpu(), max_cold, g).to(device)
        order = torch.randperm(B, generator=g)
        idx, cnt, rows, slots = idx[order], cnt[order].clone(), rows[order], slots[order]
        fresh = torch.zeros(B, dtype=torch.int32)
        if step == 2:  # a new request in the row the last one had: that one's tokens must not hit
            fresh[-1] = 1
        if B > 1 and step == 4:  # a new request in a row nobody has now
            rows = rows.clone()
            rows[-1] = next(r for r in range(R) if r not in rows.tolist())
            fresh[-1] = 1
        if int(cnt[0, 0]) > 1:
            cnt[0, 0] -= 1
    assert ref["stats"][0] > 0, seed  # tokens came back
