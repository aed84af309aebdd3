"""What the GPU probe scripts under docs/results/gpu/ share: CUDA-event timing and the masked read of
a device cache's misses (session 26's model of the fill, `csrc_triton/gather.py::_inplace_fill`).
The probes import it with their folder's parent on sys.path."""
import torch
import triton
import triton.language as tl


@triton.jit
def read_masked(pool, tok_ptr, miss_ptr, base_ptr, out, layer_off, s_kv, K, Hkv, v_off, BLOCK: tl.constexpr,
                W: tl.constexpr):
    """Programs over tiles of BLOCK selected tokens of one (request, KV head), grid (tiles, B, Hkv),
    masked to the misses: the K row of each missing token at pool[layer_off + (base + token) x W]
    and its V row s_kv words later go to out (K) and out + v_off (V), at the token's place."""
    t = tl.program_id(0)
    b = tl.program_id(1)
    h = tl.program_id(2)
    j = t * BLOCK + tl.arange(0, BLOCK)
    jm = j < K
    off = (b * Hkv + h) * K
    m = jm & (tl.load(miss_ptr + off + j, mask=jm, other=0) != 0)
    row = tl.load(base_ptr + b * Hkv + h).to(tl.int64) + tl.load(tok_ptr + off + j, mask=m, other=0)
    src = layer_off + row * W
    w = tl.arange(0, W)
    k = tl.load(pool + src[:, None] + w[None, :], mask=m[:, None], other=0)
    v = tl.load(pool + s_kv + src[:, None] + w[None, :], mask=m[:, None], other=0)
    dst = (off + j).to(tl.int64)[:, None] * W + w[None, :]
    tl.store(out + dst, k, mask=m[:, None])
    tl.store(out + v_off + dst, v, mask=m[:, None])


def timed(fn, reps=9):
    """Median microseconds of ``reps`` calls after one warm-up (no L2 flush: the probes read more
    than L2 holds, and each layer's rows are new)."""
    fn()
    torch.cuda.synchronize()
    ts = []
    for _ in range(reps):
        s, e = torch.cuda.Event(True), torch.cuda.Event(True)
        s.record()
        fn()
        e.record()
        e.synchronize()
        ts.append(s.elapsed_time(e) * 1e3)
    return sorted(ts)[len(ts) // 2]
