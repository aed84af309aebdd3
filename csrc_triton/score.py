"""Exact-topk scoring of cold tokens from compact keys (bf16, or fp8 e4m3 with a
per-(token, KV head) fp32 scale). Reference: ``vllm_kvoffload/ops/score_ref.py``
(same arguments and layouts): mass[b, h, t] = sum_g softmax_t(q_{hG+g}·k_t * scale).

Two passes, token axis of each (request, KV head) cut into chunks of CHUNK:
  1. grid (NC, Hkv, B): logits l = q·k*scale*log2(e) for the G query heads of KV
     head h at once (M dim of tl.dot, padded to G_PAD >= 16), written to a
     workspace [B, Hq, n_max] fp32, plus per chunk and query head the max m and
     sum s = sum exp2(l - m) (online).
  2. grid (NC, Hkv, B): reduce the NC (m, s) pairs of each query head to (M_g, S_g),
     then mass = sum_g exp2(l - M_g) / S_g; -inf past cold_lens[b].
Re-reading G fp32 logits (4G bytes/token) is far cheaper than re-reading the key
(D*2 bytes). For fp8 the scale multiplies the logit (it factors out of q·k); the
fp8 key is widened to fp16 exactly and q is rounded to fp16 (exact below 65504); bf16
keys and q stay bf16.
Tile constraints: D power of two >= 16, BLOCK_N multiple of 16, CHUNK multiple of BLOCK_N.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import LOG2E, cdiv, interpreting, mma, next_pow2, num_sms

NEG = tl.constexpr(-1.0e30)

# Key dtype -> (BLOCK_N, num_warps, num_stages): the fastest on the H100 at the engine's
# shapes, 16 and 32 requests of 32K (examples/gpu_score.py; docs/kernels.md).
DEFAULTS = {"bf16": (64, 4, 2), "fp8": (128, 4, 3)}


@triton.jit(do_not_specialize=['s_slb', 'N_MAX', 'NC', 'CHUNK'])  # per-step sizes: no recompiles
def _score_logits(
    q_ptr, k_ptr, ks_ptr, slots_ptr, len_ptr, lg_ptr, pm_ptr, ps_ptr,
    qk_scale,
    s_qb, s_qh,                    # query [B, Hq, D]
    s_kslot, s_kh, s_ktok,         # keys [S, Hkv, BS, D], D contiguous
    s_sslot, s_sh,                 # key_scale [S, Hkv, BS], BS contiguous (FP8)
    s_slb,                         # cold_slots [B, max_cold_blocks]
    Hq, N_MAX, NC,
    G, G_PAD: tl.constexpr, D: tl.constexpr, BS: tl.constexpr,
    CHUNK, BLOCK_N: tl.constexpr, FP8: tl.constexpr, F32: tl.constexpr, WIDEN: tl.constexpr,
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
    q = q.to(WIDEN)  # bf16 for bf16 keys; fp8 keys widen to WIDEN (fp16: one cvt per pair)
    n = tl.load(len_ptr + b)
    lo = c * CHUNK
    hi = tl.minimum(lo + CHUNK, n)
    lg_row = (b * Hq + qh).to(tl.int64) * N_MAX  # workspace rows [B*Hq, N_MAX]
    m_i = tl.full([G_PAD], NEG, tl.float32)
    s_i = tl.zeros([G_PAD], tl.float32)
    for start in range(lo, hi, BLOCK_N):
        t = start + offs_n
        tmask = t < hi
        slot = tl.load(slots_ptr + b * s_slb + t // BS, mask=tmask, other=0).to(tl.int64)
        row = slot * s_kslot + h * s_kh + (t % BS) * s_ktok
        k = tl.load(k_ptr + row[:, None] + offs_d[None, :], mask=tmask[:, None], other=0.0)
        l = mma(q, tl.trans(k.to(WIDEN)), F32)  # [G_PAD, BLOCK_N] fp32
        if FP8:
            ks = tl.load(ks_ptr + slot * s_sslot + h * s_sh + t % BS, mask=tmask, other=0.0)
            l = l * (ks * qk_scale)[None, :]
        else:
            l = l * qk_scale
        l = tl.where(tmask[None, :], l, float("-inf"))
        tl.store(lg_ptr + lg_row[:, None] + t[None, :], l, mask=gmask[:, None] & tmask[None, :])
        m_new = tl.maximum(m_i, tl.max(l, 1))
        s_i = s_i * tl.exp2(m_i - m_new) + tl.sum(tl.exp2(l - m_new[:, None]), 1)
        m_i = m_new
    ws = (b * Hq + qh) * NC + c  # partial stats [B, Hq, NC]
    tl.store(pm_ptr + ws, m_i, mask=gmask)
    tl.store(ps_ptr + ws, s_i, mask=gmask)


@triton.jit(do_not_specialize=['N_MAX', 'NC', 'CHUNK'])  # per-step sizes: no recompiles
def _score_mass(
    lg_ptr, pm_ptr, ps_ptr, len_ptr, mass_ptr,
    Hq, Hkv, N_MAX, NC,
    G, G_PAD: tl.constexpr, NC_PAD: tl.constexpr,
    CHUNK, BLOCK_N: tl.constexpr,
):
    c = tl.program_id(0)
    h = tl.program_id(1)
    b = tl.program_id(2)
    offs_g = tl.arange(0, G_PAD)
    offs_c = tl.arange(0, NC_PAD)
    offs_n = tl.arange(0, BLOCK_N)
    gmask = offs_g < G
    qh = h * G + offs_g
    st = (b * Hq + qh)[:, None] * NC + offs_c[None, :]
    smask = gmask[:, None] & (offs_c[None, :] < NC)
    pm = tl.load(pm_ptr + st, mask=smask, other=NEG)
    ps = tl.load(ps_ptr + st, mask=smask, other=0.0)
    M = tl.max(pm, 1)
    S = tl.sum(ps * tl.exp2(pm - M[:, None]), 1)
    inv = tl.where(S > 0, 1.0 / tl.maximum(S, 1e-30), 0.0)
    n = tl.load(len_ptr + b)
    lo = c * CHUNK
    hi = tl.minimum(lo + CHUNK, N_MAX)
    lg_row = (b * Hq + qh).to(tl.int64) * N_MAX
    out = mass_ptr + (b * Hkv + h).to(tl.int64) * N_MAX
    for start in range(lo, hi, BLOCK_N):
        t = start + offs_n
        valid = t < n
        l = tl.load(lg_ptr + lg_row[:, None] + t[None, :], mask=gmask[:, None] & valid[None, :],
                    other=float("-inf")).to(tl.float32)
        p = tl.exp2(l - M[:, None]) * inv[:, None]
        mass = tl.where(valid, tl.sum(p, 0), float("-inf"))
        tl.store(out + t, mass, mask=t < hi)


def plan(B: int, Hkv: int, n_max: int, device: torch.device, block_n: int) -> int:
    """CHUNK: about 4 programs per SM over the batch, and at most 256 chunks per row."""
    splits = max(1, cdiv(4 * num_sms(device), B * Hkv))
    chunk = max(cdiv(max(n_max, 1), splits), cdiv(n_max, 256))
    return max(block_n, cdiv(chunk, block_n) * block_n)


def score_mass(query, keys, key_scale, cold_slots, cold_lens, scale, n_max=None, out=None,
               chunk=None, block_n=None, num_warps=None, num_stages=None, fp8_widen="fp16"):
    """Same contract as ``score_mass_ref``. Returns mass [B, Hkv, n_max] fp32.

    fp8 keys are widened to ``fp8_widen`` ("fp16" or "bf16") for the dot; the query is
    rounded to the same type. e4m3 values are exact in both; a bf16 query is exact in fp16
    when |q| < 65504 (post-RoPE queries are far below), and the fp16 widening is one
    conversion instruction per pair of elements, the bf16 one several."""
    B, Hq, D = query.shape
    _, Hkv, BS, Dk = keys.shape
    assert Dk == D and Hq % Hkv == 0 and D == next_pow2(D) and BS == next_pow2(BS)
    assert keys.stride(-1) == 1 and query.stride(-1) == 1
    fp8 = keys.dtype == torch.float8_e4m3fn
    assert fp8 == (key_scale is not None)
    d_block, d_warps, d_stages = DEFAULTS["fp8" if fp8 else "bf16"]
    num_warps, num_stages = num_warps or d_warps, num_stages or d_stages
    if fp8_widen not in ("fp16", "bf16"):
        raise ValueError(f"fp8_widen={fp8_widen!r}: accepted 'fp16', 'bf16'")
    widen = tl.float16 if fp8 and fp8_widen == "fp16" else tl.bfloat16
    G = Hq // Hkv
    G_PAD = max(16, next_pow2(G))
    n_max = n_max or cold_slots.shape[1] * BS
    block_n = block_n or min(d_block, chunk or d_block)
    chunk = chunk or plan(B, Hkv, n_max, query.device, block_n)
    NC = max(1, cdiv(n_max, chunk))
    logits, pm, ps = workspace(B, Hq, n_max, NC, query.device)
    ks = key_scale if fp8 else keys
    s_s = (key_scale.stride(0), key_scale.stride(1)) if fp8 else (0, 0)
    if fp8:
        assert key_scale.stride(-1) == 1
    _score_logits[(NC, Hkv, B)](
        query, keys, ks, cold_slots, cold_lens, logits, pm, ps, scale * LOG2E,
        query.stride(0), query.stride(1), keys.stride(0), keys.stride(1), keys.stride(2), *s_s,
        cold_slots.stride(0), Hq, n_max, NC,
        G=G, G_PAD=G_PAD, D=D, BS=BS, CHUNK=chunk, BLOCK_N=block_n, FP8=fp8, F32=interpreting(), WIDEN=widen,
        num_warps=num_warps, num_stages=num_stages,
    )
    return finish_mass(logits, pm, ps, cold_lens, Hkv, chunk, out)


def workspace(B: int, Hq: int, n_max: int, NC: int, device: torch.device, logits_dtype=torch.float32):
    """The first pass's outputs: logits [B, Hq, n_max] (fp32, or fp16 where the first pass rounds
    them) and per-chunk max / sum [B, Hq, NC], fp32."""
    logits = torch.empty(B, Hq, n_max, device=device, dtype=logits_dtype)
    pm = torch.empty(B, Hq, NC, device=device, dtype=torch.float32)
    return logits, pm, torch.empty_like(pm)


def finish_mass(logits, pm, ps, cold_lens, Hkv: int, chunk: int, out=None, block_n=512, num_warps=8,
                dot_rows=False):
    """The second pass, shared by every first pass that fills ``workspace`` with log2-scaled
    logits and per-chunk (max, sum) over chunks of ``chunk`` tokens: mass [B, Hkv, n_max].
    A GQA group's rows are padded to the next power of two (this pass has no dot);
    ``dot_rows=True`` pads them to 16 as the first pass's dot does (the old layout, kept for the
    sweep: 102 against 71 us at 32 requests of 32K on the H100, examples/gpu_score.py --finish)."""
    B, Hq, n_max = logits.shape
    NC = pm.shape[2]
    G = Hq // Hkv
    mass = torch.empty(B, Hkv, n_max, device=logits.device, dtype=torch.float32) if out is None else out
    _score_mass[(NC, Hkv, B)](
        logits, pm, ps, cold_lens, mass, Hq, Hkv, n_max, NC,
        G=G, G_PAD=max(16, next_pow2(G)) if dot_rows else next_pow2(G), NC_PAD=max(2, next_pow2(NC)), CHUNK=chunk,
        BLOCK_N=block_n, num_warps=num_warps,
    )
    return mass


def bytes_touched(query, keys, key_scale, cold_lens) -> int:
    """HBM bytes: keys (+scales) of every cold token, logits written and read, mass written."""
    B, Hq, D = query.shape
    Hkv = keys.shape[1]
    n = int(cold_lens.sum())
    per_tok_head = D * keys.element_size() + (4 if key_scale is not None else 0)
    return n * Hkv * per_tok_head + n * Hq * 4 * 2 + n * Hkv * 4
