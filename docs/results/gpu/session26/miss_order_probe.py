"""Probe (session 26): does the order in which the device cache's misses are read set their rate?
The engine at 128K read misses at ~800 us per layer whether 20% or 54% of the selection missed.
Here: a head-major fp8 pool (layers x K|V x 8 heads x slots x 16 tokens x 128 B) of POOL_GB, 8
requests holding contiguous slot ranges (as the engine's allocator gives them at startup), 3,900
sorted selected tokens per (request, KV head) of 130K, a share of them missing. Each variant reads
the missing tokens' K and V rows into a device buffer, one launch per layer, every layer in turn.
  masked-(t,b,h)  the fill's way: programs over tiles of 32 selected tokens, masked to the misses,
                  grid (tiles, B, Hkv) (heads slowest)
  packed-sorted   the misses packed, 32 per program, in address order (head, request, token)
  packed-random   the same list shuffled
  packed-(b,h)    packed per (request, head), grid (tiles, B, Hkv) like the fill
Prints us per layer and GB/s of the misses' bytes."""
import json, os, sys, torch, triton, triton.language as tl

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from probe_kernels import read_masked as _read_masked, timed  # noqa: E402

D_WORDS = 32  # 128-byte rows (fp8, head size 128) as int32 words


@triton.jit
def _read_packed(pool, rows_ptr, n, out, layer_off, s_kv, v_off, BLOCK: tl.constexpr, W: tl.constexpr):
    p = tl.program_id(0) + tl.program_id(1) * tl.num_programs(0) + tl.program_id(2) * tl.num_programs(0) * tl.num_programs(1)
    r = p * BLOCK + tl.arange(0, BLOCK)
    m = r < n
    src = layer_off + tl.load(rows_ptr + r, mask=m, other=0) * W
    w = tl.arange(0, W)
    k = tl.load(pool + src[:, None] + w[None, :], mask=m[:, None], other=0)
    v = tl.load(pool + s_kv + src[:, None] + w[None, :], mask=m[:, None], other=0)
    dst = r.to(tl.int64)[:, None] * W + w[None, :]
    tl.store(out + dst, k, mask=m[:, None])
    tl.store(out + v_off + dst, v, mask=m[:, None])


SMOKE = not torch.cuda.is_available()  # TRITON_INTERPRET=1 on CPU: tiny sizes
dev = "cpu" if SMOKE else "cuda"
GB = 2 ** 20 if SMOKE else 2 ** 30
POOL_GB = int(os.environ.get("POOL_GB", "16"))
B, H, BS, CTX, K = (8, 8, 16, 130_000, 3_900) if not SMOKE else (8, 8, 16, 1000, 50)
slots = POOL_GB * GB // (2 * H * BS * 128 * 8)  # 8 layers
L = 8
rows_per_region = slots * BS  # rows of one (layer, K|V, head)
pool = torch.empty(POOL_GB * GB // 4, dtype=torch.int32, pin_memory=not SMOKE)
pool.copy_(torch.arange(pool.numel(), dtype=torch.int32))
blocks = CTX // BS
assert B * blocks <= slots, (B * blocks, slots)
print("cpu" if SMOKE else torch.cuda.get_device_name(), f"pool {POOL_GB} GiB, {L} layers, {slots} slots; {B} requests x {H} heads x {K} of {CTX}", flush=True)
g = torch.Generator().manual_seed(0)
tok = torch.stack([torch.randperm(CTX, generator=g)[:K].sort().values for _ in range(B * H)]).view(B, H, K)
# request b holds slots [b * blocks, (b + 1) * blocks) (contiguous, in request order); row of (h, token)
# within a (layer, K|V) region: h * rows_per_region + slot * BS + token % BS
LAYOUT = os.environ.get("LAYOUT", "head-major")
if LAYOUT == "head-major":  # [layer, K|V, head, slot, token, D]: the token's V row 128 MB after its K row
    base = torch.tensor([[h * rows_per_region + b * blocks * BS for h in range(H)] for b in range(B)], dtype=torch.int64)
    tok_off = tok
    s_kv = H * rows_per_region * D_WORDS
elif LAYOUT == "kv-token":  # [layer, head, slot, token, K|V, D]: a token's K and V rows are one 256-byte run
    base = torch.tensor([[2 * (h * rows_per_region + b * blocks * BS) for h in range(H)] for b in range(B)], dtype=torch.int64)
    tok_off = 2 * tok
    s_kv = D_WORDS
else:  # "kv-inner": [layer, head, slot, K|V, token, D]: a block's K and V rows share one 4 KB page
    base = torch.tensor([[2 * (h * rows_per_region + b * blocks * BS) for h in range(H)] for b in range(B)], dtype=torch.int64)
    tok_off = (tok // BS) * 2 * BS + tok % BS
    s_kv = BS * D_WORDS
s_layer = 2 * H * rows_per_region * D_WORDS
print("layout", LAYOUT, flush=True)
results = []
for miss_rate in (0.1, 0.2, 0.55):
    miss = (torch.rand(B, H, K, generator=g) < miss_rate).to(torch.int32)
    rows = base[:, :, None] + tok_off  # [B, H, K]
    n = int(miss.sum())
    packed_bh = rows[miss.bool()]  # (b, h, token) order
    rows_hb = rows.transpose(0, 1)[miss.transpose(0, 1).bool()]  # (h, b, token): address order
    shuffled = rows_hb[torch.randperm(n, generator=g)]
    out = torch.empty(2 * B * H * K * D_WORDS, dtype=torch.int32, device=dev)
    tok_d, miss_d, base_d = tok_off.to(dev, torch.int32).contiguous(), miss.to(dev), base.to(dev)
    lists = {k: v.to(dev) for k, v in (("packed-sorted", rows_hb), ("packed-random", shuffled), ("packed-(b,h)", packed_bh))}

    def masked():
        for layer in range(L):
            _read_masked[(triton.cdiv(K, 32), B, H)](pool, tok_d, miss_d, base_d, out, layer * s_layer, s_kv, K, H, B * H * K * D_WORDS,
                                                     BLOCK=32, W=D_WORDS, num_warps=4)

    def packed(name):
        def run():
            for layer in range(L):
                _read_packed[(triton.cdiv(n, 32), 1, 1)](pool, lists[name], n, out, layer * s_layer, s_kv, B * H * K * D_WORDS,
                                                         BLOCK=32, W=D_WORDS, num_warps=4)
        return run

    for name, fn in (("masked-(t,b,h)", masked), ("packed-sorted", packed("packed-sorted")),
                     ("packed-random", packed("packed-random")), ("packed-(b,h)", packed("packed-(b,h)"))):
        if SMOKE:  # every variant reads the same rows of the last layer (K then V)
            out.zero_(); fn()
            got = out.view(2, -1, D_WORDS)[:, :, 0]
            r = (L - 1) * s_layer // D_WORDS + rows_hb.sort().values
            assert sorted(got[0][got[0] != 0].tolist()) == (r * D_WORDS).tolist(), name
            assert sorted(got[1][got[1] != 0].tolist()) == ((r + s_kv // D_WORDS) * D_WORDS).tolist(), name
            print(name, "ok"); continue
        us = timed(fn) / L
        gbs = n * 2 * 128 / us / 1e3
        results.append(dict(layout=LAYOUT, miss_rate=miss_rate, misses=n, variant=name, us_per_layer=us, gb_s=gbs))
        print(f"miss {miss_rate:4.2f} ({n:>6} misses x K,V)  {name:<16} {us:8.1f} us/layer  {gbs:6.1f} GB/s", flush=True)
if SMOKE: raise SystemExit
src = pool[: 256 * 2 ** 20 // 4]
dst = torch.empty_like(src, device=dev)
t = timed(lambda: dst.copy_(src, non_blocking=True))
print(f"H2D copy 256 MB: {t:.1f} us {src.numel() * 4 / t / 1e3:.1f} GB/s")
if os.environ.get("OUT"):
    json.dump(dict(device=torch.cuda.get_device_name(), pool_gb=POOL_GB, rows=results,
                   h2d_gb_s=src.numel() * 4 / t / 1e3), open(os.environ["OUT"] + f"/miss_order-{LAYOUT}.json", "w"), indent=1)
