#!/usr/bin/env python
"""GPU sweep of the device cache's gather (csrc_triton/gather.py::gather_inplace) at the engine's
decode shape: 32 requests x 8 KV heads x 1024 selected tokens (983 valid, the 3% budget of 32K),
head size 128, an fp8 pinned host pool. A first call fills each request's cache row (every token
read into its slot); the timed call is the next step's, which keeps ``hit rate`` of the selection
and reads the rest from the pool into the freed slots, in a shuffled batch order. Rows per
program and warps are swept at hit rates of 100% (what the dummy-weight benchmark sees), 90% and
30% (near the trained model's 31%). Every configuration is checked: each selected token's slot
holds its pool row bit for bit (against gather_uva, itself tested against the torch reference),
and the hit counter equals the planted hits; then timed with CUDA events (median of --reps, L2
flushed). ``--baseline ROOT``: also time that checkout's gather_cached (the device cache before
session 24: every token copied into a new buffer), paired. ``--layers 8 --layouts head-major
head-major-kv-outer layer-major slot-major``: a pool of 8 layers (16 GiB) in the host pool's layout
(head-major: [layer, head, slot, K|V, token, D]) and three others; the rows of one layer and KV head
then spread over 256 MiB, 2 x 128 MiB (K and V apart, session 25's pool), 2 GiB and 16 GiB of
pinned memory.

``--head-dim 64``: rows of 64 fp8 elements, half the bytes and half the span (what a 4-bit pool of head
size 128 would read, less its scales; session 30).

    python examples/gpu_gather.py [--layers 8 --layouts head-major layer-major slot-major] [--head-dim 64]
        [--baseline ROOT]
    # OUT=dir also writes $OUT/gather.json
"""

from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from gpu_kernels import save_rows, sweep_setup, timeit, timeit_pair  # noqa: E402

from vllm_kvoffload.host_memory import host_empty, huge_page_bytes  # noqa: E402
from vllm_kvoffload.host_pool import HostPool  # noqa: E402

B, HKV, K, COUNT, HEAD_DIM, BS = 32, 8, 1024, 983, 128, 16
COLD = 32768 - 288  # cold tokens per request


LAYOUTS = {  # the order the pool [slot, layer, 2, KV head, token, D] is stored in
    "head-major": None,  # HostPool.kv_tensor's (since session 26: [layer, head, slot, 2, ...])
    "head-major-kv-outer": (1, 2, 3, 0, 4, 5),  # session 25's: [layer, 2, head, slot, ...]
    "head-major-kv-inner": (1, 3, 0, 4, 2, 5),  # [layer, head, slot, token, 2, D]: a token's K and V adjacent
    "layer-major": (1, 0, 2, 3, 4, 5),  # [layer, slot, 2, head, ...]
    "slot-major": (0, 1, 2, 3, 4, 5),   # before session 25: a slot holds its block of every layer
}


def inputs(gen, hit_rate, layers=1, layout="head-major", contiguous_slots=False, memory="pinned", D=HEAD_DIM):
    """A pinned fp8 pool of ``layers`` layers stored in ``layout`` (in 4 KiB or 2 MiB pages: ``memory``),
    filled at its middle layer,
    the last step's selection, and this step's (both ascending) keeping ``hit_rate`` of it."""
    dev = "cuda"
    blocks = -(-COLD // BS)
    S = B * blocks
    shape = (S, layers, 2, HKV, BS, D)
    order = LAYOUTS[layout]
    if order is None:  # the host pool's own layout
        host = HostPool.kv_tensor(S, layers, HKV, BS, D, torch.float8_e4m3fn, pin=True, memory=memory)
    else:
        host = host_empty([shape[o] for o in order], torch.float8_e4m3fn, pin=True, memory=memory)
        host = host.permute([order.index(i) for i in range(6)])
    layer = layers // 2
    # finite e4m3 patterns, made on the device
    host[:, layer].view(torch.uint8).copy_(torch.randint(0, 120, host[:, layer].shape, dtype=torch.uint8, device=dev))
    # random slots, or each request's in one run, as the engine's allocator gives them to requests that
    # start together
    slots = (torch.arange(S) if contiguous_slots else torch.randperm(S)).view(B, blocks).int().to(dev)
    scores = torch.rand(B, HKV, COLD, device=dev, generator=gen)
    prev = scores.topk(2 * COUNT, -1).indices
    keep = torch.rand(B, HKV, COUNT, device=dev, generator=gen) < hit_rate
    now = torch.where(keep, prev[..., :COUNT], prev[..., COUNT:])  # the others: tokens not selected before
    pad = torch.zeros(B, HKV, K - COUNT, dtype=torch.int32, device=dev)
    sel = [torch.cat([x.sort(-1).values.int(), pad], -1) for x in (prev[..., :COUNT], now)]
    counts = torch.full((B, HKV), COUNT, dtype=torch.int32, device=dev)
    # the misses alone, packed at the front of each (request, KV head)'s row (ascending)
    new = prev[..., COUNT:].masked_fill(keep, torch.iinfo(torch.int64).max).sort(-1).values
    miss_counts = (~keep).sum(-1).int()
    miss_idx = torch.where(torch.arange(COUNT, device=dev) < miss_counts[..., None], new, 0).int()
    return host, layer, slots, sel[0], sel[1], counts, int(keep.sum()), (miss_idx, miss_counts)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--reps", type=int, default=30)
    p.add_argument("--tiles", type=int, nargs="+", default=[32, 64, 128])
    p.add_argument("--warps", type=int, nargs="+", default=[4, 8])
    p.add_argument("--hit-rates", type=float, nargs="+", default=[1.0, 0.9, 0.3])
    p.add_argument("--layers", type=int, default=1,
                   help="layers in the pool (the engine's: 32); one layer's rows spread over the whole of a "
                        "slot-major pool, and lie together in a head-major or layer-major one")
    p.add_argument("--layouts", nargs="+", default=["head-major"], choices=list(LAYOUTS),
                   help="pool layouts to time: HostPool's (head-major), session 25's (head-major-kv-outer: "
                        "a token's K and V rows in different pages), head-major-kv-inner (a token's K and V rows "
                        "adjacent: one 256-byte read per fp8 miss), layer-major, and slot-major (before session 25)")
    p.add_argument("--contiguous-slots", action="store_true",
                   help="each request's host slots in one run (the engine's allocator at startup); default: random "
                        "slots (session 26: the K|V-adjacent pool was slower at 45%% hits with random slots only)")
    p.add_argument("--host-memory", nargs="+", default=["pinned"], choices=["pinned", "hugepages"],
                   help="the pool's pages: pinned (cudaHostAlloc, 4 KiB) and/or hugepages (transparent 2 MiB "
                        "pages locked with cudaHostRegister); each is timed")
    p.add_argument("--head-dim", type=int, default=HEAD_DIM,
                   help="elements per K or V row of the fp8 pool, so bytes per row (default: %(default)s); 64 reads "
                        "what a 4-bit pool of head size 128 would, less its scales: half the bytes and half the span")
    p.add_argument("--baseline", help="another checkout's root: time its gather_cached too, paired")
    a = p.parse_args()
    D = a.head_dim
    gen, flush = sweep_setup("gpu_gather.py", "tests/csrc_triton/test_triton_gather.py")
    from vllm_kvoffload.ops.triton_kernels import load, load_from
    gather = load("gather")
    old = load_from(a.baseline, "gather") if a.baseline else None
    rows, failed = [], 0
    dev = "cuda"
    for rate, layout, memory in itertools.product(a.hit_rates, a.layouts, a.host_memory):
        host = step = None  # the last pool goes before the next is pinned
        host, layer, slots, prev_idx, idx, counts, planted, misses = inputs(gen, rate, a.layers, layout,
                                                                            a.contiguous_slots, memory, D)
        pool = dict(hit_rate=rate, layout=layout, host_memory=memory)
        ref_k, ref_v = gather.gather_uva(host, layer, slots, idx, counts)
        order = torch.randperm(B, device=dev, generator=gen)  # this step's batch order
        rows_ = torch.randperm(B, device=dev, generator=gen).int()  # each request's cache row
        cache = [torch.zeros(B, HKV, K, D, dtype=host.dtype, device=dev) for _ in range(2)]
        arrays = [[torch.zeros(B, HKV, K, dtype=torch.int32, device=dev) for _ in range(2)] for _ in range(2)]
        cnts = [torch.zeros(B, HKV, dtype=torch.int32, device=dev) for _ in range(2)]
        stats = torch.zeros(2, dtype=torch.int64, device=dev)
        ones, zeros = torch.ones(B, dtype=torch.int32, device=dev), torch.zeros(B, dtype=torch.int32, device=dev)
        gather.gather_inplace(host, layer, slots, prev_idx, counts, rows_, ones, arrays[0][1], arrays[1][1], cnts[1],
                              arrays[0][0], arrays[1][0], cnts[0], *cache, stats)  # the last step: all read
        out_bytes = 2 * ref_k.numel() * ref_k.element_size()
        cp_k, cp_v = torch.empty_like(ref_k), torch.empty_like(ref_v)
        t_copy = timeit(lambda: (cp_k.copy_(ref_k), cp_v.copy_(ref_v)), a.reps, flush)
        rows.append(dict(pool, kind="device copy of the selection", time_us=t_copy * 1e6, bytes=2 * out_bytes))
        print(f"hit rate {rate:.0%}, {layout} pool of {a.layers} layers ({host.numel() / 2**30:.1f} GiB {memory}, "
              f"{huge_page_bytes(host) / 2**30:.1f} GiB of it in huge pages, "
              f"{'contiguous' if a.contiguous_slots else 'random'} slots): "
              f"planted hits {planted}; device copy of the selection's rows: {t_copy * 1e6:.1f} us")
        if rate < 1:  # a bound: gather_uva reading only the misses, packed (no device-cache bookkeeping; not checked)
            mk = torch.empty(B, HKV, COUNT, D, dtype=host.dtype, device=dev)
            mv = torch.empty_like(mk)
            t_uva = timeit(lambda: gather.gather_uva(host, layer, slots, *misses, out_k=mk, out_v=mv), a.reps, flush)
            n_miss = int(misses[1].sum())
            rows.append(dict(pool, kind="gather_uva of the misses alone", time_us=t_uva * 1e6, misses=n_miss))
            print(f"  gather_uva of the {n_miss} misses alone, packed: {t_uva * 1e6:.1f} us "
                  f"({n_miss * 2 * D / t_uva / 1e9:.1f} GB/s)")
        step = (host, layer, slots[order], idx[order], counts[order], rows_[order], zeros)
        if old is not None:  # the old cache followed the batch: request order[i]'s last row was order[i]
            prev_row = order.int()
            pk, pv = gather.gather_uva(host, layer, slots, prev_idx, counts)
            ok_, ov_ = torch.empty_like(ref_k), torch.empty_like(ref_v)
            stats_old = torch.zeros(2, dtype=torch.int64, device=dev)
            run_old = lambda: old.gather_cached(host, layer, slots[order], idx[order], counts[order], prev_row,  # noqa: E731
                                                prev_idx, counts, pk, pv, stats_old, out_k=ok_, out_v=ov_)
        for tile, warps in itertools.product(a.tiles, a.warps):
            stats.zero_()
            run = lambda: gather.gather_inplace(*step, arrays[0][0], arrays[1][0], cnts[0], arrays[0][1],  # noqa: E731
                                                arrays[1][1], cnts[1], *cache, stats, block_t=tile, num_warps=warps)
            run()
            hits, gathered = stats.tolist()
            pos = arrays[1][1][rows_[order].long()][..., :COUNT].long()  # [B, HKV, COUNT] slots, batch order
            got = [c.view(torch.uint8)[rows_[order].long()].gather(2, pos[..., None].expand(-1, -1, -1, D)) for c in cache]
            same = all(torch.equal(x.view(torch.uint8), r[order][:, :, :COUNT].view(torch.uint8))
                       for x, r in zip(got, (ref_k, ref_v)))
            ok = same and gathered == B * HKV * COUNT and hits == planted
            if not same:
                bad = (got[0].view(torch.uint8) != ref_k[order][:, :, :COUNT].view(torch.uint8)).any(-1)
                print(f"    mismatched rows: {int(bad.sum())} of {bad.numel()}, first at {bad.nonzero()[0].tolist()}")
            failed += not ok
            row = dict(pool, layers=a.layers, contiguous_slots=a.contiguous_slots, kind="gather_inplace", tile=tile, warps=warps,
                       exact=ok, hits=hits)
            if old is not None:
                t, t_old = timeit_pair(run, run_old, a.reps, flush)
                row["baseline_gather_cached_us"] = t_old * 1e6
            else:
                t = timeit(run, a.reps, flush)
            row["time_us"] = t * 1e6
            rows.append(row)
            print(f"  tile={tile:<4} warps={warps:<2} {t * 1e6:8.1f} us"
                  + (f"  (baseline gather_cached, 32 x 4: {row['baseline_gather_cached_us']:.1f} us)" if old else "")
                  + f"  {'ok' if ok else 'MISMATCH'} hits {hits}/{planted}", flush=True)
    print(f"\n{torch.cuda.get_device_name()}: gather_inplace per layer (us), {B} requests x {HKV} KV heads x "
          f"{COUNT} tokens, D={D}, fp8 pool of {a.layers} layers; {failed} mismatches")
    print(f"{'hit rate':<10}{'pool':<34}{'copy':>8}{'default (32, 4)':>16}{'best':>8}{'misses GB/s':>12}  best (tile, warps)"
          + ("  baseline" if old else ""))
    for rate, layout, memory in itertools.product(a.hit_rates, a.layouts, a.host_memory):
        key = (rate, layout, memory)
        same_pool = [r for r in rows if (r["hit_rate"], r["layout"], r["host_memory"]) == key]
        rs = [r for r in same_pool if r["kind"] == "gather_inplace"]
        copy = next(r for r in same_pool if r["kind"].startswith("device"))
        d = next((r for r in rs if (r["tile"], r["warps"]) == (32, 4)), None)
        best = min(rs, key=lambda r: r["time_us"])
        miss_bytes = (B * HKV * COUNT - best["hits"]) * 2 * D  # K and V rows of one byte per element
        base = f"  {min(r['baseline_gather_cached_us'] for r in rs):.1f}" if old else ""
        print(f"{rate:<10.0%}{layout + ' ' + memory:<34}{copy['time_us']:>8.1f}{(d['time_us'] if d else float('nan')):>16.1f}"
              f"{best['time_us']:>8.1f}{miss_bytes / best['time_us'] / 1e3:>12.1f}  ({best['tile']}, {best['warps']}){base}")
    save_rows("gather.json", rows)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
