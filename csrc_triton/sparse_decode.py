"""Batched sparse paged decode attention, split-K (flash-decoding). Reference:
``vllm_kvoffload/ops/sparse_decode_ref.py`` (same arguments and layouts).

Each request attends, per KV head h, to its resident tokens (paged in the device
KV cache through its block table) followed by its selected cold tokens (already
gathered into sel_k/sel_v). The token axis of every (request, KV head) is cut into
chunks of CHUNK tokens: chunks [0, NRC) cover the resident range, chunks
[NRC, NC) the selected range, so each program reads one kind of memory.

One launch, grid (NC, Hkv, B): one program = one (request, KV head, chunk) for the
  whole GQA group: the G query heads of KV head h (h*G .. h*G+G-1) are the M dim
  of tl.dot, padded to G_PAD >= 16. It writes per query head the partial
  max m (log2 domain), sum l and unnormalised acc [D] of its chunk (fp32).
  An empty chunk (past the lengths) writes m=-1e30, l=0, acc=0.
The merge, in the same launch: the NC programs of one (request, KV head) each bump its arrival
  counter after storing their partials (stores, barrier, an acq_rel atomic); the program that
  arrives last merges the NC partials of the G query heads into the output and resets the
  counter to 0, so the counters are all zero between launches. (Session 24: 1.02-1.07x faster
  than a second merge kernel at the engine's shapes, docs/kernels.md.)

Tile constraints: D in {64, 128} (any power of two >= 16); BLOCK_N a multiple of
16; CHUNK a multiple of BLOCK_N; block_size any power of two. Lengths are
arbitrary (masked). Accumulation is fp32; probabilities enter the PV dot in
the value dtype (bf16), as in FlashAttention. The selected tokens may be fp8
(e4m3, an fp8 host pool's own values): they are widened to the query's dtype
as they are loaded. Or 4-bit rows (``ops/int4_ref.py``, ``host_kv_dtype="int4"``):
unpacked in two halves to the query's dtype, times each row's scale.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from vllm_kvoffload.ops.int4_ref import INT4, row_bytes

from ._common import LOG2E, arrival_counters, cdiv, interpreting, mma, next_pow2, num_sms, row_align

MERGE_BLOCK_C = 8  # partials merged per pass of the merge ([G, 8, D] at once)
NEG = tl.constexpr(-1.0e30)  # finite "minus infinity": exp2(NEG - m) == 0 and NEG - NEG == 0 (no NaN)


@triton.jit
def _softmax_step(s, tmask, m_i, l_i):
    """One tile's scores s [G_PAD, BLOCK_N] (log2 domain) into the running max and sum: (m_new, alpha,
    p, l_new), where the accumulator must be scaled by alpha before p's values are added."""
    s = tl.where(tmask[None, :], s, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, 1))
    alpha = tl.exp2(m_i - m_new)
    p = tl.exp2(s - m_new[:, None])
    return m_new, alpha, p, l_i * alpha + tl.sum(p, 1)


@triton.jit
def _online_update(q, k, v, tmask, m_i, l_i, acc, qk_scale, F32: tl.constexpr):
    # q [G_PAD, D], k/v [BLOCK_N, D], tmask [BLOCK_N]; m_i/l_i [G_PAD], acc [G_PAD, D]
    m_new, alpha, p, l_i = _softmax_step(mma(q, tl.trans(k), F32) * qk_scale, tmask, m_i, l_i)
    acc = acc * alpha[:, None] + mma(p.to(v.dtype), v, F32)
    return m_new, l_i, acc


@triton.jit(do_not_specialize=['s_btb', 's_sb', 's_sh', 's_vb', 's_vh', 'K_SEL', 'NRC', 'NC', 'CHUNK', 's_ob', 's_oh'])  # per-step sizes: no recompiles
def _sparse_decode_partial(
    q_ptr, kv_ptr, bt_ptr, res_len_ptr, sk_ptr, sv_ptr, sel_len_ptr, valid_ptr, rows_ptr, pos_ptr,
    m_ptr, l_ptr, acc_ptr, arrivals, out_ptr, s_ob, s_oh,
    qk_scale,
    s_qb, s_qh,                      # query [B, Hq, D], D contiguous
    s_kv, s_kblk, s_ktok, s_kh,      # kv_cache [2, nblocks, BS, Hkv, D], D contiguous
    s_btb,                           # block_table [B, max_blocks]
    s_sb, s_sh, s_st,                # sel_k and sel_v [B, Hkv, K, D], same strides, D contiguous
    s_vb, s_vh,                      # sel_valid [B, Hkv, K] (HAS_VALID)
    Hq, K_SEL, NRC, NC,
    G, G_PAD: tl.constexpr, D: tl.constexpr, BS: tl.constexpr,
    CHUNK, BLOCK_N: tl.constexpr, HAS_VALID: tl.constexpr, F32: tl.constexpr,
    ROW_ALIGN: tl.constexpr,         # every sel_k/sel_v row starts at a multiple of this many elements
    G_MERGE: tl.constexpr, BLOCK_C: tl.constexpr,  # the merge: next_pow2(G), partials per pass
    HAS_ROWS: tl.constexpr,          # sel_k/sel_v rows by rows_ptr[b] (the in-place device cache), else b
    HAS_POS: tl.constexpr,           # selected token t of (b, h) at slot pos_ptr[(b * Hkv + h) * K_SEL + t] (the LRU
                                     # cache), else at slot t
    INT4: tl.constexpr = False,      # sel_k/sel_v hold 4-bit rows (ops/int4_ref.py: D/2 bytes, then the fp32 scale)
):
    c = tl.program_id(0)
    h = tl.program_id(1)
    b = tl.program_id(2)
    offs_g = tl.arange(0, G_PAD)
    offs_d = tl.arange(0, D)
    offs_n = tl.arange(0, BLOCK_N)
    gmask = offs_g < G
    qh = h * G + offs_g
    q = tl.load(q_ptr + b * s_qb + qh[:, None] * s_qh + offs_d[None, :], mask=gmask[:, None], other=0.0)

    m_i = tl.full([G_PAD], NEG, tl.float32)
    l_i = tl.zeros([G_PAD], tl.float32)
    acc = tl.zeros([G_PAD, D], tl.float32)
    if c < NRC:
        # resident chunk: token t -> block_table[b, t // BS], slot t % BS
        n = tl.load(res_len_ptr + b)
        lo = c * CHUNK
        hi = tl.minimum(lo + CHUNK, n)
        for start in range(lo, hi, BLOCK_N):
            t = start + offs_n
            tmask = t < hi
            blk = tl.load(bt_ptr + b * s_btb + t // BS, mask=tmask, other=0).to(tl.int64)
            row = blk * s_kblk + (t % BS) * s_ktok + h * s_kh
            k = tl.load(kv_ptr + row[:, None] + offs_d[None, :], mask=tmask[:, None], other=0.0)
            v = tl.load(kv_ptr + s_kv + row[:, None] + offs_d[None, :], mask=tmask[:, None], other=0.0)
            m_i, l_i, acc = _online_update(q, k, v, tmask, m_i, l_i, acc, qk_scale, F32)
    else:
        # selected chunk: contiguous rows of sel_k/sel_v[b, h]
        n = tl.load(sel_len_ptr + b * (Hq // G) + h)
        lo = (c - NRC) * CHUNK
        hi = tl.minimum(lo + CHUNK, tl.minimum(n, K_SEL))
        sel_row = tl.load(rows_ptr + b) if HAS_ROWS else b
        base = sel_row.to(tl.int64) * s_sb + h * s_sh
        valid_row = valid_ptr + b * s_vb + h * s_vh
        pos_row = pos_ptr + (b * (Hq // G) + h).to(tl.int64) * K_SEL
        if INT4:
            q_row = q_ptr + b * s_qb + qh[:, None] * s_qh
            m_i, l_i, acc = _int4_selected(q_row, gmask, sk_ptr, sv_ptr, valid_row, pos_row, base, lo, hi, s_st,
                                           qk_scale, G_PAD, D, BLOCK_N, HAS_VALID, HAS_POS, F32, ROW_ALIGN)
        else:
            # selections from an fp8 pool stay fp8 on the device: widened here to fp16 (exact, one
            # conversion per pair of values; bf16 would need several), the query rounded to fp16
            # (|q| < 65504), and the probabilities enter the PV dot in fp16
            q_sel = q.to(tl.float16) if sk_ptr.dtype.element_ty == tl.float8e4nv else q
            for start in range(lo, hi, BLOCK_N):
                tmask, row = _selected_tile(start + offs_n, hi, valid_row, pos_row, base, s_st, HAS_VALID, HAS_POS,
                                            ROW_ALIGN)
                k = tl.load(sk_ptr + row[:, None] + offs_d[None, :], mask=tmask[:, None], other=0.0).to(q_sel.dtype)
                v = tl.load(sv_ptr + row[:, None] + offs_d[None, :], mask=tmask[:, None], other=0.0).to(q_sel.dtype)
                m_i, l_i, acc = _online_update(q_sel, k, v, tmask, m_i, l_i, acc, qk_scale, F32)

    # partials [B, Hq, NC] and [B, Hq, NC, D], fp32 contiguous
    ws = (b * Hq + qh) * NC + c
    tl.store(m_ptr + ws, m_i, mask=gmask)
    tl.store(l_ptr + ws, l_i, mask=gmask)
    tl.store(acc_ptr + ws[:, None].to(tl.int64) * D + offs_d[None, :], acc, mask=gmask[:, None])
    # The last program of (b, h) to arrive sees every other one's partials: each program's threads
    # finish their stores (barrier) before its release, the acquire precedes the reads, and the
    # reads bypass L1 (.cg).
    arrival = arrivals + b * (Hq // G) + h
    tl.debug_barrier()
    last = tl.atomic_add(arrival, 1, sem="acq_rel", scope="gpu") == NC - 1
    tl.debug_barrier()
    if last:
        tl.atomic_xchg(arrival, 0)  # ready for the next launch
        _merge(m_ptr, l_ptr, acc_ptr, out_ptr + b * s_ob, s_oh, (b * Hq + h * G) * NC, h * G, G, NC,
               G_MERGE, D, BLOCK_C)


@triton.jit
def _selected_tile(t, hi, valid_row, pos_row, base, s_st, HAS_VALID: tl.constexpr, HAS_POS: tl.constexpr,
                   ROW_ALIGN: tl.constexpr):
    """Selection positions ``t`` (< ``hi``) of one (request, KV head): which are live (in range and, with
    HAS_VALID, marked valid) and each one's row offset in the selected K/V (through its cache slot with
    HAS_POS). Rows are ROW_ALIGN-aligned: the dispatcher derives it from the strides (row_align)."""
    tmask = t < hi
    if HAS_VALID:
        tmask = tmask & (tl.load(valid_row + t, mask=tmask, other=0) != 0)
    slot = tl.load(pos_row + t, mask=tmask, other=0) if HAS_POS else t
    return tmask, tl.multiple_of(base + slot.to(tl.int64) * s_st, ROW_ALIGN)


@triton.jit
def _int4_half(rows_ptr, row, half, tmask, D: tl.constexpr, DTYPE: tl.constexpr):
    """One tile of 4-bit rows (ops/int4_ref.py) back in DTYPE, as its two halves [BLOCK_N, D/2]:
    elements [0, D/2) from the low nibbles, [D/2, D) from the high ones, times the row's scale."""
    nib = tl.load(rows_ptr + row[:, None] + half[None, :], mask=tmask[:, None], other=0x88).to(tl.int32)
    scale = tl.load((rows_ptr + row + D // 2).to(tl.pointer_type(tl.float32)), mask=tmask, other=0.0)
    lo = (((nib & 15) - 8).to(tl.float32) * scale[:, None]).to(DTYPE)
    hi = (((nib >> 4) - 8).to(tl.float32) * scale[:, None]).to(DTYPE)
    return lo, hi


@triton.jit
def _int4_selected(q_row, gmask, sk_ptr, sv_ptr, valid_row, pos_row, base, lo, hi, s_st, qk_scale,
                   G_PAD: tl.constexpr, D: tl.constexpr, BLOCK_N: tl.constexpr, HAS_VALID: tl.constexpr,
                   HAS_POS: tl.constexpr, F32: tl.constexpr, ROW_ALIGN: tl.constexpr):
    """The selected tokens [lo, hi) of one (request, KV head) from 4-bit rows: (m, l, acc [G_PAD, D]) as
    ``_online_update`` leaves them. The rows are unpacked in halves, so q.k = q_lo.k_lo + q_hi.k_hi and
    the output's halves are p.V_lo and p.V_hi; nothing is interleaved until the end."""
    half = tl.arange(0, D // 2)
    offs_n = tl.arange(0, BLOCK_N)
    q_lo = tl.load(q_row + half[None, :], mask=gmask[:, None], other=0.0)
    q_hi = tl.load(q_row + D // 2 + half[None, :], mask=gmask[:, None], other=0.0)
    m_i = tl.full([G_PAD], NEG, tl.float32)
    l_i = tl.zeros([G_PAD], tl.float32)
    acc_lo = tl.zeros([G_PAD, D // 2], tl.float32)
    acc_hi = tl.zeros([G_PAD, D // 2], tl.float32)
    for start in range(lo, hi, BLOCK_N):
        tmask, row = _selected_tile(start + offs_n, hi, valid_row, pos_row, base, s_st, HAS_VALID, HAS_POS, ROW_ALIGN)
        k_lo, k_hi = _int4_half(sk_ptr, row, half, tmask, D, q_lo.dtype)
        v_lo, v_hi = _int4_half(sv_ptr, row, half, tmask, D, q_lo.dtype)
        s = (mma(q_lo, tl.trans(k_lo), F32) + mma(q_hi, tl.trans(k_hi), F32)) * qk_scale  # log2 domain
        m_i, alpha, p, l_i = _softmax_step(s, tmask, m_i, l_i)
        acc_lo = acc_lo * alpha[:, None] + mma(p.to(v_lo.dtype), v_lo, F32)
        acc_hi = acc_hi * alpha[:, None] + mma(p.to(v_hi.dtype), v_hi, F32)
    acc = tl.reshape(tl.permute(tl.join(acc_lo, acc_hi), (0, 2, 1)), (G_PAD, D))  # [lo | hi]
    return m_i, l_i, acc


@triton.jit
def _merge(m_ptr, l_ptr, acc_ptr, out_ptr, s_oh, base, head0, G, NC,
           GM: tl.constexpr, D: tl.constexpr, BLOCK_C: tl.constexpr):
    """out[head0 + g] for g < G: the merge of query head (head0 + g)'s NC partials, at
    base + g * NC + c of the workspace (m log2-domain max, l sum, acc [D] unnormalised)."""
    offs_g = tl.arange(0, GM)
    offs_c = tl.arange(0, BLOCK_C)
    offs_d = tl.arange(0, D)
    gm = offs_g < G
    rows = base + offs_g[:, None] * NC + offs_c[None, :]  # [GM, BLOCK_C]
    m_max = tl.full([GM, BLOCK_C], NEG, tl.float32)
    for c0 in range(0, NC, BLOCK_C):
        cm = gm[:, None] & (c0 + offs_c < NC)[None, :]
        m_max = tl.maximum(m_max, tl.load(m_ptr + rows + c0, mask=cm, other=NEG, cache_modifier=".cg"))
    mx = tl.max(m_max, 1)
    l_sum = tl.zeros([GM], tl.float32)
    acc = tl.zeros([GM, D], tl.float32)
    for c0 in range(0, NC, BLOCK_C):
        cm = gm[:, None] & (c0 + offs_c < NC)[None, :]
        w = tl.exp2(tl.load(m_ptr + rows + c0, mask=cm, other=NEG, cache_modifier=".cg") - mx[:, None])
        w = tl.where(cm, w, 0.0)
        l_sum += tl.sum(w * tl.load(l_ptr + rows + c0, mask=cm, other=0.0, cache_modifier=".cg"), 1)
        a = tl.load(acc_ptr + (rows + c0)[:, :, None].to(tl.int64) * D + offs_d[None, None, :], mask=cm[:, :, None],
                    other=0.0, cache_modifier=".cg")
        acc += tl.sum(a * w[:, :, None], 1)
    out = tl.where(l_sum[:, None] > 0, acc / l_sum[:, None], 0.0)
    tl.store(out_ptr + (head0 + offs_g)[:, None] * s_oh + offs_d[None, :], out.to(out_ptr.dtype.element_ty),
             mask=gm[:, None])


PLAN_MAX_CHUNK = 512  # tokens per program at most


def plan(B: int, Hkv: int, max_res: int, K: int, device: torch.device, block_n: int) -> int:
    """CHUNK (tokens per program): at least about one program per SM over the batch, and at most
    PLAN_MAX_CHUNK tokens each. Measured on an H100 at 13 shapes (session 24,
    docs/results/gpu/session24/attn_chunks.log): within 6% of each shape's best measured chunk
    (at 4 and 8 x 32K its chunks, 320 and 448, fall between measured ones), where the earlier
    rule (about 4 programs per SM, up to 2048 tokens) was up to 18% slower; the engine's two
    benchmark shapes (32 x 32K and 8 x 128K, 3%) get about the same time either way."""
    splits = max(1, cdiv(num_sms(device), B * Hkv))
    chunk = cdiv(max(max_res + K, 1), splits)
    return min(PLAN_MAX_CHUNK, max(block_n, cdiv(chunk, block_n) * block_n))


def sparse_decode(query, kv_cache, block_table, res_lens, sel_k, sel_v, sel_lens, scale,
                  sel_valid=None, out=None, chunk=None, block_n=None, num_warps=4, num_stages=3, sel_rows=None,
                  sel_pos=None):
    """Same contract as ``sparse_decode_ref``; returns out [B, Hq, D] in query's dtype.
    No host synchronisation: the grid is sized from block_table.shape and K."""
    B, Hq, D = query.shape
    _, _, BS, Hkv, Dk = kv_cache.shape
    K = sel_k.shape[2] if sel_pos is None else sel_pos.shape[2]
    assert sel_pos is None or (sel_pos.shape[:2] == (B, Hkv) and sel_pos.is_contiguous() and sel_pos.dtype == torch.int32)
    assert Dk == D and Hq % Hkv == 0 and D == next_pow2(D) and BS == next_pow2(BS)
    assert query.stride(-1) == 1 and kv_cache.stride(-1) == 1 and sel_k.stride(-1) == 1
    assert sel_k.stride() == sel_v.stride() and sel_k.dtype == sel_v.dtype in (query.dtype, torch.float8_e4m3fn, INT4)
    int4 = sel_k.dtype == INT4
    assert not int4 or sel_k.shape[-1] == row_bytes(D), "4-bit selections: rows of D/2 + 4 bytes"
    G = Hq // Hkv
    G_PAD = max(16, next_pow2(G))
    block_n = block_n or min(64 if D >= 128 else 128, chunk or 128)
    max_res = block_table.shape[1] * BS
    chunk = chunk or plan(B, Hkv, max_res, K, query.device, block_n)
    assert chunk % block_n == 0
    NRC, NSC = cdiv(max_res, chunk), cdiv(K, chunk)
    NC = max(1, NRC + NSC)
    f32 = dict(device=query.device, dtype=torch.float32)
    m = torch.empty(B, Hq, NC, **f32)
    l = torch.empty(B, Hq, NC, **f32)
    acc = torch.empty(B, Hq, NC, D, **f32)
    valid = sel_valid if sel_valid is not None else sel_lens
    s_v = (sel_valid.stride(0), sel_valid.stride(1)) if sel_valid is not None else (0, 0)
    sel_lens = sel_lens.contiguous()
    out = torch.empty_like(query) if out is None else out
    arrivals = arrival_counters(B * Hkv, query.device)
    _sparse_decode_partial[(NC, Hkv, B)](
        query, kv_cache, block_table, res_lens, sel_k, sel_v, sel_lens, valid,
        sel_rows if sel_rows is not None else sel_lens, sel_pos if sel_pos is not None else sel_lens, m, l, acc, arrivals, out, out.stride(0), out.stride(1), scale * LOG2E,
        query.stride(0), query.stride(1),
        kv_cache.stride(0), kv_cache.stride(1), kv_cache.stride(2), kv_cache.stride(3),
        block_table.stride(0),
        sel_k.stride(0), sel_k.stride(1), sel_k.stride(2), *s_v,
        Hq, K, NRC, NC,
        G=G, G_PAD=G_PAD, D=D, BS=BS, CHUNK=chunk, BLOCK_N=block_n,
        HAS_VALID=sel_valid is not None, F32=interpreting(),
        ROW_ALIGN=row_align(sel_k), G_MERGE=next_pow2(G), BLOCK_C=MERGE_BLOCK_C, HAS_ROWS=sel_rows is not None,
        HAS_POS=sel_pos is not None, INT4=int4,
        num_warps=num_warps, num_stages=num_stages,
    )
    return out


def bytes_touched(query, kv_cache, res_lens, sel_k, sel_lens) -> int:
    """HBM bytes the attention must read/write: q, out, resident and selected K and V
    rows actually attended, each at its own element size (fp8 selections: 1 byte); the split-K
    partials are extra, reported apart."""
    B, Hq, D = query.shape
    Hkv = kv_cache.shape[3]
    resident = int(res_lens.sum()) * Hkv * kv_cache.element_size()
    row = sel_k.shape[-1] * sel_k.element_size()  # D elements, or a 4-bit row's D/2 + 4 bytes
    selected = int(sel_lens.clamp_max(sel_k.shape[2]).sum()) * row
    return 2 * resident * D + 2 * selected + 2 * query.numel() * query.element_size()
