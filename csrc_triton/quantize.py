"""Keys -> fp8 e4m3 with one fp32 scale per row (per (token, KV head)), and back.
Reference: ``vllm_kvoffload/ops/quantize_ref.py`` (scale = max|x| / 448).

Grid (cdiv(R, BLOCK_R),): a program quantizes BLOCK_R rows of D contiguous
elements (R = x.numel() // D). D must be a power of two.

``quantize_fp8`` equals the reference bit for bit: both divisions are IEEE-rounded
(``div_rn``; Triton's ``/`` is approximate on GPU), and each value is rounded to nearest
even onto the e4m3 grid in fp32 before the cast, so the cast itself is exact (the Triton
interpreter's own fp32 -> fp8 rounding is wrong; hardware and torch round to nearest even).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import cdiv, next_pow2

FP8_MAX = tl.constexpr(448.0)
SCALE_MIN = tl.constexpr(1e-12)
RNE_SHIFT = tl.constexpr(12582912.0)  # 1.5 * 2**23: (a + it) - it rounds |a| < 2**22 to an integer, ties to even


@triton.jit
def _round_to_e4m3(v):
    """fp32 v (|v| <= 448) rounded to nearest even onto the float8 e4m3 grid, still fp32.
    The grid spacing at v is 2**(e - 3) for v's binary exponent e, and 2**-9 for e4m3's
    subnormals (e < -6); scaling by powers of two is exact, so only the RNE add rounds."""
    e = (v.to(tl.int32, bitcast=True) >> 23) & 0xFF     # v's biased fp32 exponent
    e = tl.maximum(e, 127 - 6)                          # subnormals keep the spacing of 2**-6's binade
    ulp = ((e - 3) << 23).to(tl.float32, bitcast=True)  # 2**(e - 127 - 3)
    inv_ulp = ((257 - e) << 23).to(tl.float32, bitcast=True)  # 1 / ulp
    a = tl.abs(v) * inv_ulp                             # < 16: the grid points are the integers
    r = ((a + RNE_SHIFT) - RNE_SHIFT) * ulp
    return tl.where(v.to(tl.int32, bitcast=True) < 0, -r, r)  # the sign bit, -0.0 included


@triton.jit
def _quantize_rows(x_ptr, q_ptr, s_ptr, R, D: tl.constexpr, BLOCK_R: tl.constexpr):
    r = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    d = tl.arange(0, D)
    rm = r < R
    off = r.to(tl.int64)[:, None] * D + d[None, :]
    x = tl.load(x_ptr + off, mask=rm[:, None], other=0.0).to(tl.float32)
    amax = tl.maximum(tl.max(tl.abs(x), 1), SCALE_MIN * FP8_MAX)
    scale = tl.math.div_rn(amax, tl.full(amax.shape, FP8_MAX, tl.float32))  # div_rn does not broadcast
    q = tl.clamp(tl.math.div_rn(x, tl.broadcast_to(scale[:, None], x.shape)), -FP8_MAX, FP8_MAX)
    tl.store(q_ptr + off, _round_to_e4m3(q).to(q_ptr.dtype.element_ty), mask=rm[:, None])
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
