#!/usr/bin/env python
"""GPU sweep of the top-k kernel (csrc_triton/topk.py): programs per row (segments), warps and
the shortlist's sample stride (0: no shortlist), at the engine's decode shapes. Every
configuration's output is checked bit for bit against one program per row without a shortlist
(the kernel is exact, ties lowest index first), then timed with CUDA
events (median of --reps, L2 flushed before each). Needs torch + triton and a CUDA GPU:

    python examples/gpu_topk.py           # OUT=dir also writes $OUT/topk.json
    python examples/gpu_topk.py --baseline /path/to/other/checkout   # A/B: both trees' kernels, in one process

Masses are what the scorer hands over: softmax over each row's cold tokens of q.k logits
(scale 4, fp32), summed over a GQA group of 4, so rows have the long tail of real masses; the
"ties" shape has nearly uniform rows rounded to a few distinct values, the "equal" shape rows of one
value (the dummy-weight benchmark model's masses). `--shapes 32` runs only the shapes so named.
With `--baseline`, each cell times the other tree's top-k too, alternately with this one's
(`gpu_kernels.timeit_pair`): separate runs of the same tree differ by up to 40% on the shared
device (sessions 16-21), so an A/B across processes says little.
"""

from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from gpu_kernels import save_rows, sweep_setup, timeit, timeit_pair  # noqa: E402  (median of reps, CUDA events, L2 flushed)

SHAPES = [  # (name, requests, KV heads, cold tokens, budget share)
    ("32K 3%, 16 requests", 16, 8, 32768 - 288, 0.03),
    ("32K 1.5%, 16 requests", 16, 8, 32768 - 288, 0.015),
    ("32K 6%, 16 requests", 16, 8, 32768 - 288, 0.06),
    ("32K 3%, 32 requests", 32, 8, 32768 - 288, 0.03),
    ("32K 3%, 32 requests, ties", 32, 8, 32768 - 288, 0.03),
    ("32K 3%, 32 requests, equal", 32, 8, 32768 - 288, 0.03),
    ("128K 3%, 4 requests", 4, 8, 130000 - 288, 0.03),
    ("128K 3%, 8 requests", 8, 8, 130000 - 288, 0.03),  # the 128K benchmark's batch since session 22
    ("128K 3%, 8 requests, equal", 8, 8, 130000 - 288, 0.03),
]


def masses_for(lens, Hkv, n, gen, kind="softmax"):
    """[B, Hkv, n] fp32 masses of rows of lens[b] cold tokens (-inf past them), as the scorer hands
    them over: softmax of q.k logits over a GQA group of 4. softmax: logits of scale 4 (a real
    model's long tail); ties: nearly uniform rows rounded to about 5 distinct masses; equal: every
    mass of a row the same, as the dummy-weight model gives (examples/dummy_weight_logits.py)."""
    scale = {"softmax": 4, "ties": 0.05, "equal": 0}[kind]
    mass = torch.softmax(torch.randn(lens.numel(), Hkv, 4, n, device=gen.device, generator=gen) * scale, -1).sum(2)
    if kind == "ties":
        mass = (mass * n).mul(4).round().div(4 * n)
    past = torch.arange(n, device=gen.device)[None, None, :] >= lens.long()[:, None, None]
    return mass.masked_fill(past, float("-inf")).contiguous()


def masses(B, Hkv, n, gen, kind="softmax"):
    """``masses_for`` B requests of n cold tokens less 7 per request: (mass, lens)."""
    lens = torch.full((B,), n, dtype=torch.int32, device=gen.device) - torch.arange(B, device=gen.device, dtype=torch.int32) * 7
    return masses_for(lens, Hkv, n, gen, kind), lens


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--reps", type=int, default=30)
    p.add_argument("--segments", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    p.add_argument("--warps", type=int, nargs="+", default=[4, 8, 16])
    p.add_argument("--strides", type=int, nargs="+", default=[0, 16], help="sample strides (0: no shortlist)")
    p.add_argument("--blocks", type=int, nargs="+", default=[4096], help="values per tile (topk_select's block)")
    p.add_argument("--baseline", metavar="ROOT", default=None,
                   help="another checkout's root: its top-k is timed in every cell too, alternately with this "
                        "tree's in the same process (timeit_pair), and the summary gives the ratio")
    p.add_argument("--shapes", nargs="+", default=None, metavar="TEXT",
                   help="only the shapes whose name contains one of these (default: all): " +
                        "; ".join(s[0] for s in SHAPES).replace("%", "%%"))
    a = p.parse_args()
    gen, flush = sweep_setup("gpu_topk.py", "tests/csrc_triton/test_triton_topk.py")
    from vllm_kvoffload.ops.triton_kernels import load, load_from
    topk = load("topk")
    baseline = load_from(a.baseline, "topk") if a.baseline else None
    rows, failed = [], 0
    shapes = [s for s in SHAPES if a.shapes is None or any(t in s[0] for t in a.shapes)]
    if not shapes:
        p.error(f"--shapes {a.shapes}: no shape matches; the shapes are: " + "; ".join(s[0] for s in SHAPES).replace("%", "%%"))
    for name, B, Hkv, n, share in shapes:
        kind = name.rsplit(", ", 1)[-1]
        mass, lens = masses(B, Hkv, n, gen, kind if kind in ("ties", "equal") else "softmax")
        k = int(share * n)
        ref_idx, ref_cnt = topk.topk_select(mass, lens, k, segments=1, sample_stride=0)
        auto = {st: topk.segments_for(B * Hkv, n, k, mass.device, st > 0) for st in a.strides}  # the launcher's choice
        for S, w, st, blk in itertools.product(sorted(set(a.segments) | set(auto.values())), a.warps,
                                               a.strides, a.blocks):
            for early in (True, False) if w == 8 and st == 0 else (True,):  # the radix passes' early exit, on and off
                run = lambda: topk.topk_select(mass, lens, k, segments=S, num_warps=w, early_exit=early,  # noqa: E731
                                               sample_stride=st, block=blk)
                idx, cnt = run()
                ok = torch.equal(idx, ref_idx) and torch.equal(cnt, ref_cnt)
                failed += not ok
                row = dict(shape=name, B=B, Hkv=Hkv, n=n, k=k, segments=S, auto=S == auto[st], warps=w,
                           early_exit=early, sample_stride=st, block=blk, exact=ok)
                if baseline is None:
                    row["time_us"] = timeit(run, a.reps, flush) * 1e6
                    vs = ""
                else:  # the baseline's launcher takes the same arguments (sessions 16-21)
                    run_base = lambda: baseline.topk_select(mass, lens, k, segments=S, num_warps=w,  # noqa: E731
                                                        early_exit=early, sample_stride=st, block=blk)
                    b_idx, b_cnt = run_base()
                    row["baseline_exact"] = torch.equal(b_idx, ref_idx) and torch.equal(b_cnt, ref_cnt)
                    t, tb = timeit_pair(run, run_base, a.reps, flush)
                    row["time_us"], row["baseline_us"] = t * 1e6, tb * 1e6
                    vs = f"  baseline {tb * 1e6:8.1f} us ({tb / t:.2f}x){'' if row['baseline_exact'] else ' MISMATCH'}"
                rows.append(row)
                print(f"  {name:<24} S={S:<3} warps={w:<3} exit={'on ' if early else 'off'} stride={st:<3} block={blk:<5} "
                      f"{row['time_us']:8.1f} us {'ok' if ok else 'MISMATCH'}{vs}", flush=True)
    print(f"\n{torch.cuda.get_device_name()}: top-k per layer (us), 8 warps, early exit on, the launcher's choice "
          f"of segments: without the shortlist, with the default stride ({topk.SAMPLE_STRIDE}), and each shape's "
          f"best; {failed} mismatches")
    print(f"{'shape':<26}{'no shortlist':>16}{'shortlist':>12}{'gain':>8}{'best':>28}")
    for name, *_ in shapes:
        rs = [r for r in rows if r["shape"] == name]
        pick = lambda st: next((r for r in rs if r["auto"] and r["warps"] == 8 and r["early_exit"]  # noqa: E731
                                and r["sample_stride"] == st and r["block"] == 4096), None)
        base, short = pick(0), pick(topk.SAMPLE_STRIDE)
        best = min(rs, key=lambda r: r["time_us"])
        cell = lambda r: f"{r['time_us']:.1f}" if r else "-"  # noqa: E731
        gain = f"{base['time_us'] / short['time_us']:.2f}x" if base and short else "-"
        vs = f"  baseline {best['baseline_us']:.1f} ({best['baseline_us'] / best['time_us']:.2f}x)" if "baseline_us" in best else ""
        print(f"{name:<26}{cell(base):>16}{cell(short):>12}{gain:>8}{best['time_us']:>10.1f} S={best['segments']},"
              f"w={best['warps']},st={best['sample_stride']},b={best['block']}{vs}")
    save_rows("topk.json", rows)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
