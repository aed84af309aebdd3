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
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


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
