"""Sparse decode (fused merge, 3 stages): chunk per program at more batch sizes, fp8 selections, plus bf16 at one shape (experiment)."""
import sys, json, os
sys.path.insert(0, "examples")
import torch
from gpu_kernels import sweep_setup, timeit, rel_err, HBM_PEAK
from vllm_kvoffload.ops.triton_kernels import load
from vllm_kvoffload.ops.sparse_decode_ref import sparse_decode_ref
gen, flush = sweep_setup("x", "x")
sd = load("sparse_decode")
HQ, HKV, D, BS = 32, 8, 128, 16
SHAPES = [(f"32K 3% x{B}", B, 288, 983, 1024, "fp8") for B in (1, 4, 8, 16, 32)] + \
         [(f"128K 3% x{B}", B, 288, 3900, 3904, "fp8") for B in (1, 2, 4, 8)] + \
         [("32K 6% x32", 32, 288, 1966, 1968, "fp8"), ("128K 1.5% x8", 8, 288, 1950, 1952, "fp8"),
          ("128K 6% x8", 8, 288, 7800, 7808, "fp8"), ("32K 3% x32 bf16", 32, 288, 983, 1024, "bf16")]
CHUNKS = [0, 128, 256, 384, 512, 640, 768, 1024, 1536, 2048]
rows, summary = [], []
for name, B, RES, CNT, CAP, dt in SHAPES:
    blocks = -(-RES // BS)
    kv = torch.randn(2, B * blocks + 5, BS, HKV, D, device="cuda", generator=gen).bfloat16()
    table = torch.randperm(B * blocks + 5, device="cuda", generator=gen)[: B * blocks].view(B, blocks).int()
    res_lens = torch.full((B,), RES, dtype=torch.int32, device="cuda")
    q = torch.randn(B, HQ, D, device="cuda", generator=gen).bfloat16()
    sdt = torch.float8_e4m3fn if dt == "fp8" else torch.bfloat16
    sk = torch.randn(B, HKV, CAP, D, device="cuda", generator=gen).to(sdt)
    sv = torch.randn(B, HKV, CAP, D, device="cuda", generator=gen).to(sdt)
    counts = torch.full((B, HKV), CNT, dtype=torch.int32, device="cuda")
    scale = D ** -0.5
    ref = sparse_decode_ref(q, kv, table, res_lens, sk, sv, counts, scale)
    nbytes = sd.bytes_touched(q, kv, res_lens, sk, counts)
    src = torch.empty(nbytes // 2, dtype=torch.int8, device="cuda"); dst = torch.empty_like(src)
    t_copy = timeit(lambda: dst.copy_(src), 30, flush)
    plan = sd.plan(B, HKV, blocks * BS, CAP, q.device, 64)
    res = {}
    for chunk in CHUNKS:
        for stages in ((2, 3) if chunk == 0 else (3,)):
            o = torch.full_like(q, float("nan"))
            run = lambda: sd.sparse_decode(q, kv, table, res_lens, sk, sv, counts, scale, out=o, chunk=chunk or None, num_stages=stages)
            run(); torch.cuda.synchronize()
            err = rel_err(o, ref); ok = err <= 1e-2 and not o.isnan().any().item()
            t = timeit(run, 40, flush)
            res[(chunk, stages)] = t * 1e6
            rows.append(dict(shape=name, B=B, chunk=chunk or plan, plan=chunk == 0, stages=stages, us=t * 1e6, bytes=nbytes, copy_us=t_copy * 1e6, ok=ok))
    best = min((k for k in res if k[1] == 3), key=res.get)
    line = f"{name:<18}{nbytes/1e6:7.1f}{t_copy*1e6:7.1f}  plan {plan:5}: s2 {res[(0,2)]:6.1f} s3 {res[(0,3)]:6.1f} | " + " ".join(f"{c}:{res[(c,3)]:.1f}" for c in CHUNKS[1:]) + f" | best {best[0]} {res[best]:.1f} ({nbytes/res[best]/1e-6/HBM_PEAK:.0%}, {t_copy*1e6/res[best]:.0%} of copy)"
    print(line, flush=True); summary.append(line)
print(f"\n{torch.cuda.get_device_name()}: sparse decode per layer (us) by chunk, (64, 4) tiles; all ok: {all(r['ok'] for r in rows)}")
print("\n".join(summary))
if os.environ.get("OUT"):
    json.dump(rows, open(os.path.join(os.environ["OUT"], "attn_chunks.json"), "w"), indent=1)
