"""Top-k per (request, KV head) over the scorer's mass. Reference:
``vllm_kvoffload/ops/topk_ref.py`` (same arguments and layouts).

Grid (Hkv, B): one program per row of n = cold_lens[b] masses, kk = min(k, n).
Masses are fp32 >= 0, so their int32 bit patterns order like the values.
  1. radix bisection on the bits: T = the largest pattern with count(bits >= T) >= kk,
     4 bits per pass (16 candidate thresholds counted at once), 8 passes for bits
     30..0; T is then exactly the kk-th largest value;
  2. one pass counts n_gt = count(bits > T); need_eq = kk - n_gt ties are taken;
  3. compaction in index order: keep bits > T, and the first need_eq of bits == T
     (running count + exclusive tl.cumsum), so the output is ascending, like
     ``ops.select``; the tail [kk, k) is written with 0.
Every pass re-reads the row (n*4 bytes, from L2 after the first). Rows may hold
-inf past n (never read). NaN masses are not supported.

``topk_select_fast``: same contract, same outputs (ties: lowest index first), one launch, one
program per row, 4 passes over the row instead of 10:
  1. radix select with 11/10/10-bit digits counted by ``tl.histogram`` (2048 bins; on NVIDIA
     one shared-memory atomic per counted element, not 16 compares): 3 passes settle bits
     30..20 (exponent + 3 mantissa bits), 19..10 and 9..0 of T. A pass counts only the
     candidates (bits above its digit equal T's bits settled so far) and picks the largest
     digit d whose count of candidates >= d still reaches kk - above; the candidates above d
     are > T and join ``above``. Invariants, kk >= 1: the candidates number >= kk - above >= 1
     (so some digit qualifies), every non-candidate is either counted in ``above`` (> T) or
     < T. After the last pass T is exactly the kk-th largest pattern and above = count(> T),
     so need_eq = kk - above needs no count pass;
  2. compaction as above, with one scan per tile: the > T and == T flags are packed in one
     int32 (1 and 1 << 16) and scanned over [BLOCK // 32, 32] tiles (rows of a warp's 32
     lanes, then the row sums), giving each element's rank among kept-by-value elements and
     among ties at once.
Loop bodies per element (sm_90 SASS, 16 elements per thread): ~15-18 instructions per
histogram pass and ~50 for the compaction, vs ~65 per bisection pass and ~110 for the
baseline's compaction: ~100 instead of ~640 in all. Bit patterns are clamped at 0, so -0.0
reads as +0.0 (the baseline orders it below +0.0).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import num_sms


@triton.jit(do_not_specialize=['K', 's_mb', 's_mh', 's_ib', 's_ih'])  # per-step sizes: no recompiles
def _topk_rows(mass_ptr, len_ptr, bud_ptr, idx_ptr, cnt_ptr, K, s_mb, s_mh, s_ib, s_ih, Hkv,
               BLOCK: tl.constexpr, HAS_BUDGET: tl.constexpr):
    h = tl.program_id(0)
    b = tl.program_id(1)
    row = mass_ptr + b.to(tl.int64) * s_mb + h * s_mh
    out = idx_ptr + b.to(tl.int64) * s_ib + h * s_ih
    n = tl.load(len_ptr + b)
    kk = tl.minimum(K, n)
    if HAS_BUDGET:  # per-request budget; K is then only the staging width
        kk = tl.minimum(kk, tl.load(bud_ptr + b))
    offs = tl.arange(0, BLOCK)
    digit = tl.arange(0, 16)

    prefix = tl.zeros([], tl.int32)
    for p in range(8):
        shift = tl.maximum(27 - 4 * p, 0)
        width = 31 - 4 * p - shift  # 4, ..., 4, then 3 for bits 2..0
        cand = prefix | (digit << shift)
        cnt = tl.zeros([16], tl.int32)
        for start in range(0, n, BLOCK):
            i = start + offs
            bits = tl.load(row + i, mask=i < n, other=-1.0).to(tl.int32, bitcast=True)  # -1.0 < every candidate
            cnt += tl.sum((bits[None, :] >= cand[:, None]).to(tl.int32), 1)
        ok = (cnt >= kk) & (digit < (1 << width))
        d = tl.sum(ok.to(tl.int32), 0) - 1  # count(>= cand) falls with the digit; digit 0 always ok
        prefix = prefix | (tl.maximum(d, 0) << shift)

    n_gt = tl.zeros([], tl.int32)
    for start in range(0, n, BLOCK):
        i = start + offs
        bits = tl.load(row + i, mask=i < n, other=-1.0).to(tl.int32, bitcast=True)
        n_gt += tl.sum((bits > prefix).to(tl.int32), 0)
    need_eq = kk - n_gt

    pos = tl.zeros([], tl.int32)
    eq_seen = tl.zeros([], tl.int32)
    for start in range(0, n, BLOCK):
        i = start + offs
        bits = tl.load(row + i, mask=i < n, other=-1.0).to(tl.int32, bitcast=True)
        eq = (bits == prefix).to(tl.int32)
        eq_rank = eq_seen + tl.cumsum(eq, 0) - eq
        keep = ((bits > prefix) | ((eq != 0) & (eq_rank < need_eq))).to(tl.int32)
        dst = pos + tl.cumsum(keep, 0) - keep
        tl.store(out + dst, i, mask=keep != 0)
        pos += tl.sum(keep, 0)
        eq_seen += tl.sum(eq, 0)
    for start in range(kk, K, BLOCK):
        i = start + offs
        tl.store(out + i, tl.zeros([BLOCK], tl.int32), mask=i < K)
    tl.store(cnt_ptr + b * Hkv + h, kk)


def topk_select(mass: torch.Tensor, cold_lens: torch.Tensor, k: int, idx=None, counts=None,
                block=4096, num_warps=8, budgets: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Same contract as ``topk_ref``: (idx [B, Hkv, k] int32 ascending, counts [B, Hkv] int32).
    ``budgets`` [B] int32 caps each request's count below ``k`` (per-request budgets).
    block=4096, num_warps=8 were fastest on H100 at 32K cold tokens (288 us for B=32, Hkv=8)."""
    B, Hkv, _ = mass.shape
    assert mass.dtype == torch.float32 and mass.stride(-1) == 1
    idx = torch.empty(B, Hkv, k, dtype=torch.int32, device=mass.device) if idx is None else idx
    counts = torch.empty(B, Hkv, dtype=torch.int32, device=mass.device) if counts is None else counts
    assert counts.is_contiguous() and idx.stride(-1) == 1
    bud = budgets if budgets is not None else cold_lens
    _topk_rows[(Hkv, B)](mass, cold_lens, bud, idx, counts, k, mass.stride(0), mass.stride(1),
                         idx.stride(0), idx.stride(1), Hkv, BLOCK=block, HAS_BUDGET=budgets is not None,
                         num_warps=num_warps)
    return idx, counts


# ----------------------------------------------------------------------------- fast variant
@triton.jit
def _mass_bits(ptr, i, n):
    """int32 bit patterns of the masses at i < n, clamped at 0 (-0.0 reads as +0.0); 0 past n."""
    return tl.maximum(tl.load(ptr + i, mask=i < n, other=0), 0)


@triton.jit
def _radix_pass(row, n, kk, prefix, above, HI: tl.constexpr, SHIFT: tl.constexpr, BLOCK: tl.constexpr):
    """Settles bits HI-1..SHIFT of T, the kk-th largest pattern of the row. In: prefix = T's bits
    from HI up, above = count(bits > T) among the elements whose bits from HI up differ from
    prefix's (every other element is < T). Out: the same with HI := SHIFT."""
    DMASK: tl.constexpr = (1 << (HI - SHIFT)) - 1
    digit = tl.arange(0, 2048)  # 2048 bins >= the 2**(HI - SHIFT) digits
    offs = tl.arange(0, BLOCK)
    hist = tl.zeros([2048], tl.int32)
    for start in range(0, n, BLOCK):
        bits = _mass_bits(row + start, offs, n - start)
        cand = offs < n - start
        if HI < 31:  # candidates: bits from HI up equal prefix's (bit 31 is 0 for all)
            cand = cand & ((bits >> HI) == (prefix >> HI))
        hist += tl.histogram((bits >> SHIFT) & DMASK, 2048, mask=cand)
    ge = tl.cumsum(hist, 0, reverse=True)  # ge[d] = candidates of digit >= d, falls with d
    d = tl.sum(((ge >= kk - above) & (digit <= DMASK)).to(tl.int32), 0) - 1  # >= 0: ge[0] >= kk - above
    above += tl.sum(tl.where(digit == d + 1, ge, 0), 0)  # candidates of larger digits are > T
    return prefix | (d << SHIFT), above


@triton.jit(do_not_specialize=['K', 's_mb', 's_mh', 's_ib', 's_ih'])  # per-step sizes: no recompiles
def _topk_rows_fast(mass_ptr, len_ptr, bud_ptr, idx_ptr, cnt_ptr, K, s_mb, s_mh, s_ib, s_ih, Hkv,
                    BLOCK: tl.constexpr, HAS_BUDGET: tl.constexpr):
    h = tl.program_id(0)
    b = tl.program_id(1)
    row = (mass_ptr + b.to(tl.int64) * s_mb + h * s_mh).to(tl.pointer_type(tl.int32))  # read as bits
    out = idx_ptr + b.to(tl.int64) * s_ib + h * s_ih
    n = tl.load(len_ptr + b)
    kk = tl.minimum(K, n)
    if HAS_BUDGET:  # per-request budget; K is then only the staging width
        kk = tl.minimum(kk, tl.load(bud_ptr + b))
    n = tl.where(kk > 0, n, 0)  # nothing to select: read nothing

    prefix = tl.zeros([], tl.int32)  # T's bits settled so far
    above = tl.zeros([], tl.int32)  # elements known to be > T
    prefix, above = _radix_pass(row, n, kk, prefix, above, 31, 20, BLOCK)  # exponent, 3 mantissa bits
    prefix, above = _radix_pass(row, n, kk, prefix, above, 20, 10, BLOCK)
    prefix, above = _radix_pass(row, n, kk, prefix, above, 10, 0, BLOCK)  # prefix = T
    need_eq = kk - above  # ties at T to take, lowest index first (>= 1 when kk >= 1)

    # compaction; a tile is [BLOCK // 32, 32] so its scan runs along warps' rows of 32
    offs = tl.arange(0, BLOCK // 32)[:, None] * 32 + tl.arange(0, 32)[None, :]
    pos = tl.zeros([], tl.int32)
    eq_seen = tl.zeros([], tl.int32)
    for start in range(0, n, BLOCK):
        bits = _mass_bits(row + start, offs, n - start)
        packed = (bits > prefix).to(tl.int32) + ((bits == prefix).to(tl.int32) << 16)  # > T: 1, == T: 1 << 16
        packed = tl.where(offs < n - start, packed, 0)  # BLOCK < 2**16: both counts in one scan
        rows = tl.sum(packed, 1)
        before = tl.cumsum(packed, 1) - packed + (tl.cumsum(rows, 0) - rows)[:, None]  # in the tile
        quota = tl.maximum(need_eq - eq_seen, 0)  # ties still to take
        keep = (packed == 1) | ((packed != 0) & ((before >> 16) < quota))
        dst = pos + (before & 0xFFFF) + tl.minimum(before >> 16, quota)
        tl.store(out + dst, start + offs, mask=keep)
        tot = tl.sum(rows, 0)
        pos += (tot & 0xFFFF) + tl.minimum(tot >> 16, quota)
        eq_seen += tot >> 16
    for start in range(kk, K, BLOCK):
        i = start + tl.arange(0, BLOCK)
        tl.store(out + i, tl.zeros([BLOCK], tl.int32), mask=i < K)
    tl.store(cnt_ptr + b * Hkv + h, kk)


def topk_select_fast(mass: torch.Tensor, cold_lens: torch.Tensor, k: int, idx=None, counts=None,
                     block=None, num_warps=None, budgets: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``topk_select``'s contract and outputs (ties at the k-th value: lowest index first), by
    3 histogram passes + 1 compaction pass per row (module docstring). block: power of two in
    [32, 2**15]. Defaults (untimed guesses): when the B*Hkv rows do not fill the SMs, each of
    their programs gets 16 warps and 8192-element tiles, else 8 warps and 4096 (the baseline's
    H100 setting) so that several programs share an SM; never more warps than block // 32."""
    B, Hkv, _ = mass.shape
    assert mass.dtype == torch.float32 and mass.stride(-1) == 1
    few_rows = B * Hkv <= num_sms(mass.device)
    block = block or (8192 if few_rows else 4096)
    assert 32 <= block <= 2**15 and block & (block - 1) == 0  # packed counts: < 2**16 per tile
    num_warps = num_warps or min(16 if few_rows else 8, block // 32)
    idx = torch.empty(B, Hkv, k, dtype=torch.int32, device=mass.device) if idx is None else idx
    counts = torch.empty(B, Hkv, dtype=torch.int32, device=mass.device) if counts is None else counts
    assert counts.is_contiguous() and idx.stride(-1) == 1
    bud = budgets if budgets is not None else cold_lens
    _topk_rows_fast[(Hkv, B)](mass, cold_lens, bud, idx, counts, k, mass.stride(0), mass.stride(1),
                              idx.stride(0), idx.stride(1), Hkv, BLOCK=block, HAS_BUDGET=budgets is not None,
                              num_warps=num_warps)
    return idx, counts
