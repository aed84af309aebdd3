#!/usr/bin/env python
"""Which host-pool layout of a 4-bit row reads fastest over PCIe? Session 31, calls d and e. Self-contained
(torch and Triton only).

Call 31a gathered rows of 64, 68 and 128 bytes with the engine's in-place fill: at 45% hits, 475, 744
and 806 us per layer. A 68-byte row (64 bytes of nibbles and a 4-byte scale, branch int4-pool) costs
nearly what a 128-byte row does. Each 68-byte row, at offsets 68 x t, always lies across two 64-byte
units, as a 128-byte row does, so the read's unit looks like 64 bytes. This probe tests a layout that
keeps a block's rows 64-byte aligned: per (block, K or V, head) the 16 rows of 64 bytes, then the 16
scales (the same 1,088 bytes per block as now). A missed row then reads one 64-byte unit, and the
scales of all the block's missed rows share one more unit.

Layouts, one layer at 128K: 8 requests x 8 KV heads, 130,000 tokens each, blocks of 16 tokens with the
K block then the V block, every (request, head) its own contiguous part of the pool (head-major):
  rows128  fp8 rows of 128 bytes (the fp8 pool now)
  rows68   4-bit rows of 68 bytes, scale at the row's end (branch int4-pool now)
  split    4-bit rows of 64 bytes, the block's 16 scales after its 16 rows
  devscale 4-bit rows of 64 bytes on the host, their scales in device memory
  rows64   rows of 64 bytes and no scales (the lower bound)
Each layout reads the same missed tokens (a fresh random set per repetition, so no translation is warm),
K and V rows of each, into a device buffer. Layouts read the sets one after another, so six other sets lie
between two layouts' reads of one set; a layout's own addresses also differ (its strides).

    python docs/results/gpu/session31/row_layout_probe.py   # OUT=dir writes $OUT/row_layout_probe.json
"""

from __future__ import annotations

import json
import os
import statistics

import torch
import triton
import triton.language as tl

SEQS, TOKENS, BS = 64, 130_000, 16
SELECTED = int(0.03 * TOKENS)  # the 3% budget's cold selection per (request, head)
REPS = 7
DEV = "cuda" if torch.cuda.is_available() else "cpu"  # cpu: TRITON_INTERPRET=1, check() only
SPLIT_CODE = {False: 0, True: 1, "device": 2}
# name: (data words of a row, words of a (block, K or V) unit, where the scales are: none, in the block, device)
LAYOUTS = {"rows128": (32, 32 * BS, False), "rows68": (17, 17 * BS, False),
           "split": (16, 17 * BS, True), "devscale": (16, 16 * BS, "device"), "rows64": (16, 16 * BS, False)}


@triton.jit
def _read(src, scales, tok_ptr, dst, n, SEQ_WORDS, BLK_WORDS, BLOCKS, TOKENS: tl.constexpr, BS: tl.constexpr,
          W: tl.constexpr, W_PAD: tl.constexpr, SPLIT: tl.constexpr, BLOCK: tl.constexpr):
    """For each (seq, token) entry: its K and V rows (W words each) and, where SPLIT, their scales
    (1: after the block's rows; 2: from the device array ``scales`` [seq, BLOCKS, K or V, BS]), into
    dst[i, kv, :W_PAD + 1]."""
    i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    m = i < n
    e = tl.load(tok_ptr + i, mask=m, other=0)  # seq * TOKENS + token
    seq, t = e // TOKENS, e % TOKENS
    w = tl.arange(0, W_PAD)
    wm = m[:, None] & (w < W)[None, :]
    for kv in tl.static_range(2):
        unit = seq.to(tl.int64) * SEQ_WORDS + ((t // BS) * 2 + kv).to(tl.int64) * BLK_WORDS
        out = dst + (i.to(tl.int64) * 2 + kv) * (W_PAD + 1)
        x = tl.load(src + (unit + (t % BS) * W)[:, None] + w[None, :], mask=wm, other=0)
        tl.store(out[:, None] + w[None, :], x, mask=wm)
        if SPLIT != 0:
            if SPLIT == 2:
                at = scales + ((seq * BLOCKS + t // BS) * 2 + kv).to(tl.int64) * BS + t % BS
            else:
                at = src + unit + BS * W + t % BS
            tl.store(out + W_PAD, tl.load(at, mask=m, other=0), mask=m)


def miss_set(gen, miss_rate):
    """Sorted (seq * TOKENS + token) of the missed tokens: per seq, miss_rate of SELECTED random tokens."""
    n = int(miss_rate * SELECTED)
    tok = torch.rand(SEQS, TOKENS, generator=gen).topk(n, dim=1).indices.sort(1).values
    return (tok + torch.arange(SEQS)[:, None] * TOKENS).flatten().to(torch.int32)


def blocks_per_seq():
    """Blocks of a (request, KV head), a partial last one included: the pool and the scales are sized by it."""
    return TOKENS // BS + 1


def launch(pool, scales, toks, dst, layout):
    W, blk, split = LAYOUTS[layout]
    _read[(triton.cdiv(toks.numel(), 32),)](
        pool, scales, toks, dst, toks.numel(), blocks_per_seq() * 2 * blk, blk, blocks_per_seq(), TOKENS=TOKENS,
        BS=BS, W=W, W_PAD=triton.next_power_of_2(W), SPLIT=SPLIT_CODE[split], BLOCK=32, num_warps=4)


def output(toks, layout):
    return torch.zeros(toks.numel(), 2, triton.next_power_of_2(LAYOUTS[layout][0]) + 1, dtype=torch.int32, device=DEV)


def timed(pool, scales, sets, layout):
    ts = []
    for toks in sets:
        dst = output(toks, layout)
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        launch(pool, scales, toks, dst, layout)
        b.record()
        torch.cuda.synchronize()
        ts.append(a.elapsed_time(b) * 1e3)
    return statistics.median(ts[1:])  # the first also compiles


def check(pool, scales, layout):
    """The kernel reads the words the layout says (one set, checked on the host)."""
    W, blk, split = LAYOUTS[layout]
    toks = miss_set(torch.Generator().manual_seed(1), 0.01)
    dst = output(toks, layout)
    launch(pool, scales, toks.to(DEV), dst, layout)
    got = dst.cpu()
    seq, t = toks.long() // TOKENS, toks.long() % TOKENS
    for kv in range(2):
        unit = seq * blocks_per_seq() * 2 * blk + ((t // BS) * 2 + kv) * blk
        rows = pool[(unit + (t % BS) * W)[:, None] + torch.arange(W)]
        assert torch.equal(got[:, kv, :W], rows), layout
        if split == "device":
            at = ((seq * blocks_per_seq() + t // BS) * 2 + kv) * BS + t % BS
            assert torch.equal(got[:, kv, -1], scales.cpu()[at]), layout
        elif split:
            assert torch.equal(got[:, kv, -1], pool[unit + BS * W + t % BS]), layout


def main():
    words = SEQS * blocks_per_seq() * 2 * max(blk for _, blk, _ in LAYOUTS.values())
    pool = torch.empty(words, dtype=torch.int32, pin_memory=True)
    pool.copy_(torch.randint(-2**31, 2**31 - 1, (words,), dtype=torch.int32))
    scales = torch.randint(-2**31, 2**31 - 1, (SEQS * blocks_per_seq() * 2 * BS,), dtype=torch.int32, device=DEV)
    for layout in LAYOUTS:
        check(pool, scales, layout)
    gen = torch.Generator().manual_seed(0)
    out = {"device": torch.cuda.get_device_name(), "seqs": SEQS, "tokens": TOKENS, "selected": SELECTED, "us": {}}
    rows = []
    for rate in (0.1, 0.3, 0.55):
        sets = [miss_set(gen, rate).cuda() for _ in range(REPS)]
        us = {layout: timed(pool, scales, sets, layout) for layout in LAYOUTS}
        out["us"][str(rate)] = us
        rows.append((rate, sets[0].numel(), us))
    if os.environ.get("OUT"):
        with open(os.path.join(os.environ["OUT"], "row_layout_probe.json"), "w") as f:
            json.dump(out, f, indent=1)
    print(f"{out['device']}: one layer at 128K, {SEQS} (request, KV head) pairs, K and V rows of each missed token "
          f"(us, median of {REPS - 1}); every layout read checked word for word")
    print(f"{'hits':>5} {'misses':>8} " + " ".join(f"{k:>8}" for k in LAYOUTS) + "   devscale/rows68  devscale/rows128")
    for rate, n, us in rows:
        print(f"{1 - rate:5.0%} {n:8d} " + " ".join(f"{us[k]:8.1f}" for k in LAYOUTS)
              + f"   {us['devscale'] / us['rows68']:15.2f}  {us['devscale'] / us['rows128']:16.2f}")


if __name__ == "__main__":
    main()
