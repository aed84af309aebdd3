"""fp8 (e4m3) compact keys, pure torch: the reference of csrc_triton/quantize.py.

Scale granularity: one fp32 scale per (token, KV head), i.e. per key row of D
elements: scale = max|x| / 448 (e4m3's largest finite), q = x / scale.
Cost: 4 bytes per D-byte fp8 row (3.1% at D=128); it keeps outlier tokens from
flattening their neighbours, which a per-block scale would do, and the scale
factors out of q·k so scoring applies it to the logit.
"""

from __future__ import annotations

import torch

FP8 = torch.float8_e4m3fn
FP8_MAX = 448.0
SCALE_MIN = 1e-12  # an all-zero row gets this scale and quantizes to zeros


def quantize_fp8_ref(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x [..., D] -> (q [..., D] float8_e4m3fn, scale [...] fp32)."""
    xf = x.float()
    scale = xf.abs().amax(-1).clamp_min(SCALE_MIN * FP8_MAX) / FP8_MAX
    q = (xf / scale[..., None]).clamp(-FP8_MAX, FP8_MAX).to(FP8)
    return q, scale


def dequantize_fp8_ref(q: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
    return (q.float() * scale[..., None]).to(dtype)
