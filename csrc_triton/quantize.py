"""Keys -> fp8 e4m3 with one fp32 scale per row (per (token, KV head)), and back.
Reference: ``vllm_kvoffload/ops/quantize_ref.py`` (scale = max|x| / 448).

Grid (cdiv(R, BLOCK_R),): a program quantizes BLOCK_R rows of D contiguous
elements (R = x.numel() // D). D must be a power of two.

Also keys -> qlandmark-scalar's 2-bit planar summaries (``quantize_2bit_planar``), one program
per (block, KV head). Reference: ``QLandmarkScalarScorer.summarize`` on CPU
(``vllm_kvoffload/scorers/qlandmark_scalar.py``, which gives the layout).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import cdiv, interpreting, next_pow2

FP8_MAX = tl.constexpr(448.0)
SCALE_MIN = tl.constexpr(1e-12)


@triton.jit
def _quantize_rows(x_ptr, q_ptr, s_ptr, R, D: tl.constexpr, BLOCK_R: tl.constexpr):
    r = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    d = tl.arange(0, D)
    rm = r < R
    off = r.to(tl.int64)[:, None] * D + d[None, :]
    x = tl.load(x_ptr + off, mask=rm[:, None], other=0.0).to(tl.float32)
    scale = tl.maximum(tl.max(tl.abs(x), 1), SCALE_MIN * FP8_MAX) / FP8_MAX
    q = tl.clamp(x / scale[:, None], -FP8_MAX, FP8_MAX)
    tl.store(q_ptr + off, q.to(q_ptr.dtype.element_ty), mask=rm[:, None])
    tl.store(s_ptr + r, scale, mask=rm)


@triton.jit
def _dequantize_rows(q_ptr, s_ptr, x_ptr, R, D: tl.constexpr, BLOCK_R: tl.constexpr):
    r = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    d = tl.arange(0, D)
    rm = r < R
    off = r.to(tl.int64)[:, None] * D + d[None, :]
    q = tl.load(q_ptr + off, mask=rm[:, None], other=0.0).to(tl.float32)
    s = tl.load(s_ptr + r, mask=rm, other=0.0)
    tl.store(x_ptr + off, (q * s[:, None]).to(x_ptr.dtype.element_ty), mask=rm[:, None])


def quantize_fp8(x: torch.Tensor, out=None, scale=None) -> tuple[torch.Tensor, torch.Tensor]:
    """x [..., D] contiguous -> (q [..., D] float8_e4m3fn, scale [...] fp32)."""
    D = x.shape[-1]
    assert x.is_contiguous() and D == next_pow2(D)
    q = torch.empty(x.shape, dtype=torch.float8_e4m3fn, device=x.device) if out is None else out
    s = torch.empty(x.shape[:-1], dtype=torch.float32, device=x.device) if scale is None else scale
    R = x.numel() // D
    BLOCK_R = max(1, 4096 // D)
    _quantize_rows[(cdiv(R, BLOCK_R),)](x, q, s, R, D=D, BLOCK_R=BLOCK_R, num_warps=4)
    return q, s


def dequantize_fp8(q: torch.Tensor, scale: torch.Tensor, dtype=torch.bfloat16, out=None) -> torch.Tensor:
    D = q.shape[-1]
    assert q.is_contiguous() and scale.is_contiguous()
    x = torch.empty(q.shape, dtype=dtype, device=q.device) if out is None else out
    R = q.numel() // D
    BLOCK_R = max(1, 4096 // D)
    _dequantize_rows[(cdiv(R, BLOCK_R),)](q, scale, x, R, D=D, BLOCK_R=BLOCK_R, num_warps=4)
    return x


@triton.jit
def _quantize_2bit_blocks(x_ptr, h_ptr, out_ptr, STEP, BS: tl.constexpr, D: tl.constexpr, F32_DOT: tl.constexpr):
    # x: [rows, BS, D] contiguous (row = a block's KV head); out: [rows, BS * (D/4 + 2)] uint8
    row = tl.program_id(0).to(tl.int64)
    t = tl.arange(0, BS)
    d = tl.arange(0, D)
    x = tl.load(x_ptr + row * (BS * D) + t[:, None] * D + d[None, :]).to(tl.float32)
    hada = tl.load(h_ptr + d[:, None] * D + d[None, :])                       # orthonormal [D, D] fp32
    if F32_DOT:  # the interpreter's dot is exact fp32 already
        rot = tl.dot(x, hada)
    else:  # fp32 FMAs, not tf32: codes must round like the fp32 reference
        rot = tl.dot(x, hada, input_precision="ieee")
    scale = tl.maximum(tl.sqrt(tl.sum(rot * rot, 1) / D), SCALE_MIN)           # RMS of the rotated key
    level = tl.clamp(tl.floor(rot / scale[:, None] / STEP + 2.0), 0.0, 3.0)     # round(unit / STEP + 1.5)
    shifted = level.to(tl.int32) << (6 - 2 * (d % 4))[None, :]                 # channel 4j + k -> bits 6 - 2k
    codes = tl.sum(tl.reshape(shifted, (BS, D // 4, 4)), 2)                     # [BS, D/4]
    j = tl.arange(0, D // 4)
    out = out_ptr + row * (BS * (D // 4 + 2))
    tl.store(out + t[:, None] * (D // 4) + j[None, :], codes.to(tl.uint8))
    u = scale.to(tl.uint32, bitcast=True)  # bf16 bits of the (positive, finite) scale, rounded to nearest even
    bits = (u + 0x7FFF + ((u >> 16) & 1)) >> 16  # as torch rounds (the interpreter's .to(bf16) truncates)
    tl.store(out + BS * (D // 4) + 2 * t, (bits & 0xFF).to(tl.uint8))
    tl.store(out + BS * (D // 4) + 2 * t + 1, (bits >> 8).to(tl.uint8))


def quantize_2bit_planar(keys: torch.Tensor, hadamard: torch.Tensor, step: float) -> torch.Tensor:
    """keys [nb, Hkv, BS, D] (post-RoPE) -> qlandmark-scalar summaries [nb, Hkv, BS * (D/4 + 2)] uint8.
    ``hadamard``: the orthonormal [D, D] fp32 rotation; ``step``: the grid's spacing. BS >= 16
    and D >= 16, powers of two (the rotation is a ``tl.dot``)."""
    nb, H, BS, D = keys.shape
    if not (BS == next_pow2(BS) >= 16 and D == next_pow2(D) >= 16):
        raise ValueError(f"quantize_2bit_planar needs power-of-two block_size and head_dim >= 16, got {BS}, {D}")
    x = keys.contiguous()
    out = torch.empty(nb, H, BS * (D // 4 + 2), dtype=torch.uint8, device=keys.device)
    if nb * H:
        _quantize_2bit_blocks[(nb * H,)](x, hadamard.float().contiguous(), out, step, BS=BS, D=D,
                                         F32_DOT=interpreting(), num_warps=4)
    return out
