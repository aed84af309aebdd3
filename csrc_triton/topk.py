"""Top-k per (request, KV head) over the scorer's mass. Reference:
``vllm_kvoffload/ops/topk_ref.py`` (same arguments and layouts).

Order: mass descending, then index ascending (ties at the k-th value: lowest index first).
Masses are fp32 >= 0, so their int32 bit patterns order like the values; rows may hold
-inf past n (never read). NaN masses are not supported.

One launch, grid (S, Hkv, B): each row of n = cold_lens[b] masses is cut into S segments,
kk = min(k, n) (and the request's budget).
  1. every program selects its segment's local top-kk (``_select``, below) and writes the
     (bits, index) pairs, ascending by index, to slice s of the row's scratch [S, k]; the
     slice's unused tail holds bits -1, below every mass;
  2. it then bumps the row's arrival counter (an acq_rel atomic); the program that arrives
     last selects the global top-kk from the whole scratch, read in slice order, so ascending
     by index, and writes their indices to the output. It resets the counter to 0.
Exact: an element of the global top-kk has at most as many elements before it in the order
inside its segment as in the row, so fewer than kk: it is in its segment's local top-kk.
With S = 1 the one program writes the output directly (no scratch, no counter).

``_select`` over m values (bits, indices): radix bisection finds T, the kk-th largest
pattern, 4 bits a pass (16 candidate thresholds counted at once), 8 passes for bits 30..0;
one pass counts n_gt = count(bits > T), so need_eq = kk - n_gt ties are taken; one pass
compacts in order: bits > T, and the first need_eq of bits == T (running count + exclusive
tl.cumsum). Every pass re-reads the values (from L2 after the first).
Early exit: once a pass finds a candidate c with count(bits >= c) == kk exactly, the values
>= c are the top-kk and no tie crosses the boundary, so the remaining passes and the n_gt
pass are skipped and the compaction keeps bits >= c. It happens once the kk-th value is
alone in its candidate bucket; with many equal masses it may never, and all passes run.
Rows of one value (the dummy-weight benchmark model's masses are all equal: docs/performance.md,
session 21): where ``_select`` reads a row itself (not a shortlist), a first pass finds the
smallest and largest pattern; where they are equal, that pattern is T and no radix pass runs.
The compaction stops once it has written its kk values, so on such rows it reads about kk
values, not m.

Shortlist (``_select_shortlisted``, where a program's m values exceed its shortlist's
capacity CAP): radix bisection over every STRIDE-th value (a sample of m / STRIDE, or sparser
where that exceeds 2 BLOCK values: the sample is held in registers, ``_sample_threshold``) finds
tau, about the (1.5 kk + 16 STRIDE)-th largest value of the row; one pass copies every value > tau
with its index, in order of position, to the program's shortlist and counts the values == tau,
and ``_select`` runs on the shortlist (where the sample is one value, the pass skips the scan
and stores of tiles that keep nothing: ``_shortlist_pass``). Exact whenever it holds c
values with kk <= c <= CAP: then the kk-th largest value is > tau, so the top-kk and every tie
of its last value are on the shortlist, in the row's order. Where c < kk <= c + count(== tau)
(rows of many equal masses, as dummy-weight models give), tau is itself the kk-th largest
value: one more pass over the row takes the values > tau and the first kk - c ties. Otherwise (a
misleading sample) the program selects from the whole row as without a shortlist, so the
output never depends on the sample. Where the shortlist holds, the passes over the row drop
from up to 10 to 2 (the sample is read once, the shortlist's passes read about 1.5 kk values).

Why segments: 4 requests x 8 KV heads at 128K is 32 rows, one program each on 132 SMs; with
segments the idle SMs share the rows, and the last program's second selection reads S * k
values, not n. Where rows already fill the SMs, one program per row is faster (segments_for).

Split shortlist (S > 1 with a shortlist, ``_select_split_shortlist``): selecting each segment's
local top-kk as above would make every segment shortlist and select about 1.5 kk values, S times
the work of one program. Instead every program of the row finds the same tau from the whole row's
sample (the same passes as one program would make), and shortlists only its own segment into its
own slot; the last to arrive concatenates the slots in segment order (the row's shortlist, in
order of position) and selects from it, or takes the ties or the whole row, exactly as
``_select_shortlisted``. What S programs share is the pass over the row, the longest on long rows.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import arrival_counters, device_buffer, next_pow2, num_sms

SAMPLE_STRIDE = 16  # the shortlist's threshold: from every 16th value (topk_select)


@triton.jit
def _candidates(prefix, p):
    """Radix pass p's 16 candidate thresholds: prefix with each digit at the pass's bits
    (4 bits a pass from bit 27 down, the last pass bits 2..0)."""
    return prefix | (tl.arange(0, 16) << tl.maximum(27 - 4 * p, 0))


@triton.jit
def _next_digit(cnt, kk, p):
    """Pass p's choice, given cnt[d] = count(bits >= candidate d): (the bits to add to the prefix,
    count(bits >= the new prefix)). The chosen digit is the largest with count >= kk (digit 0
    always counts: the counts fall with the digit)."""
    digit = tl.arange(0, 16)
    shift = tl.maximum(27 - 4 * p, 0)
    width = 31 - 4 * p - shift  # 4, ..., 4, then 3 for bits 2..0
    d = tl.sum(((cnt >= kk) & (digit < (1 << width))).to(tl.int32), 0) - 1
    return tl.maximum(d, 0) << shift, tl.sum(tl.where(digit == d, cnt, 0), 0)


@triton.jit
def _kth_pattern(src, m, kk, BLOCK: tl.constexpr, CACHE: tl.constexpr, EARLY: tl.constexpr, ONE: tl.constexpr):
    """Radix bisection over src[0:m): (T, exact). exact == 0: T is the kk-th largest pattern.
    exact != 0 (the early exit, with EARLY): exactly kk values are >= T. Either way
    count(values >= T) >= kk. With ONE, a first pass finds the values' smallest and largest
    pattern: where they are equal (a row of one value, as a dummy-weight model's masses), that
    pattern is T and no radix pass runs."""
    offs = tl.arange(0, BLOCK)
    prefix = tl.zeros([], tl.int32)
    exact = tl.zeros([], tl.int32)  # 1 once count(bits >= prefix) == kk: the passes left are skipped
    skip = tl.zeros([], tl.int32)   # 1 where the radix passes are not needed at all
    if ONE:
        lo_v = tl.full([BLOCK], 2147483647, tl.int32)  # per lane, over the values: smallest and largest pattern
        hi_v = tl.full([BLOCK], -1, tl.int32)
        for start in range(0, m, BLOCK):
            i = start + offs
            bits = tl.load(src + i, mask=i < m, other=-1, cache_modifier=CACHE)
            lo_v = tl.minimum(lo_v, tl.where(i < m, bits, 2147483647))
            hi_v = tl.maximum(hi_v, bits)
        lo = tl.min(lo_v, 0)
        one = (lo == tl.max(hi_v, 0)) & (kk > 0) & (kk <= m)  # one value, m >= kk copies: it is the kk-th largest
        prefix = tl.where(one, lo, prefix)
        skip = one.to(tl.int32)
    for p in range(8):
        cand = _candidates(prefix, p)
        cnt = tl.zeros([16], tl.int32)
        for start in range(0, tl.where((exact != 0) | (skip != 0), 0, m), BLOCK):
            i = start + offs
            bits = tl.load(src + i, mask=i < m, other=-1, cache_modifier=CACHE)  # -1 < every candidate
            cnt += tl.sum((bits[None, :] >= cand[:, None]).to(tl.int32), 1)
        add, at_d = _next_digit(cnt, kk, p)
        live = (exact == 0) & (skip == 0)
        prefix = tl.where(live, prefix | add, prefix)
        if EARLY:
            exact = tl.where(live & (at_d == kk), 1, exact)
    return prefix, exact


@triton.jit
def _select(src, src_idx, m, kk, out_idx, out_bits, BLOCK: tl.constexpr, INDEXED: tl.constexpr,
            WRITE_BITS: tl.constexpr, CACHE: tl.constexpr, EARLY: tl.constexpr):
    """The top-kk of src[0:m) (int32 patterns of fp32 >= 0), in order of position, written to
    out_idx[0:kk) (and their patterns to out_bits when WRITE_BITS). The index written is the
    position (plus ``src_idx`` as an int offset) or, when INDEXED, src_idx[position]. CACHE: the
    loads' cache modifier (".cg" for data written in this launch: not from L1).
    EARLY: the early exit (module docstring); off only to measure what it saves."""
    offs = tl.arange(0, BLOCK)
    # The min/max pass only where the row itself is read (a shortlist or the segments' selections
    # are not a row of one value on the benchmark: the pass cost them 3-4%, session 23)
    prefix, exact = _kth_pattern(src, m, kk, BLOCK, CACHE, EARLY, EARLY and not INDEXED)

    # Either exact: the kk values >= prefix are the top-kk, no tie crosses the boundary (keep
    # bits > prefix - 1); or prefix is the kk-th largest pattern T, and need_eq ties are taken.
    n_gt = tl.zeros([], tl.int32)
    for start in range(0, tl.where(exact != 0, 0, m), BLOCK):
        i = start + offs
        bits = tl.load(src + i, mask=i < m, other=-1, cache_modifier=CACHE)
        n_gt += tl.sum((bits > prefix).to(tl.int32), 0)
    need_eq = tl.where(exact != 0, 0, kk - n_gt)
    prefix = tl.where(exact != 0, prefix - 1, prefix)

    _compact(src, src_idx, m, prefix, need_eq, kk, out_idx, out_bits, BLOCK, INDEXED, WRITE_BITS, CACHE)


@triton.jit
def _compact(src, src_idx, m, T, need_eq, total, out_idx, out_bits, BLOCK: tl.constexpr, INDEXED: tl.constexpr,
             WRITE_BITS: tl.constexpr, CACHE: tl.constexpr):
    """One pass, in order of position: every value > T, and the first need_eq values == T
    (running count + exclusive tl.cumsum). Indices as in ``_select``. ``total`` is how many
    that is (count(> T) + need_eq, the caller's kk): the pass stops once they are written, so a
    row of ties costs about kk values, not m."""
    offs = tl.arange(0, BLOCK)
    pos = tl.zeros([], tl.int32)
    eq_seen = tl.zeros([], tl.int32)
    start = tl.zeros([], tl.int32)
    while (start < m) & (pos < total):
        i = start + offs
        bits = tl.load(src + i, mask=i < m, other=-1, cache_modifier=CACHE)
        eq = (bits == T).to(tl.int32)
        eq_rank = eq_seen + tl.cumsum(eq, 0) - eq
        keep = ((bits > T) | ((eq != 0) & (eq_rank < need_eq))).to(tl.int32)
        dst = pos + tl.cumsum(keep, 0) - keep
        if INDEXED:
            index = tl.load(src_idx + i, mask=keep != 0, other=0, cache_modifier=CACHE)
        else:
            index = i + src_idx
        tl.store(out_idx + dst, index, mask=keep != 0)
        if WRITE_BITS:
            tl.store(out_bits + dst, bits, mask=keep != 0)
        pos += tl.sum(keep, 0)
        eq_seen += tl.sum(eq, 0)
        start += BLOCK


@triton.jit
def _shortlist_pass(src, src_off, m, tau, short_bits, short_idx, CAP, BLOCK: tl.constexpr, SKIP_EMPTY: tl.constexpr):
    """One pass over src[0:m): every value > tau with its position (+ src_off) into short_*[0:CAP),
    in order of position; returns (count(> tau), count(== tau)). SKIP_EMPTY: a tile's scan and
    stores run only where it keeps a value; that puts a reduction before the scan, on every tile's
    critical path, so it is asked for only where most tiles are likely to keep nothing."""
    offs = tl.arange(0, BLOCK)
    c = tl.zeros([], tl.int32)
    n_eq = tl.zeros([], tl.int32)
    for start in range(0, m, BLOCK):
        i = start + offs
        bits = tl.load(src + i, mask=i < m, other=-1)
        keep = (bits > tau).to(tl.int32)
        if SKIP_EMPTY:
            kept = tl.sum(keep, 0)
            if kept > 0:
                _append(bits, i + src_off, keep, c, short_bits, short_idx, CAP)
            c += kept
        else:
            _append(bits, i + src_off, keep, c, short_bits, short_idx, CAP)
            c += tl.sum(keep, 0)
        n_eq += tl.sum((bits == tau).to(tl.int32), 0)
    return c, n_eq


@triton.jit
def _append(bits, index, keep, c, short_bits, short_idx, CAP):
    """The kept (bits, index) of a tile, in order, to short_*[c:) (those that fit below CAP)."""
    dst = c + tl.cumsum(keep, 0) - keep
    w = (keep != 0) & (dst < CAP)
    tl.store(short_bits + dst, bits, mask=w)
    tl.store(short_idx + dst, index, mask=w)


@triton.jit
def _kth_in_registers(bits, kk, EARLY: tl.constexpr):
    """``_kth_pattern``'s radix bisection over a tensor of patterns held in registers (entries
    that are not values read -1): (T, exact), with the early exit where EARLY. Each pass counts
    the registers: nothing is re-read."""
    prefix = tl.zeros([], tl.int32)
    exact = kk < 0  # False, as a scalar tensor: it is carried through the loop
    for p in range(8):
        if not exact:
            cnt = tl.sum((bits[None, :] >= _candidates(prefix, p)[:, None]).to(tl.int32), 1)
            add, at_d = _next_digit(cnt, kk, p)
            prefix = prefix | add
            if EARLY:
                exact = at_d == kk
    return prefix, exact


@triton.jit
def _sample_threshold(src, n, kk, STRIDE: tl.constexpr, SAMPLE: tl.constexpr, EARLY: tl.constexpr):
    """(tau, single): tau is about the ((1.5 kk + 16 STRIDE) / stride)-th largest of every stride-th
    value of src[0:n), stride = STRIDE, or more where that would exceed SAMPLE values (about
    1.5 kk + 16 STRIDE values of the row reach it either way); single != 0 where the sample is one
    value (tau is that value; checked with EARLY). The sample is loaded once and held in registers
    (re-read strided from L2 per radix pass, it cost 20 us of 146 at 128K, session 23)."""
    stride = tl.maximum(tl.cdiv(n, SAMPLE), STRIDE)
    ns = n // stride
    rank = tl.minimum(ns, tl.maximum((kk * 3 // 2 + 16 * STRIDE) // stride, 1))
    offs = tl.arange(0, SAMPLE)
    bits = tl.load(src + offs * stride, mask=offs < ns, other=-1)  # -1 < every candidate
    lo = tl.min(tl.where(offs < ns, bits, 2147483647), 0)
    single = (lo == tl.max(bits, 0)) & EARLY
    if single:
        tau = lo
    else:
        tau, _ = _kth_in_registers(bits, rank, EARLY)
    return tau, single


@triton.jit
def _threshold_and_shortlist(sample_src, n, kk, src, src_off, m, short_bits, short_idx, CAP, BLOCK: tl.constexpr,
                             EARLY: tl.constexpr, STRIDE: tl.constexpr):
    """tau from a sample of sample_src[0:n) (``_sample_threshold``, 2 BLOCK values at most), then
    ``_shortlist_pass`` over src[0:m) (positions + src_off): (tau, count(> tau), count(== tau))
    there. Where the sample is one value, the pass skips the tiles that keep nothing."""
    tau, single = _sample_threshold(sample_src, n, kk, STRIDE, 2 * BLOCK, EARLY)
    if single != 0:  # a sample of one value: most tiles are likely to keep nothing
        c, n_eq = _shortlist_pass(src, src_off, m, tau, short_bits, short_idx, CAP, BLOCK, True)
    else:
        c, n_eq = _shortlist_pass(src, src_off, m, tau, short_bits, short_idx, CAP, BLOCK, False)
    return tau, c, n_eq


@triton.jit
def _select_given_shortlist(src, src_off, m, kk, tau, c, n_eq, short_bits, short_idx, out_idx, out_bits, CAP,
                            BLOCK: tl.constexpr, WRITE_BITS: tl.constexpr, EARLY: tl.constexpr):
    """The top-kk of src[0:m) given short_*[0:c), its values > tau in order of position (c = -1: no
    shortlist), and n_eq = count(== tau): c in [kk, CAP]: the selection among the shortlist (the
    top-kk and all ties of its last value are on it); c < kk <= c + n_eq: tau is the kk-th largest
    value, and one pass takes every value > tau and the first kk - c ties (rows of many equal
    masses); otherwise the whole of src is selected."""
    if (c >= kk) & (c <= CAP):
        _select(short_bits, short_idx, c, kk, out_idx, out_bits, BLOCK, True, WRITE_BITS, ".cg", EARLY)
    elif (c >= 0) & (c < kk) & (c + n_eq >= kk):
        _compact(src, src_off, m, tau, kk - c, kk, out_idx, out_bits, BLOCK, False, WRITE_BITS, "")
    else:
        _select(src, src_off, m, kk, out_idx, out_bits, BLOCK, False, WRITE_BITS, "", EARLY)


@triton.jit
def _select_shortlisted(src, src_off, m, kk, out_idx, out_bits, short_bits, short_idx, CAP, BLOCK: tl.constexpr,
                        WRITE_BITS: tl.constexpr, EARLY: tl.constexpr, STRIDE: tl.constexpr):
    """``_select(src, src_off, m, kk, ...)`` (positions offset by src_off), by way of a shortlist
    (module docstring) where m exceeds its capacity: ``_threshold_and_shortlist`` over src, then
    ``_select_given_shortlist``."""
    c = tl.full([], -1, tl.int32)
    n_eq = tl.zeros([], tl.int32)
    tau = tl.zeros([], tl.int32)
    if (m > CAP) & (kk > 0):
        tau, c, n_eq = _threshold_and_shortlist(src, m, kk, src, src_off, m, short_bits, short_idx, CAP, BLOCK,
                                                EARLY, STRIDE)
        tl.debug_barrier()  # every thread's shortlist entries stored before any is read back
    _select_given_shortlist(src, src_off, m, kk, tau, c, n_eq, short_bits, short_idx, out_idx, out_bits, CAP, BLOCK,
                            WRITE_BITS, EARLY)


@triton.jit
def _select_split_shortlist(row, n, kk, s, out, slot_bits, slot_idx, merged_bits, merged_idx, row_tallies, arrival,
                            CAP, S: tl.constexpr, BLOCK: tl.constexpr, EARLY: tl.constexpr, STRIDE: tl.constexpr):
    """Program s of S selecting one row's top-kk into ``out`` (module docstring, "Split shortlist").
    Every program finds the same tau from the whole row's sample and shortlists its segment's
    values > tau into its own slot of CAP (tally: its count(> tau), count(== tau)); the last to
    arrive concatenates the slots in segment order, which is the row's shortlist in order of
    position, as one program would have written it, and decides as ``_select_shortlisted`` does."""
    offs = tl.arange(0, BLOCK)
    use = (n > CAP) & (kk > 0)  # else the row is selected whole, as _select_shortlisted does
    seg = tl.cdiv(n, S)
    lo = tl.minimum(s * seg, n)
    c = tl.zeros([], tl.int32)
    n_eq = tl.zeros([], tl.int32)
    tau = tl.zeros([], tl.int32)
    if use:
        tau, c, n_eq = _threshold_and_shortlist(row, n, kk, row + lo, lo, tl.minimum(n - lo, seg), slot_bits,
                                                slot_idx, CAP, BLOCK, EARLY, STRIDE)
    tl.store(row_tallies + 2 * s, c)
    tl.store(row_tallies + 2 * s + 1, n_eq)
    # As the segments' merge below: stores, barrier, release; acquire, barrier, reads past L1.
    tl.debug_barrier()
    last = tl.atomic_add(arrival, 1, sem="acq_rel", scope="gpu") == S - 1
    tl.debug_barrier()
    if last:
        tl.atomic_xchg(arrival, 0)  # ready for the next launch
        c_all = tl.zeros([], tl.int32)  # count(> tau) over the row
        eq_all = tl.zeros([], tl.int32)
        for j in range(S):
            c_all += tl.load(row_tallies + 2 * j, cache_modifier=".cg")
            eq_all += tl.load(row_tallies + 2 * j + 1, cache_modifier=".cg")
        c_all = tl.where(use, c_all, -1)
        if (c_all >= kk) & (c_all <= CAP):  # every slot held its values (each c_j <= c_all <= CAP)
            pos = tl.zeros([], tl.int32)
            for j in range(S):
                cj = tl.load(row_tallies + 2 * j, cache_modifier=".cg")
                src = (j - s) * CAP  # slot j, from this program's slot
                for start in range(0, cj, BLOCK):
                    i = start + offs
                    b = tl.load(slot_bits + src + i, mask=i < cj, cache_modifier=".cg")
                    x = tl.load(slot_idx + src + i, mask=i < cj, cache_modifier=".cg")
                    tl.store(merged_bits + pos + i, b, mask=i < cj)
                    tl.store(merged_idx + pos + i, x, mask=i < cj)
                pos += cj
            tl.debug_barrier()  # every thread's merged entries stored before any is read back
        _select_given_shortlist(row, 0, n, kk, tau, c_all, eq_all, merged_bits, merged_idx, out, out, CAP, BLOCK,
                                False, EARLY)


@triton.jit(do_not_specialize=['K', 's_mb', 's_mh', 's_ib', 's_ih', 'CAP'])  # per-step sizes: no recompiles
def _topk_rows(mass_ptr, len_ptr, bud_ptr, idx_ptr, cnt_ptr, scratch_bits, scratch_idx, arrivals, short_bits, short_idx,
               K, CAP, s_mb, s_mh, s_ib, s_ih, Hkv, S: tl.constexpr, BLOCK: tl.constexpr, HAS_BUDGET: tl.constexpr,
               EARLY: tl.constexpr, STRIDE: tl.constexpr):
    s = tl.program_id(0)
    h = tl.program_id(1)
    b = tl.program_id(2)
    row = (mass_ptr + b.to(tl.int64) * s_mb + h * s_mh).to(tl.pointer_type(tl.int32))  # read as bits
    out = idx_ptr + b.to(tl.int64) * s_ib + h * s_ih
    n = tl.load(len_ptr + b)
    kk = tl.minimum(K, n)
    if HAS_BUDGET:  # per-request budget; K is then only the staging width
        kk = tl.minimum(kk, tl.load(bud_ptr + b))
    r = b * Hkv + h
    short = (r.to(tl.int64) * S + s) * CAP  # this program's shortlist (STRIDE > 0)
    if S == 1:
        if STRIDE > 0:
            _select_shortlisted(row, 0, n, kk, out, out, short_bits + short, short_idx + short, CAP, BLOCK, False,
                                EARLY, STRIDE)
        else:
            _select(row, 0, n, kk, out, out, BLOCK, False, False, "", EARLY)
    elif STRIDE > 0:  # short_*: every row's S slots of CAP, then every row's merged list of CAP, then tallies
        rows = (Hkv * tl.num_programs(2)).to(tl.int64)
        merged = rows * S * CAP + r.to(tl.int64) * CAP
        tallies = rows * S * CAP + rows * CAP + r.to(tl.int64) * S * 2  # (count > tau, count == tau) per slot
        _select_split_shortlist(row, n, kk, s, out, short_bits + short, short_idx + short, short_bits + merged,
                                short_idx + merged, short_bits + tallies, arrivals + r, CAP, S, BLOCK, EARLY, STRIDE)
    else:
        seg = tl.cdiv(n, S)
        lo = tl.minimum(s * seg, n)
        m = tl.minimum(n - lo, seg)
        at = r.to(tl.int64) * S * K + s * K  # the row's scratch: S slices of K (bits, index) pairs
        local_kk = tl.minimum(kk, m)
        if STRIDE > 0:
            _select_shortlisted(row + lo, lo, m, local_kk, scratch_idx + at, scratch_bits + at, short_bits + short,
                                short_idx + short, CAP, BLOCK, True, EARLY, STRIDE)
        else:
            _select(row + lo, lo, m, local_kk, scratch_idx + at, scratch_bits + at, BLOCK, False, True, "", EARLY)
        for start in range(local_kk, K, BLOCK):  # the slice's tail reads as -1: below every pattern
            i = start + tl.arange(0, BLOCK)
            tl.store(scratch_bits + at + i, tl.full([BLOCK], -1, tl.int32), mask=i < K)
        # The last program of the row to arrive sees every other one's scratch: each program's
        # threads finish their stores (barrier) before its release, and the acquire precedes the reads.
        tl.debug_barrier()
        last = tl.atomic_add(arrivals + r, 1, sem="acq_rel", scope="gpu") == S - 1
        tl.debug_barrier()
        if last:
            tl.atomic_xchg(arrivals + r, 0)  # ready for the next launch
            row_at = r.to(tl.int64) * S * K  # slices in segment order: ascending by index
            _select(scratch_bits + row_at, scratch_idx + row_at, S * K, kk, out, out, BLOCK, True, False, ".cg", EARLY)
    if s == 0:
        for start in range(kk, K, BLOCK):
            i = start + tl.arange(0, BLOCK)
            tl.store(out + i, tl.zeros([BLOCK], tl.int32), mask=i < K)
        tl.store(cnt_ptr + b * Hkv + h, kk)


def _workspace(rows: int, pairs: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(arrival counters >= rows, bits [pairs], indices [pairs]) as int32: the scratch holds the
    segments' selections and the shortlists (``_common.device_buffer``)."""
    buf = device_buffer("topk", 2 * pairs, device)
    return arrival_counters(rows, device), buf[:pairs], buf[pairs:2 * pairs]


def shortlist_cap(k: int, stride: int) -> int:
    """The values a program's shortlist holds: the threshold lets through about 1.5 k + 16 stride values
    (``_select_shortlisted``), so twice k plus a margin holds them unless the sample misleads."""
    return next_pow2(2 * k + 32 * stride)


def segments_for(rows: int, n_max: int, k: int, device: torch.device, shortlist: bool = True) -> int:
    """Programs per row: as many as keep the grid within one program per SM. Without the
    shortlist each segment also stays over 4k values and 2048 (the last program re-reads S * k of
    them); with it (the split shortlist) each keeps at least four tiles of 4096.
    On the H100 (examples/gpu_topk.py, NVIDIA H100 80GB HBM3): without the shortlist, 32 rows of
    128K took 295 us with 4 segments against 700 with one (session 8). With the split shortlist
    (session 22, call 22f), rows of 128K at 3%: 32 rows 149 us with one program per row, 125 with
    2, 110 with 4, 145-173 with 8; 64 rows 166 with one, 140 with 2, 170 with 4; 256 rows of 32K
    85 with one, 111 with 2."""
    want = num_sms(device) // max(rows, 1)
    fit = n_max // 16384 if shortlist else n_max // max(4 * k, 2048)
    return max(1, min(want, fit, 32))


def tile_for(rows: int) -> tuple[int, int]:
    """(values per tile, warps): smaller programs where rows fill the SMs. On the H100 with the
    shortlist (examples/gpu_topk.py, session 18), 128 and 256 rows of 32K were fastest with
    (2048, 4): 83 against 101 us at 256 rows; 32 rows of 128K with (4096, 8): 130 against 166 us."""
    return (2048, 4) if rows >= 128 else (4096, 8)


def topk_select(mass: torch.Tensor, cold_lens: torch.Tensor, k: int, idx=None, counts=None,
                block=None, num_warps=None, budgets: torch.Tensor | None = None,
                segments: int | None = None, early_exit: bool = True,
                sample_stride: int = SAMPLE_STRIDE) -> tuple[torch.Tensor, torch.Tensor]:
    """Same contract as ``topk_ref``: (idx [B, Hkv, k] int32 ascending, counts [B, Hkv] int32).
    ``budgets`` [B] int32 caps each request's count below ``k`` (per-request budgets).
    ``segments``: programs per row (default ``segments_for``; 1: one program per row).
    ``early_exit=False`` runs all radix passes (same output; for measuring the exit).
    ``sample_stride``: the shortlist's threshold comes from every so many values (0: no
    shortlist, every radix pass over the whole row). Same output either way.
    ``block``, ``num_warps``: default ``tile_for``."""
    B, Hkv, n_max = mass.shape
    assert mass.dtype == torch.float32 and mass.stride(-1) == 1
    d_block, d_warps = tile_for(B * Hkv)
    block, num_warps = block or d_block, num_warps or d_warps
    if segments is not None and not 1 <= segments <= 64:
        raise ValueError(f"segments={segments}: must be in [1, 64]")
    if sample_stride < 0:
        raise ValueError(f"sample_stride={sample_stride}: must be >= 0 (0: no shortlist)")
    idx = torch.empty(B, Hkv, k, dtype=torch.int32, device=mass.device) if idx is None else idx
    counts = torch.empty(B, Hkv, dtype=torch.int32, device=mass.device) if counts is None else counts
    assert counts.is_contiguous() and idx.stride(-1) == 1
    S = segments or segments_for(B * Hkv, n_max, k, mass.device, sample_stride > 0)
    S = S if k > 0 else 1
    cap = shortlist_cap(k, sample_stride) if sample_stride and k > 0 else 0
    split_short = S > 1 and cap > 0  # the split shortlist: its merged lists and tallies after the slots
    seg_k = k if S > 1 and not split_short else 0  # the segments' selections, then the shortlists
    rows = B * Hkv
    if seg_k or cap:
        pairs = rows * S * (seg_k + cap) + (rows * (cap + 2 * S) if split_short else 0)
        arrivals, bits, index = _workspace(rows, pairs, mass.device)
        split = rows * S * seg_k
        scratch_bits, short_bits, scratch_idx, short_idx = bits[:split], bits[split:], index[:split], index[split:]
    else:
        arrivals = scratch_bits = scratch_idx = short_bits = short_idx = counts  # unused
    bud = budgets if budgets is not None else cold_lens
    _topk_rows[(S, Hkv, B)](mass, cold_lens, bud, idx, counts, scratch_bits, scratch_idx, arrivals, short_bits,
                            short_idx, k, max(cap, 1), mass.stride(0), mass.stride(1), idx.stride(0), idx.stride(1),
                            Hkv, S=S, BLOCK=block, HAS_BUDGET=budgets is not None, EARLY=early_exit,
                            STRIDE=sample_stride if cap else 0, num_warps=num_warps)
    return idx, counts
