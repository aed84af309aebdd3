#!/usr/bin/env python
"""What a zero-copy read of pinned host memory costs on this GPU: per row read, per byte, or per
distinct host region touched (and of what size)? Session 30, call b. Self-contained (torch and
Triton only, plus the project's host_memory for the huge-page pool).

Call 30a found the misses-alone gather (gather_uva) at 26 us for 233 misses, 28 us for 2,466,
441 us for 25,219, 736 us for 75,443 and 762 us for 138,181 (32 requests x 8 KV heads, one layer of
2 GiB): flat, then a cliff, then flat again. Counting the distinct 64 KiB regions those misses touch
gives 23.8-25.2 ns per region above the cliff. This probe tests that directly: read sets built from
R random regions of size S with m random 256-byte rows in each, so the distinct 4 KiB pages, 64 KiB
regions and 2 MiB regions touched vary independently; each set is read once per timing (a fresh set
per repetition, so no translation is warm from the last one). Then: does the read overlap with a
compute kernel on another stream, and does the rows' order matter.

    python docs/results/gpu/session30/region_probe.py   # OUT=dir writes $OUT/region_probe.json
"""

from __future__ import annotations

import json
import os
import statistics
import sys
from pathlib import Path

import torch
import triton
import triton.language as tl

sys.path.insert(0, str(Path(__file__).resolve().parents[4]))
from vllm_kvoffload.host_memory import host_empty, huge_page_bytes  # noqa: E402

ROW = 256  # bytes per row: one token's K and V rows in an fp8 pool of head size 128
POOL = 4 << 30
REPS = 5


@triton.jit
def _read_rows(src, offs_ptr, dst, n, BLOCK: tl.constexpr, WORDS: tl.constexpr):
    """dst[i] = the row of WORDS int32 words at word offset offs[i] of src (pinned host memory)."""
    i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    m = i < n
    o = tl.load(offs_ptr + i, mask=m, other=0)
    w = tl.arange(0, WORDS)
    x = tl.load(src + o[:, None] + w[None, :], mask=m[:, None])
    tl.store(dst + i.to(tl.int64)[:, None] * WORDS + w[None, :], x, mask=m[:, None])


def read(src, offs, dst):
    n = offs.numel()
    _read_rows[(triton.cdiv(n, 32),)](src, offs, dst, n, BLOCK=32, WORDS=ROW // 4, num_warps=4)


def read_set(gen, region, n_regions, rows_per_region, pool_bytes=POOL):
    """Word offsets of rows_per_region random rows (distinct) in each of n_regions random regions."""
    total = pool_bytes // region
    regions = torch.randperm(total, generator=gen)[:n_regions]
    per = region // ROW
    rows = torch.rand(n_regions, per, generator=gen).argsort(1)[:, :min(rows_per_region, per)]
    byte = regions[:, None] * region + rows * ROW
    return byte.flatten().sort().values  # ascending, as a sorted selection reads them


def distinct(byte, size):
    return int(torch.unique(byte // size).numel())


def timed(fn, reps):
    ts = []
    for r in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn(r)
        b.record()
        torch.cuda.synchronize()
        ts.append(a.elapsed_time(b) * 1e3)
    return statistics.median(ts)


def law(pool, gen, memory):
    designs = [  # (region size, regions, rows per region)
        (4 << 10, 512, 1), (4 << 10, 2048, 1), (4 << 10, 8192, 1), (4 << 10, 32768, 1), (4 << 10, 8192, 16),
        (64 << 10, 512, 1), (64 << 10, 2048, 1), (64 << 10, 8192, 1), (64 << 10, 32768, 1),
        (64 << 10, 8192, 4), (64 << 10, 8192, 16), (64 << 10, 8192, 64), (64 << 10, 32768, 8),
        (2 << 20, 256, 16), (2 << 20, 512, 16), (2 << 20, 512, 128), (2 << 20, 2048, 4), (2 << 20, 2048, 32),
    ]
    rows = []
    for size, n_reg, m in designs:
        sets = [read_set(gen, size, n_reg, m) for _ in range(REPS + 1)]
        offs = [(s // 4).cuda() for s in sets]
        dst = torch.empty(offs[0].numel(), ROW // 4, dtype=torch.int32, device="cuda")
        read(pool, offs[-1], dst)  # compile and warm everything but this set's translations
        torch.cuda.synchronize()
        t = timed(lambda r: read(pool, offs[r], dst), REPS)
        s = sets[0]
        row = dict(memory=memory, region=size, regions=n_reg, rows_per_region=m, rows=s.numel(), us=t,
                   pages_4k=distinct(s, 4 << 10), regions_64k=distinct(s, 64 << 10), regions_2m=distinct(s, 2 << 20))
        rows.append(row)
        print(f"{memory:9} S={size >> 10:>5} KiB R={n_reg:>6} m={m:>4} rows={s.numel():>7}  4K pages={row['pages_4k']:>7} "
              f"64K={row['regions_64k']:>6} 2M={row['regions_2m']:>5}  {t:8.1f} us  "
              f"{t * 1e3 / row['regions_64k']:6.1f} ns/64K  {t * 1e3 / row['pages_4k']:6.1f} ns/4K", flush=True)
    return rows


def overlap(pool, gen):
    """The read of 32,768 64 KiB regions (4 rows each) and a bf16 GEMM loop, alone and on two streams."""
    sets = [(read_set(gen, 64 << 10, 32768, 4) // 4).cuda() for _ in range(REPS + 1)]
    dst = torch.empty(sets[0].numel(), ROW // 4, dtype=torch.int32, device="cuda")
    a = torch.randn(4096, 4096, dtype=torch.bfloat16, device="cuda")
    out = torch.empty_like(a)
    big = torch.empty(512 << 20, dtype=torch.uint8, device="cuda")
    big2 = torch.empty_like(big)

    def gemm(_):
        for _ in range(8):
            torch.mm(a, a, out=out)

    def copy(_):
        for _ in range(2):
            big2.copy_(big)

    read(pool, sets[-1], dst)
    gemm(0)
    copy(0)
    torch.cuda.synchronize()
    t_read = timed(lambda r: read(pool, sets[r], dst), REPS)
    res = dict(read_us=t_read)
    s1, s2 = torch.cuda.Stream(), torch.cuda.Stream()
    for name, fn in (("gemm", gemm), ("device_copy", copy)):
        t_fn = timed(fn, REPS)

        def both(r, fn=fn):
            cur = torch.cuda.current_stream()
            s1.wait_stream(cur)
            s2.wait_stream(cur)
            with torch.cuda.stream(s1):
                read(pool, sets[r], dst)
            with torch.cuda.stream(s2):
                fn(r)
            cur.wait_stream(s1)
            cur.wait_stream(s2)
        t_both = timed(both, REPS)
        res[name] = dict(alone_us=t_fn, with_read_us=t_both, sum_us=t_read + t_fn, max_us=max(t_read, t_fn))
        print(f"overlap: read {t_read:.1f} us, {name} {t_fn:.1f} us, both on two streams {t_both:.1f} us "
              f"(sum {t_read + t_fn:.1f}, max {max(t_read, t_fn):.1f})", flush=True)
    return res


def order(pool, gen):
    """The same rows (8,192 64 KiB regions x 8 rows) read ascending and shuffled."""
    sets = [read_set(gen, 64 << 10, 8192, 8) for _ in range(REPS + 1)]
    asc = [(s // 4).cuda() for s in sets]
    shuf = [x[torch.randperm(x.numel(), device="cuda")] for x in asc]
    dst = torch.empty(asc[0].numel(), ROW // 4, dtype=torch.int32, device="cuda")
    read(pool, asc[-1], dst)
    torch.cuda.synchronize()
    t_asc = timed(lambda r: read(pool, asc[r], dst), REPS)
    t_shuf = timed(lambda r: read(pool, shuf[r], dst), REPS)
    print(f"order: ascending {t_asc:.1f} us, shuffled {t_shuf:.1f} us (8,192 regions x 8 rows)", flush=True)
    return dict(ascending_us=t_asc, shuffled_us=t_shuf)


def main():
    gen = torch.Generator().manual_seed(0)
    print(torch.cuda.get_device_name(), torch.__version__, triton.__version__)
    out = dict(device=torch.cuda.get_device_name())
    pool = host_empty((POOL // 4,), torch.int32, pin=True)
    out["law"] = law(pool, gen, "pinned")
    out["order"] = order(pool, gen)
    out["overlap"] = overlap(pool, gen)
    del pool
    huge = host_empty((POOL // 4,), torch.int32, pin=True, memory="hugepages")
    print(f"huge-page pool: {huge_page_bytes(huge) / 2**30:.1f} of {POOL / 2**30:.0f} GiB in 2 MiB pages")
    out["law"] += law(huge, gen, "hugepages")
    if os.environ.get("OUT"):
        Path(os.environ["OUT"], "region_probe.json").write_text(json.dumps(out, indent=1))
    rows = out["law"]
    print(f"\n{out['device']}: zero-copy reads of 256-byte rows from a 4 GiB host pool, median of {REPS} fresh sets")
    print(f"{'memory':10}{'S':>8}{'R':>7}{'m':>5}{'rows':>8}{'4K pages':>9}{'64K':>7}{'2M':>6}{'us':>9}"
          f"{'ns/4K':>8}{'ns/64K':>8}{'ns/2M':>9}")
    for r in rows:
        print(f"{r['memory']:10}{r['region'] >> 10:>7}K{r['regions']:>7}{r['rows_per_region']:>5}{r['rows']:>8}"
              f"{r['pages_4k']:>9}{r['regions_64k']:>7}{r['regions_2m']:>6}{r['us']:>9.1f}"
              f"{r['us'] * 1e3 / r['pages_4k']:>8.1f}{r['us'] * 1e3 / r['regions_64k']:>8.1f}"
              f"{r['us'] * 1e3 / r['regions_2m']:>9.1f}")


if __name__ == "__main__":
    main()
