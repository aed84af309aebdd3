"""Fused scoring of cold tokens from compact summaries: qlandmark, qlandmark-scalar, infinigen and lrqk.

Each scorer's torch ``cold_logits`` (``vllm_kvoffload/scorers/<name>.py``, the reference)
rebuilds an estimated key per cold token and takes ``scale * q.k``; the mass is the
softmax over the row's cold tokens, summed over the GQA group. Here one program per
(chunk of cold tokens, KV head, request) walks its chunk one block at a time, reads the
block's summary once (never a rebuilt key in HBM), and writes log2-scaled logits plus
per-chunk (max, sum) into the workspace of ``score.py``, whose second pass
(``finish_mass``) turns them into masses. Per block and KV head ``h`` (query heads
``hG..hG+G-1``, token ``t`` of the block):

  qlandmark  summary uint8 [BS, D/4 + 2]: codes c[t, j] into a [256, 4] codebook, then a
             bf16 scale s[t] (two bytes, little-endian). l = (qH) . (cb[c[t, d/4], d%4] * s[t]),
             with the query already rotated (qH, fp32) by the dispatcher.
  qscalar    summary uint8 [BS * D/4 codes | BS * 2 scale bytes] (planar): the level of channel
             4j+k in bits 6-2k..7-2k of code byte j, a bf16 scale s[t] per token.
             l = s[t] * STEP * (sum_d (qH)_d level_d - 1.5 sum_d (qH)_d), one tensor-core dot
             per k over channels k::4 (the levels need a shift and a mask, no table).
  infinigen  summary bf16 [BS + 1, R]: row 0 the block's R kept channel indices, rows 1.. the
             keys on them. l = q[idx] . part[t].
  lrqk       summary bf16 [R * D + BS * R]: basis B [R, D], then coefficients A [BS, R].
             l = (q B^T) . A[t].

qlandmark walks tiles of several blocks (64 tokens by default) and holds the 4 KB codebook in
the program (``tl.gather`` from registers / shared memory): on an H100 that is 6x faster than
gathering each code's entry from global memory (``local_cb=False``, kept as the cross-check),
see ``examples/gpu_scorers.py`` and docs/kernels.md. The per-block kinds walk one block per step.

Tile constraints: D and BS powers of two, BS >= 16 (``tl.dot``); the dispatchers raise
otherwise, and the scorers fall back to their torch path for smaller blocks.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import LOG2E, cdiv, interpreting, mma, next_pow2
from .score import finish_mass, plan, workspace

NEG = tl.constexpr(-1.0e30)
QLANDMARK, INFINIGEN, LRQK, QSCALAR = 0, 1, 2, 3
VEC = 4  # channels per qlandmark code


@triton.jit
def _qlandmark_tile(tok, tmask, cb_ptr, cb, q, D: tl.constexpr, BLOCK_N: tl.constexpr, LOCAL_CB: tl.constexpr):
    # tok [BLOCK_N]: each token's summary row (D/4 codes, then 2 scale bytes)
    offs_j = tl.arange(0, D // 4)
    offs_v = tl.arange(0, 4)
    code = tl.load(tok[:, None] + offs_j[None, :], mask=tmask[:, None], other=0).to(tl.int32)  # [N, D/4]
    entry = (code * 4)[:, :, None] + offs_v[None, None, :]                        # [N, D/4, 4]
    if LOCAL_CB:  # the codebook held by the program (registers / shared memory)
        k_unit = tl.reshape(tl.gather(cb, tl.reshape(entry, (BLOCK_N * D,)), 0), (BLOCK_N, D))
    else:  # gathered from global memory (L1)
        k_unit = tl.reshape(tl.load(cb_ptr + entry), (BLOCK_N, D))                 # channel 4j + v
    lo = tl.load(tok + D // 4, mask=tmask, other=0).to(tl.uint16)
    hi = tl.load(tok + D // 4 + 1, mask=tmask, other=0).to(tl.uint16)
    s = (lo | (hi << 8)).to(tl.bfloat16, bitcast=True).to(tl.float32)            # [N]
    return tl.dot(q, tl.trans(k_unit)) * s[None, :]                               # [G_PAD, N]


@triton.jit
def _levels_packed(code, shift: tl.constexpr):
    """((code >> shift) & 3) as int8, four codes per 32-bit register: one shift and one mask
    for four levels. Byte-wise exact whatever bytes share a register: each byte's two bits sit
    below its own top (shift <= 6) and the mask keeps only them."""
    if shift == 0:
        return tl.inline_asm_elementwise("and.b32 $0, $1, 0x03030303;", "=r,r", [code], dtype=tl.int8,
                                         is_pure=True, pack=4)
    elif shift == 2:
        return tl.inline_asm_elementwise("shr.b32 $0, $1, 2;\n\tand.b32 $0, $0, 0x03030303;", "=r,r", [code],
                                         dtype=tl.int8, is_pure=True, pack=4)
    elif shift == 4:
        return tl.inline_asm_elementwise("shr.b32 $0, $1, 4;\n\tand.b32 $0, $0, 0x03030303;", "=r,r", [code],
                                         dtype=tl.int8, is_pure=True, pack=4)
    else:
        return tl.inline_asm_elementwise("shr.b32 $0, $1, 6;\n\tand.b32 $0, $0, 0x03030303;", "=r,r", [code],
                                         dtype=tl.int8, is_pure=True, pack=4)


@triton.jit
def _qscalar_levels(code, shift: tl.constexpr, DECODE: tl.constexpr, F32: tl.constexpr):
    """The 2-bit levels at ``shift`` of codes [N, D/4] uint8, as the dot's operand type."""
    if DECODE == 3 and not F32:  # int8, packed (the interpreter has no inline assembly: decoding 2's ops)
        return _levels_packed(code, shift)
    lvl = (code >> shift) & 3
    if DECODE == 0:  # converted to fp16: 0..3
        return lvl.to(tl.float16)
    elif DECODE == 1:  # fp16 bit pattern of 1 + level / 4 (exponent of 1.0, level in the top mantissa bits)
        return ((lvl.to(tl.uint16) << 8) | 0x3C00).to(tl.float16, bitcast=True)
    else:  # int8: 0..3
        return lvl.to(tl.int8, bitcast=True)


@triton.jit
def _qscalar_tile(blk, tin, tmask, q0, q1, q2, q3, D: tl.constexpr, BS: tl.constexpr, DECODE: tl.constexpr,
                  F32: tl.constexpr):
    # blk [N]: each token's block row (slot, KV head); tin [N]: the token's place in its block.
    # q0..q3 [G_PAD, D/4]: the rotated query's channels k::4, in the levels' operand type.
    # Returns sum_d q_d * level_d [G_PAD, N] (DECODE 1: sum_d q_d * (1 + level_d / 4)), unscaled:
    # int32 for the int8 decodings (exact), fp32 otherwise.
    offs_j = tl.arange(0, D // 4)
    code = tl.load(blk[:, None] + (tin * (D // 4))[:, None] + offs_j[None, :], mask=tmask[:, None], other=0)
    if DECODE >= 2:
        acc = tl.dot(q0, tl.trans(_qscalar_levels(code, 6, DECODE, F32)), out_dtype=tl.int32)
        acc += tl.dot(q1, tl.trans(_qscalar_levels(code, 4, DECODE, F32)), out_dtype=tl.int32)
        acc += tl.dot(q2, tl.trans(_qscalar_levels(code, 2, DECODE, F32)), out_dtype=tl.int32)
        acc += tl.dot(q3, tl.trans(_qscalar_levels(code, 0, DECODE, F32)), out_dtype=tl.int32)
        return acc
    else:
        acc = mma(q0, tl.trans(_qscalar_levels(code, 6, DECODE, F32)), F32)
        acc += mma(q1, tl.trans(_qscalar_levels(code, 4, DECODE, F32)), F32)
        acc += mma(q2, tl.trans(_qscalar_levels(code, 2, DECODE, F32)), F32)
        acc += mma(q3, tl.trans(_qscalar_levels(code, 0, DECODE, F32)), F32)
        return acc


@triton.jit
def _qscalar_tile_tm(blk, tin, tmask, k0, k1, k2, k3, D: tl.constexpr, DECODE: tl.constexpr, F32: tl.constexpr):
    """``_qscalar_tile`` with tokens on the dot's M: the codes [N, D/4] are its A operand as loaded,
    k0..k3 [D/4, NCOL] the query's channels k::4 with head g in column 2g (zeros elsewhere).
    Returns [N, NCOL]: column 2g holds head g's sum_d q_d * level_d (as ``_qscalar_tile``)."""
    offs_j = tl.arange(0, D // 4)
    code = tl.load(blk[:, None] + (tin * (D // 4))[:, None] + offs_j[None, :], mask=tmask[:, None], other=0)
    if DECODE >= 2:
        acc = tl.dot(_qscalar_levels(code, 6, DECODE, F32), k0, out_dtype=tl.int32)
        acc += tl.dot(_qscalar_levels(code, 4, DECODE, F32), k1, out_dtype=tl.int32)
        acc += tl.dot(_qscalar_levels(code, 2, DECODE, F32), k2, out_dtype=tl.int32)
        acc += tl.dot(_qscalar_levels(code, 0, DECODE, F32), k3, out_dtype=tl.int32)
        return acc
    else:
        acc = mma(_qscalar_levels(code, 6, DECODE, F32), k0, F32)
        acc += mma(_qscalar_levels(code, 4, DECODE, F32), k1, F32)
        acc += mma(_qscalar_levels(code, 2, DECODE, F32), k2, F32)
        acc += mma(_qscalar_levels(code, 0, DECODE, F32), k3, F32)
        return acc


@triton.jit
def _head_columns(acc, N: tl.constexpr, NCOL: tl.constexpr, ROWS: tl.constexpr):
    """acc [N, NCOL] (head g in column 2g) -> [ROWS, N]. Column 2g sits in lane (g mod 4) of each
    quad of the MMA's accumulator layout and in a register of its own for g // 4: the selection is
    a choice of registers (split), and every lane holds distinct heads (no replicated epilogue)."""
    x, _ = tl.split(tl.reshape(acc, (N, NCOL // 2, 2)))  # even columns: [N, NCOL / 2]
    if NCOL // 2 != ROWS:  # ROWS = 4 in NCOL = 16: heads in the first of two register groups
        x, _ = tl.split(tl.permute(tl.reshape(x, (N, 2, ROWS)), (0, 2, 1)))
    return tl.trans(x)


@triton.jit
def _qscalar_scale(blk, tin, tmask, D: tl.constexpr, BS: tl.constexpr):
    """Each token's bf16 scale, read from its two bytes after the block's codes: [N] fp32."""
    at = (blk + BS * (D // 4)).to(tl.pointer_type(tl.uint16)) + tin  # 2-byte aligned: codes come in whole words
    return tl.load(at, mask=tmask, other=0).to(tl.bfloat16, bitcast=True).to(tl.float32)


@triton.jit
def _qscalar_query(q_rows, gmask, k: tl.constexpr, D: tl.constexpr):
    """The query's channels k::4 [G_PAD, D/4] fp32."""
    offs_j = tl.arange(0, D // 4)
    return tl.load(q_rows[:, None] + (offs_j * 4 + k)[None, :], mask=gmask[:, None], other=0.0).to(tl.float32)


@triton.jit
def _qscalar_query_parts(q_rows, gmask, D: tl.constexpr, DECODE: tl.constexpr, ROWS: tl.constexpr):
    """The rotated query's channels k::4 as the dot's operands [ROWS, D/4] (q0..q3), and per row
    (q_mul, q_off) with q_mul * (sum_d operand_d level_d - q_off) = sum_d (qH)_d (level_d - 1.5):
    the int8 decodings round the query to int8 steps of amax / 127 per row; the others keep fp16
    operands (decoding 1's operand is 1 + level / 4, so level - 1.5 = 4 * (operand - 1.375)).
    Computed the same way for any row layout, so the token-major epilogue's rows get the values of
    the dot's columns."""
    q0 = _qscalar_query(q_rows, gmask, 0, D)
    q1 = _qscalar_query(q_rows, gmask, 1, D)
    q2 = _qscalar_query(q_rows, gmask, 2, D)
    q3 = _qscalar_query(q_rows, gmask, 3, D)
    if DECODE >= 2:  # int8 query, one scale per query head
        amax = tl.maximum(tl.maximum(tl.max(tl.abs(q0), 1), tl.max(tl.abs(q1), 1)),
                          tl.maximum(tl.max(tl.abs(q2), 1), tl.max(tl.abs(q3), 1)))
        q_mul = tl.maximum(amax, 1e-30) / 127.0
        q0 = tl.floor(q0 / q_mul[:, None] + 0.5).to(tl.int8)
        q1 = tl.floor(q1 / q_mul[:, None] + 0.5).to(tl.int8)
        q2 = tl.floor(q2 / q_mul[:, None] + 0.5).to(tl.int8)
        q3 = tl.floor(q3 / q_mul[:, None] + 0.5).to(tl.int8)
        level_zero = 1.5
    else:
        q0, q1, q2, q3 = q0.to(tl.float16), q1.to(tl.float16), q2.to(tl.float16), q3.to(tl.float16)
        q_mul = tl.full([ROWS], 4.0 if DECODE == 1 else 1.0, tl.float32)
        level_zero = 1.375 if DECODE == 1 else 1.5
    # sum_d q_d over the rounded operands, so that the offset cancels exactly what the dot adds
    q_sum = (tl.sum(q0.to(tl.float32), 1) + tl.sum(q1.to(tl.float32), 1) + tl.sum(q2.to(tl.float32), 1)
             + tl.sum(q3.to(tl.float32), 1))
    return q0, q1, q2, q3, q_mul, level_zero * q_sum


@triton.jit
def _infinigen_tile(base, q_rows, gmask, offs_t, R, R_PAD: tl.constexpr, F32: tl.constexpr):
    offs_r = tl.arange(0, R_PAD)
    rmask = offs_r < R
    idx = tl.load(base + offs_r, mask=rmask, other=0.0).to(tl.int32)            # kept channels
    q_sel = tl.load(q_rows[:, None] + idx[None, :], mask=gmask[:, None] & rmask[None, :], other=0.0)
    part = tl.load(base + (1 + offs_t)[:, None] * R + offs_r[None, :], mask=rmask[None, :], other=0.0)
    return mma(q_sel.to(part.dtype), tl.trans(part), F32)                        # [G_PAD, BS]


@triton.jit
def _lrqk_tile(base, q, offs_t, offs_d, R, R_PAD: tl.constexpr, D: tl.constexpr, F32: tl.constexpr):
    offs_r = tl.arange(0, R_PAD)
    rmask = offs_r < R
    basis = tl.load(base + offs_r[:, None] * D + offs_d[None, :], mask=rmask[:, None], other=0.0)  # [R_PAD, D]
    coeff = tl.load(base + R * D + offs_t[:, None] * R + offs_r[None, :], mask=rmask[None, :], other=0.0)
    proj = mma(q.to(basis.dtype), tl.trans(basis), F32)                          # [G_PAD, R_PAD] fp32
    return tl.dot(proj, tl.trans(coeff.to(tl.float32)))                          # [G_PAD, BS]


@triton.jit(do_not_specialize=['s_slb', 'N_MAX', 'NC', 'CHUNK', 'R'])  # per-step sizes: no recompiles
def _summary_logits(
    q_ptr, s_ptr, cb_ptr, slots_ptr, len_ptr, lg_ptr, pm_ptr, ps_ptr,
    qk_scale,
    s_qb, s_qh,                    # query [B, Hq, D]
    s_sslot, s_sh,                 # summaries [S, Hkv, ...], each (slot, head) row contiguous
    s_slb,                         # cold_slots [B, max_cold_blocks]
    Hq, N_MAX, NC, CHUNK, R,
    G, G_PAD: tl.constexpr, D: tl.constexpr, BS: tl.constexpr, R_PAD: tl.constexpr,
    BLOCK_N: tl.constexpr, KIND: tl.constexpr, F32: tl.constexpr, LOCAL_CB: tl.constexpr, DECODE: tl.constexpr,
    ROWS: tl.constexpr,            # rows of the epilogue: G_PAD (the dot's), or max(4, next_pow2(G)) (TM)
    TM: tl.constexpr,              # qscalar: token-major, tokens on the dot's M and NCOL columns of heads
    NCOL: tl.constexpr,
):
    c = tl.program_id(0)
    h = tl.program_id(1)
    b = tl.program_id(2)
    offs_g = tl.arange(0, G_PAD)
    offs_d = tl.arange(0, D)
    offs_t = tl.arange(0, BLOCK_N)  # qlandmark: any multiple of BS; the per-block kinds: BS
    gmask = offs_g < G
    qh = h * G + offs_g
    q_rows = q_ptr + b * s_qb + qh * s_qh
    q = tl.load(q_rows[:, None] + offs_d[None, :], mask=gmask[:, None], other=0.0)
    n = tl.load(len_ptr + b)
    lo = c * CHUNK  # a multiple of BS: chunks hold whole blocks
    hi = tl.minimum(lo + CHUNK, n)
    offs_r = tl.arange(0, ROWS)  # the epilogue's rows: the dot's G_PAD, or the heads of the token-major dot
    rmask = offs_r < G
    qr = h * G + offs_r
    lg_row = (b * Hq + qr).to(tl.int64) * N_MAX
    # The online (max, sum of exp2) per row, kept per tile column: each value meets only its own
    # column's state (no reduction across threads per tile); the columns are merged after the loop.
    m_i = tl.full([ROWS, BLOCK_N], NEG, tl.float32)
    s_i = tl.zeros([ROWS, BLOCK_N], tl.float32)
    cb = tl.load(cb_ptr + tl.arange(0, 1024)) if KIND == 0 and LOCAL_CB else 0.0  # [256 x 4] codebook
    if KIND == 3:  # the query's channels k::4 as dot operands, and what turns their dot into q . k_hat / s
        if TM:  # head g in column 2g of the dot's B operand; the per-head values on the epilogue's rows
            offs_c = tl.arange(0, NCOL)
            cmask = (offs_c % 2 == 0) & (offs_c // 2 < G)
            q0, q1, q2, q3, _, _ = _qscalar_query_parts(q_ptr + b * s_qb + (h * G + offs_c // 2) * s_qh, cmask, D,
                                                        DECODE, NCOL)
            q0, q1, q2, q3 = tl.trans(q0), tl.trans(q1), tl.trans(q2), tl.trans(q3)
            _, _, _, _, q_mul, q_off = _qscalar_query_parts(q_ptr + b * s_qb + qr * s_qh, rmask, D, DECODE, ROWS)
        else:
            q0, q1, q2, q3, q_mul, q_off = _qscalar_query_parts(q_rows, gmask, D, DECODE, G_PAD)
        q_a = q_mul * qk_scale  # logit = (dot * q_a + q_c) * s[t]: one FMA and one multiply per value
        q_c = -q_off * q_a
    for start in range(lo, hi, BLOCK_N):
        t = start + offs_t
        tmask = t < hi
        if KIND == 0:  # per-token summaries: a tile may span several blocks
            slot = tl.load(slots_ptr + b * s_slb + t // BS, mask=tmask, other=0).to(tl.int64)
            tok = s_ptr + slot * s_sslot + h * s_sh + (t % BS) * (D // 4 + 2)
            l = _qlandmark_tile(tok, tmask, cb_ptr, cb, q, D, BLOCK_N, LOCAL_CB)
        elif KIND == 3:  # per-token summaries in planar blocks: a tile may span several blocks
            tu = t.to(tl.uint32)  # t >= 0: unsigned division by BS is a shift
            slot = tl.load(slots_ptr + b * s_slb + (tu // BS).to(tl.int32), mask=tmask, other=0).to(tl.int64)
            blk = s_ptr + slot * s_sslot + h * s_sh
            tin = (tu % BS).to(tl.int32)
            if TM:
                acc = _head_columns(_qscalar_tile_tm(blk, tin, tmask, q0, q1, q2, q3, D, DECODE, F32), BLOCK_N, NCOL, ROWS)
            else:
                acc = _qscalar_tile(blk, tin, tmask, q0, q1, q2, q3, D, BS, DECODE, F32)
            l = acc.to(tl.float32) * q_a[:, None] + q_c[:, None]  # folded before the conversion (int32: exact)
            l = l * _qscalar_scale(blk, tin, tmask, D, BS)[None, :]
        else:  # per-block summaries: one block per tile
            slot = tl.load(slots_ptr + b * s_slb + start // BS).to(tl.int64)
            base = s_ptr + slot * s_sslot + h * s_sh
            if KIND == 1:
                l = _infinigen_tile(base, q_rows, gmask, offs_t, R, R_PAD, F32)
            else:
                l = _lrqk_tile(base, q, offs_t, offs_d, R, R_PAD, D, F32)
        if KIND != 3:  # qlandmark-scalar has the scale folded into q_a already
            l = l * qk_scale
        l = tl.where(tmask[None, :], l, float("-inf"))  # log2-scaled logits
        if lg_ptr.dtype.element_ty == tl.float16:
            # Invariant: the (max, sum) below are taken over the stored values, so the second pass's
            # masses are an exact softmax of them. Clamped above (below fp16's range, -inf is a mass of 0).
            l16 = tl.minimum(l, 6.0e4).to(tl.float16)
            tl.store(lg_ptr + lg_row[:, None] + t[None, :], l16, mask=rmask[:, None] & tmask[None, :])
            l = l16.to(tl.float32)
        else:
            tl.store(lg_ptr + lg_row[:, None] + t[None, :], l, mask=rmask[:, None] & tmask[None, :])
        # one exponential per value: exp2(-|l - m|) rescales the sum where l is the new max, else adds
        d = l - m_i
        e = tl.exp2(-tl.abs(d))
        up = d > 0
        s_i = tl.where(up, s_i * e + 1.0, s_i + e)
        m_i = tl.where(up, l, m_i)
    m_row = tl.max(m_i, 1)
    s_row = tl.sum(s_i * tl.exp2(m_i - m_row[:, None]), 1)
    ws = (b * Hq + qr) * NC + c
    tl.store(pm_ptr + ws, m_row, mask=rmask)
    tl.store(ps_ptr + ws, s_row, mask=rmask)


def summary_scoring_tiles(head_dim: int, block_size: int) -> bool:
    """Whether the fused kernels tile this shape (``tl.dot``: powers of two, blocks >= 16)."""
    return head_dim == next_pow2(head_dim) and block_size == next_pow2(block_size) and block_size >= 16


def _launch(kind: int, query, summaries, codebook, rank: int, cold_slots, cold_lens, scale, out=None,
            chunk=None, block_n=None, num_warps=4, local_cb=False, num_stages=None, decode=0,
            token_major=False, logits_dtype=torch.float32):
    B, Hq, D = query.shape
    S, Hkv = summaries.shape[:2]
    bs = {QLANDMARK: lambda: summaries.shape[2], INFINIGEN: lambda: summaries.shape[2] - 1,
          LRQK: lambda: (summaries.shape[2] - rank * D) // rank,
          QSCALAR: lambda: summaries.shape[2] // (D // VEC + 2)}[kind]()
    if not summary_scoring_tiles(D, bs):
        raise ValueError(f"fused summary scoring needs power-of-two head_dim and block_size >= 16, "
                         f"got head_dim={D}, block_size={bs}")
    if query.stride(-1) != 1 or summaries[0, 0].numel() != summaries.stride(1) or summaries.stride(-1) != 1:
        raise ValueError("query rows and each (slot, KV head) summary must be contiguous")
    n_max = cold_slots.shape[1] * bs
    block_n = block_n or bs
    assert block_n % bs == 0 and (kind in (QLANDMARK, QSCALAR) or block_n == bs), (block_n, bs)
    chunk = chunk or plan(B, Hkv, n_max, query.device, block_n)
    assert chunk % block_n == 0, (chunk, block_n)
    NC = max(1, cdiv(n_max, chunk))
    logits, pm, ps = workspace(B, Hq, n_max, NC, query.device, logits_dtype)
    G = Hq // Hkv
    _summary_logits[(NC, Hkv, B)](
        query, summaries, codebook if codebook is not None else summaries, cold_slots, cold_lens,
        logits, pm, ps, scale * LOG2E,
        query.stride(0), query.stride(1), summaries.stride(0), summaries.stride(1), cold_slots.stride(0),
        Hq, n_max, NC, chunk, max(rank, 1),
        G=G, G_PAD=max(16, next_pow2(G)), D=D, BS=bs, R_PAD=max(16, next_pow2(rank)),
        BLOCK_N=block_n, KIND=kind, F32=interpreting(), LOCAL_CB=local_cb, DECODE=decode,
        ROWS=max(4, next_pow2(G)) if token_major else max(16, next_pow2(G)),
        TM=token_major, NCOL=max(16, 2 * max(4, next_pow2(G))), num_warps=num_warps,
        **({} if num_stages is None else {"num_stages": num_stages}),
    )
    return finish_mass(logits, pm, ps, cold_lens, Hkv, chunk, out)


def qlandmark_mass(query_rotated, summaries, codebook, cold_slots, cold_lens, scale, out=None, chunk=None,
                   block_n=None, num_warps=4, local_cb=True):
    """query_rotated [B, Hq, D] fp32 (the query times the Hadamard matrix); summaries
    [S, Hkv, BS, D/4 + 2] uint8; codebook [256, 4] fp32 -> mass [B, Hkv, max_cold * BS]."""
    assert summaries.dtype == torch.uint8 and codebook.shape == (256, VEC) and codebook.is_contiguous()
    assert summaries.shape[-1] == query_rotated.shape[-1] // VEC + 2
    bs = summaries.shape[2]
    block_n = block_n or max(bs, 64)  # tokens per tile (several blocks): fewer, longer loop steps
    return _launch(QLANDMARK, query_rotated.float(), summaries, codebook.float(), 0, cold_slots, cold_lens,
                   scale, out, chunk, block_n, num_warps, local_cb)


# qscalar_mass's defaults: tokens per tile, warps, pipeline stages, level decoding (set by a GPU sweep);
# the token-major first pass and fp16 workspace logits (session 20: 222.9 against 304.7 us per layer for
# both passes at 32 requests of 32K on the H100, the dot-row epilogue with fp32 logits; examples/gpu_score.py
# --kinds 2bit --epilogues rows16 tokens --logits fp32 fp16, docs/kernels.md)
QSCALAR_DEFAULTS = (128, 4, 3, 3)
QSCALAR_TOKEN_MAJOR = True
QSCALAR_LOGITS = torch.float16
# Rows of QSCALAR_LONG_ROW cold tokens or more: chunks of QSCALAR_LONG_CHUNK tokens (score.plan's about
# 4 programs per SM left 8 requests of 128K at 576 programs, 4.4 per SM). Session 23, H100, both passes,
# paired against the plan (docs/results/gpu/session23/chunk_sweep.py, docs/kernels.md): 8 requests x 128K
# 246 -> 227 us per layer (1.08x, twice); 4 x 128K, 16 x 64K, 8 x 64K 1.00-1.02x; at 32K every other chunk
# was slower (0.54-0.98x), so the plan stays there.
QSCALAR_LONG_ROW = 65536
QSCALAR_LONG_CHUNK = 2048


def qscalar_default_decode(head_dim: int) -> int:
    """qscalar_mass's default decoding: QSCALAR_DEFAULTS's, or decoding 1 where int8 dots do not
    tile (K = head_dim / 4 < 32). Decodings 2 and 3 round the query to int8 steps themselves."""
    d_decode = QSCALAR_DEFAULTS[3]
    return d_decode if head_dim // VEC >= 32 or d_decode < 2 else 1


def qscalar_mass(query_rotated, summaries, step, cold_slots, cold_lens, scale, out=None, chunk=None,
                 block_n=None, num_warps=None, num_stages=None, decode=None, token_major=None, logits_dtype=None):
    """query_rotated [B, Hq, D] fp32; summaries [S, Hkv, BS * (D/4 + 2)] uint8 (qlandmark-scalar's
    planar blocks); ``step``: the grid's spacing (a level's value is (level - 1.5) * step)
    -> mass [B, Hkv, max_cold * BS]. ``decode`` picks how levels become dot operands: 0 fp16
    conversion, 1 fp16 bit pattern (no conversion), 2 int8 with an int8 query (rounded), 3 as 2 with
    four levels decoded per 32-bit instruction pair (inline PTX; under the interpreter, 2's ops).
    The int8 decodings need head_dim >= 128 (an int8 dot's K = D/4 >= 32); by default smaller heads
    take decoding 1. ``token_major``: the dot puts tokens on its M and each query head in a lane of
    its own (``_qscalar_tile_tm``), so the softmax epilogue runs once per value; otherwise the
    heads are the M rows of a dot padded to 16, whose values the epilogue's lanes hold twice.
    ``logits_dtype``: the workspace's logits, fp16 (what the second pass reads is halved; the
    masses are the exact softmax of the rounded logits) or fp32."""
    assert summaries.dtype == torch.uint8 and summaries.dim() == 3
    D = query_rotated.shape[-1]
    bs = summaries.shape[2] // (D // VEC + 2)
    if summaries.shape[2] != bs * (D // VEC + 2):
        raise ValueError(f"qlandmark-scalar summaries hold block_size * (head_dim / 4 + 2) bytes per KV head, "
                         f"got {summaries.shape[2]} for head_dim={D}")
    d_block_n, d_warps, d_stages, _ = QSCALAR_DEFAULTS  # the decoding: qscalar_default_decode
    block_n = block_n or max(bs, d_block_n)
    decode = qscalar_default_decode(D) if decode is None else decode
    if decode not in (0, 1, 2, 3):
        raise ValueError(f"decode={decode}: accepted 0, 1, 2, 3")
    if decode >= 2 and D // VEC < 32:
        raise ValueError(f"decode={decode} (int8 dots) needs head_dim >= 128, got head_dim={D}; 0 and 1 take any")
    n_max = cold_slots.shape[1] * bs
    if chunk is None and n_max >= QSCALAR_LONG_ROW:
        chunk = max(QSCALAR_LONG_CHUNK, cdiv(cdiv(n_max, 256), block_n) * block_n)  # at most 256 chunks per row
    return _launch(QSCALAR, query_rotated.float().contiguous(), summaries, None, 0, cold_slots, cold_lens,
                   scale * step, out, chunk, block_n, num_warps or d_warps, False,
                   num_stages or d_stages, decode, QSCALAR_TOKEN_MAJOR if token_major is None else token_major,
                   QSCALAR_LOGITS if logits_dtype is None else logits_dtype)


def infinigen_mass(query, summaries, cold_slots, cold_lens, scale, out=None, chunk=None):
    """summaries [S, Hkv, BS + 1, R] bf16 (row 0: channel indices) -> mass [B, Hkv, max_cold * BS]."""
    return _launch(INFINIGEN, query, summaries, None, summaries.shape[-1], cold_slots, cold_lens, scale,
                   out, chunk)


def lrqk_mass(query, summaries, rank, cold_slots, cold_lens, scale, out=None, chunk=None):
    """summaries [S, Hkv, rank * D + BS * rank] bf16 (basis, then coefficients)
    -> mass [B, Hkv, max_cold * BS]."""
    return _launch(LRQK, query, summaries, None, rank, cold_slots, cold_lens, scale, out, chunk)
