#!/usr/bin/env python
"""Session 30, call c: how few programs can read scattered rows of pinned host memory at full speed,
and does such a read then overlap a compute kernel on another stream? Call 30b found that a read
spread over every SM (one program per 32 rows) and a GEMM on two streams take the sum of their
times: the read's programs, stalled on PCIe, hold the SMs. Here a persistent read with P programs
(each loops over the rows' tiles P apart) is timed for P from 8 to 1056 on two read sets (32,768
64 KiB regions with 1 row each: bound by address translation in call 30b; with 4 rows each: about
the 45%-hit gather's 131K rows), then beside a bf16 GEMM loop on another stream.

    python docs/results/gpu/session30/grid_probe.py   # OUT=dir writes $OUT/grid_probe.json
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch
import triton
import triton.language as tl

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[4]))
from region_probe import POOL, REPS, ROW, read_set, timed  # noqa: E402

from vllm_kvoffload.host_memory import host_empty  # noqa: E402


@triton.jit
def _read_rows_persistent(src, offs_ptr, dst, n, P, BLOCK: tl.constexpr, WORDS: tl.constexpr):
    """Program p copies the rows of tiles p, p + P, ...: dst[i] = src's WORDS words at offs[i]."""
    w = tl.arange(0, WORDS)
    for t in range(tl.program_id(0), tl.cdiv(n, BLOCK), P):
        i = t * BLOCK + tl.arange(0, BLOCK)
        m = i < n
        o = tl.load(offs_ptr + i, mask=m, other=0)
        x = tl.load(src + o[:, None] + w[None, :], mask=m[:, None])
        tl.store(dst + i.to(tl.int64)[:, None] * WORDS + w[None, :], x, mask=m[:, None])


def read(src, offs, dst, programs, warps):
    n = offs.numel()
    _read_rows_persistent[(programs,)](src, offs, dst, n, programs, BLOCK=32, WORDS=ROW // 4, num_warps=warps)


def main():
    gen = torch.Generator().manual_seed(1)
    dev = torch.cuda.get_device_name()
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    print(dev, sms, "SMs")
    pool = host_empty((POOL // 4,), torch.int32, pin=True)
    a = torch.randn(4096, 4096, dtype=torch.bfloat16, device="cuda")
    out = torch.empty_like(a)

    def gemm(_):
        for _ in range(8):
            torch.mm(a, a, out=out)

    gemm(0)
    t_gemm = timed(gemm, REPS)
    print(f"gemm loop alone: {t_gemm:.1f} us")
    rows = []
    s1, s2 = torch.cuda.Stream(), torch.cuda.Stream()
    for per_region in (1, 4):
        sets = [(read_set(gen, 64 << 10, 32768, per_region) // 4).cuda() for _ in range(REPS + 1)]
        dst = torch.empty(sets[0].numel(), ROW // 4, dtype=torch.int32, device="cuda")
        for programs in (8, 16, 33, 66, 132, 264, 528, 1056, 4096):
            for warps in (4, 8):
                read(pool, sets[-1], dst, programs, warps)
                torch.cuda.synchronize()
                t = timed(lambda r: read(pool, sets[r], dst, programs, warps), REPS)

                def both(r):
                    cur = torch.cuda.current_stream()
                    s1.wait_stream(cur)
                    s2.wait_stream(cur)
                    with torch.cuda.stream(s1):
                        read(pool, sets[r], dst, programs, warps)
                    with torch.cuda.stream(s2):
                        gemm(r)
                    cur.wait_stream(s1)
                    cur.wait_stream(s2)
                t_both = timed(both, REPS)
                row = dict(rows_per_region=per_region, rows=sets[0].numel(), programs=programs, warps=warps,
                           read_us=t, gemm_us=t_gemm, both_us=t_both)
                rows.append(row)
                print(f"rows/region {per_region} ({sets[0].numel()} rows) programs {programs:>5} warps {warps}: "
                      f"read {t:8.1f} us  with gemm {t_both:8.1f} (sum {t + t_gemm:8.1f}, max {max(t, t_gemm):8.1f})",
                      flush=True)
    if os.environ.get("OUT"):
        Path(os.environ["OUT"], "grid_probe.json").write_text(json.dumps(dict(device=dev, rows=rows), indent=1))
    print(f"\n{dev}: persistent zero-copy read of 32,768 random 64 KiB regions of a 4 GiB pinned pool, "
          f"beside a GEMM loop of {t_gemm:.0f} us on another stream (median of {REPS})")
    print(f"{'rows/region':>12}{'programs':>9}{'warps':>6}{'read us':>9}{'GB/s':>7}{'both us':>9}{'hidden':>8}")
    for r in rows:
        hidden = (r["read_us"] + r["gemm_us"] - r["both_us"]) / min(r["read_us"], r["gemm_us"])
        print(f"{r['rows_per_region']:>12}{r['programs']:>9}{r['warps']:>6}{r['read_us']:>9.1f}"
              f"{r['rows'] * ROW / r['read_us'] / 1e3:>7.1f}{r['both_us']:>9.1f}{hidden:>8.0%}")


if __name__ == "__main__":
    main()
