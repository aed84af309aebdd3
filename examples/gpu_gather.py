#!/usr/bin/env python
"""GPU sweep of the device-cache gather (csrc_triton/gather.py::gather_cached) at the engine's
decode shape: 32 requests x 8 KV heads x 1024 selected tokens (983 valid, the 3% budget of 32K),
head size 128, an fp8 pinned host pool. Tiles (rows per program) and warps are swept at two cache
hit rates: 100% (what the dummy-weight benchmark sees) and 90%. Every configuration's output is checked bit for bit
against gather_uva (the uncached gather, itself tested against the torch reference) and its
counters against the planted hits; then timed with CUDA events (median of --reps, L2 flushed).
The ceiling in the same run: torch's device-to-device copy of the same output bytes.

    python examples/gpu_gather.py            # OUT=dir also writes $OUT/gather.json
"""

from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from gpu_kernels import save_rows, sweep_setup, timeit  # noqa: E402

B, HKV, K, COUNT, D, BS = 32, 8, 1024, 983, 128, 16
COLD = 32768 - 288  # cold tokens per request


def inputs(gen, hit_rate):
    """A pinned fp8 pool of one layer, this step's selection (ascending), and the previous step's
    cache holding ``hit_rate`` of it plus other tokens (also ascending), in a shuffled row order."""
    dev = "cuda"
    blocks = -(-COLD // BS)
    host = torch.empty(B * blocks, 1, 2, HKV, BS, D, dtype=torch.float8_e4m3fn, pin_memory=True)
    host.view(torch.uint8).copy_(torch.randint(0, 120, host.shape, dtype=torch.uint8))  # finite e4m3 patterns
    slots = torch.randperm(B * blocks).view(B, blocks).int().to(dev)
    scores = torch.rand(B, HKV, COLD, device=dev, generator=gen)
    idx = scores.topk(COUNT, -1).indices.sort(-1).values.int()
    idx = torch.cat([idx, torch.zeros(B, HKV, K - COUNT, dtype=torch.int32, device=dev)], -1)
    counts = torch.full((B, HKV), COUNT, dtype=torch.int32, device=dev)
    keep = torch.rand(B, HKV, COUNT, device=dev, generator=gen) < hit_rate
    other = scores.topk(2 * COUNT, -1).indices[..., COUNT:]  # unselected tokens fill the rest of the cache
    prev_idx = torch.where(keep, idx[..., :COUNT], other[..., :COUNT]).sort(-1).values
    prev_idx = torch.cat([prev_idx, torch.zeros(B, HKV, K - COUNT, dtype=torch.int32, device=dev)], -1)
    order = torch.randperm(B, device=dev, generator=gen)
    prev_row = torch.empty(B, dtype=torch.int32, device=dev)
    prev_row[order] = torch.arange(B, dtype=torch.int32, device=dev)  # row p held request order[p]
    prev_cnt = counts.clone()
    return host, slots, idx, counts, prev_row, prev_idx[order], prev_cnt, int(keep.sum())


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--reps", type=int, default=30)
    p.add_argument("--tiles", type=int, nargs="+", default=[32, 64, 128])
    p.add_argument("--warps", type=int, nargs="+", default=[4, 8])
    p.add_argument("--hit-rates", type=float, nargs="+", default=[1.0, 0.9])
    a = p.parse_args()
    gen, flush = sweep_setup("gpu_gather.py", "tests/csrc_triton/test_triton_gather.py")
    from vllm_kvoffload.ops.triton_kernels import load
    gather = load("gather")
    rows, failed = [], 0
    for rate in a.hit_rates:
        host, slots, idx, counts, prev_row, prev_idx, prev_cnt, planted = inputs(gen, rate)
        ref_k, ref_v = gather.gather_uva(host, 0, slots, idx, counts)
        # the cache's rows hold what the pool holds for their tokens (as in the engine)
        prev_k, prev_v = gather.gather_uva(host, 0, slots[prev_row.argsort()], prev_idx, prev_cnt)  # row p: request order[p]
        out_bytes = 2 * ref_k.numel() * ref_k.element_size()
        cp_k, cp_v = torch.empty_like(ref_k), torch.empty_like(ref_v)
        t_copy = timeit(lambda: (cp_k.copy_(prev_k), cp_v.copy_(prev_v)), a.reps, flush)
        rows.append(dict(hit_rate=rate, kind="device copy (ceiling)", time_us=t_copy * 1e6, bytes=2 * out_bytes))
        print(f"hit rate {rate:.0%}: planted hits {planted}; device copy of the output: {t_copy * 1e6:.1f} us")
        for tile, warps in itertools.product(a.tiles, a.warps):
            stats = torch.zeros(2, dtype=torch.int64, device="cuda")
            ok, ov = torch.empty_like(ref_k), torch.empty_like(ref_v)
            run = lambda: gather.gather_cached(host, 0, slots, idx, counts, prev_row, prev_idx, prev_cnt,  # noqa: E731
                                               prev_k, prev_v, stats, out_k=ok, out_v=ov, block_t=tile,
                                               num_warps=warps)
            run()
            hits, gathered = stats.tolist()
            valid = (torch.arange(K, device="cuda") < COUNT)[None, None, :, None]
            same = all(torch.equal(torch.where(valid, x.view(torch.uint8), 0), torch.where(valid, r.view(torch.uint8), 0))
                       for x, r in ((ok, ref_k), (ov, ref_v)))
            ok_ = same and gathered == B * HKV * COUNT and hits >= planted
            failed += not ok_
            t = timeit(run, a.reps, flush)
            rows.append(dict(hit_rate=rate, kind="gather_cached", tile=tile, warps=warps,
                             time_us=t * 1e6, exact=ok_, hits=hits, gathered=gathered))
            print(f"  tile={tile:<4} warps={warps:<2} {t * 1e6:8.1f} us  "
                  f"{t_copy / t:5.0%} of the copy  {'ok' if ok_ else 'MISMATCH'}", flush=True)
    print(f"\n{torch.cuda.get_device_name()}: gather_cached per layer (us), {B} requests x {HKV} KV heads x "
          f"{COUNT} tokens, D={D}, fp8 pool; {failed} mismatches")
    print(f"{'hit rate':<10}{'device copy':>12}{'default (32, 4)':>16}{'best':>10}  best (tile, warps)")
    for rate in a.hit_rates:
        rs = [r for r in rows if r["hit_rate"] == rate and r["kind"] == "gather_cached"]
        copy = next(r for r in rows if r["hit_rate"] == rate and r["kind"] != "gather_cached")
        old = next((r for r in rs if (r["tile"], r["warps"]) == (32, 4)), None)
        best = min(rs, key=lambda r: r["time_us"])
        print(f"{rate:<10.0%}{copy['time_us']:>12.1f}{(old['time_us'] if old else float('nan')):>16.1f}"
              f"{best['time_us']:>10.1f}  ({best['tile']}, {best['warps']})")
    save_rows("gather.json", rows)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
