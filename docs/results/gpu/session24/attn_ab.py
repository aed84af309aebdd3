"""Sparse decode: fused merge (last program merges) vs the merge kernel, paired, at the engine's shapes (experiment)."""
import sys, json, os, itertools
sys.path.insert(0, "examples")
import torch
from gpu_kernels import sweep_setup, timeit, timeit_pair, rel_err, HBM_PEAK
from vllm_kvoffload.ops.triton_kernels import load
from vllm_kvoffload.ops.sparse_decode_ref import sparse_decode_ref
gen, flush = sweep_setup("x", "x")
sd = load("sparse_decode")
HQ, HKV, D, BS = 32, 8, 128, 16
SHAPES = [("32K 3%, 32 req", 32, 288, 983, 1024), ("128K 3%, 8 req", 8, 288, 3900, 3904), ("32K 3%, 16 req", 16, 288, 983, 1024),
          ("128K 1.5%, 8 req", 8, 288, 1950, 1952), ("32K 6%, 32 req", 32, 288, 1966, 1968)]
CELLS = [(None, 64, 4, 2), (None, 64, 4, 3), (None, 32, 4, 3), (None, 64, 4, 4), (512, 64, 4, 3), (None, 128, 8, 3)]
rows, summary = [], []
for name, B, RES, CNT, CAP in SHAPES:
    blocks = -(-RES // BS)
    kv = torch.randn(2, B * blocks + 5, BS, HKV, D, device="cuda", generator=gen).bfloat16()
    table = torch.randperm(B * blocks + 5, device="cuda", generator=gen)[: B * blocks].view(B, blocks).int()
    res_lens = torch.full((B,), RES, dtype=torch.int32, device="cuda")
    q = torch.randn(B, HQ, D, device="cuda", generator=gen).bfloat16()
    sk = torch.randn(B, HKV, CAP, D, device="cuda", generator=gen).to(torch.float8_e4m3fn)
    sv = torch.randn(B, HKV, CAP, D, device="cuda", generator=gen).to(torch.float8_e4m3fn)
    counts = torch.full((B, HKV), CNT, dtype=torch.int32, device="cuda")
    scale = D ** -0.5
    ref = sparse_decode_ref(q, kv, table, res_lens, sk, sv, counts, scale)
    nbytes = sd.bytes_touched(q, kv, res_lens, sk, counts)
    src = torch.empty(nbytes // 2, dtype=torch.int8, device="cuda"); dst = torch.empty_like(src)
    t_copy = timeit(lambda: dst.copy_(src), 30, flush)
    print(f"{name}: {nbytes/1e6:.1f} MB, device copy {t_copy*1e6:.1f} us", flush=True)
    res = {}
    for chunk, block, warps, stages in CELLS:
        outs = [torch.full_like(q, float("nan")) for _ in range(2)]
        fns = [lambda f=f, o=o: sd.sparse_decode(q, kv, table, res_lens, sk, sv, counts, scale, out=o, chunk=chunk,
                                                 block_n=block, num_warps=warps, num_stages=stages, fused_merge=f)
               for f, o in ((True, outs[0]), (False, outs[1]))]
        for f in fns: f()
        torch.cuda.synchronize()
        errs = [rel_err(o, ref) for o in outs]
        ok = all(e <= 1e-2 for e in errs) and not any(o.isnan().any().item() for o in outs)
        zero = not load("_common")._ARRIVALS[q.device].any().item()
        tf, tu = timeit_pair(fns[0], fns[1], 40, flush)
        r = dict(shape=name, chunk=chunk, block=block, warps=warps, stages=stages, fused_us=tf * 1e6, kernel2_us=tu * 1e6,
                 bytes=nbytes, copy_us=t_copy * 1e6, ok=ok and zero, errs=errs)
        rows.append(r); res[(chunk, block, warps, stages)] = r
        print(f"  chunk={chunk} ({block},{warps},{stages}): fused {tf*1e6:6.1f} us ({nbytes/tf/HBM_PEAK:4.0%})  merge kernel {tu*1e6:6.1f} us ({nbytes/tu/HBM_PEAK:4.0%})  {tu/tf:4.2f}x  ok={ok} counters zero={zero}", flush=True)
    summary.append((name, nbytes, t_copy, res))
print(f"\n{torch.cuda.get_device_name()}: sparse decode per layer (us), fp8 selections; % of 3.0 TB/s; copy = device copy of as many bytes")
print(f"{'shape':<18}{'MB':>7}{'copy':>7}{'old dflt':>10}{'fused dflt':>11}{'fused (64,4,3)':>15}{'%':>5}{'% of copy':>10}")
for name, nb, tc, res in summary:
    d, d3 = res[(None, 64, 4, 2)], res[(None, 64, 4, 3)]
    print(f"{name:<18}{nb/1e6:7.1f}{tc*1e6:7.1f}{d['kernel2_us']:10.1f}{d['fused_us']:11.1f}{d3['fused_us']:15.1f}{nb/d3['fused_us']/1e-6/HBM_PEAK:5.0%}{tc*1e6/d3['fused_us']:10.0%}")
print("all ok:", all(r["ok"] for r in rows))
if os.environ.get("OUT"):
    json.dump(rows, open(os.path.join(os.environ["OUT"], "attn_ab.json"), "w"), indent=1)
