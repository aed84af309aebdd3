"""4-bit K/V rows for the host pool, pure torch (the reference of the offload kernel's INT4 path).

The pool of ``host_kv_dtype="int4"`` (merged in session 34). Session 30 measured why it is
wanted: rows of half the bytes and half the span gather in 52-60% of the time (docs/performance.md,
"Session 30"). Session 31 found a 68-byte row reads as two 64-byte units, so the host pool keeps the
nibbles alone (``nibble_bytes``) and the scales in device memory (``HostPool.scales``); the gathers
join them into the packed rows below, which the device cache and the attention use.

Each (token, KV head) row of D elements becomes D/2 + 4 bytes. The scale is max|x| / 7 (fp32), and
q = round(x / scale), which lies in -7..7. Byte j holds q[j] + 8 in its low nibble and q[j + D/2] + 8
in its high nibble, so a decode kernel reads the halves without interleaving:
q.k = q[:D/2].k_lo + q[D/2:].k_hi. The last 4 bytes hold the scale's bits. D/2 + 4 is a multiple of
4 whenever D is a multiple of 8, so the gathers still move whole 32-bit words.
"""

from __future__ import annotations

import torch

INT4 = torch.uint8  # the pool dtype that marks 4-bit rows
QMAX = 7
SCALE_MIN = 1e-12  # an all-zero row gets this scale and packs to zeros


def row_bytes(head_dim: int) -> int:
    """Bytes of one packed row of ``head_dim`` elements (as the device cache keeps it)."""
    assert head_dim % 8 == 0, f"4-bit rows need a head size that is a multiple of 8, got {head_dim}"
    return head_dim // 2 + 4


def nibble_bytes(head_dim: int) -> int:
    """Bytes of the nibbles alone: the host pool's row, whose scale lives in device memory (HostPool.scales).
    A 64-byte row at a 64-byte offset reads as one 64-byte unit over PCIe, where a 68-byte row spans two
    (session 31, docs/performance.md)."""
    return row_bytes(head_dim) - 4


def split_rows(rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Packed rows [..., D/2 + 4] -> (nibbles [..., D/2] uint8, scales [...] fp32)."""
    return rows[..., :-4], rows[..., -4:].contiguous().view(torch.float32)[..., 0]


def join_rows(nibbles: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """The inverse of ``split_rows``: (nibbles, scales) -> packed rows [..., D/2 + 4]."""
    return torch.cat([nibbles, scales.to(nibbles.device)[..., None].contiguous().view(torch.uint8)], -1)


def pack_int4_ref(x: torch.Tensor) -> torch.Tensor:
    """x [..., D] -> packed rows [..., D/2 + 4] uint8."""
    D = x.shape[-1]
    half = row_bytes(D) - 4
    xf = x.float()
    scale = xf.abs().amax(-1, keepdim=True).clamp_min(SCALE_MIN * QMAX) / QMAX
    q = torch.round(xf / scale).clamp(-QMAX, QMAX).to(torch.int32) + 8  # 1 .. 15
    nibbles = (q[..., :half] | (q[..., half:] << 4)).to(torch.uint8)
    return torch.cat([nibbles, scale.contiguous().view(torch.uint8)], -1)


def unpack_int4_ref(rows: torch.Tensor, dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
    """Packed rows [..., D/2 + 4] uint8 -> [..., D] in ``dtype``."""
    half = rows.shape[-1] - 4
    scale = rows[..., half:].contiguous().view(torch.float32)  # [..., 1]
    b = rows[..., :half].to(torch.int32)
    q = torch.cat([(b & 15) - 8, (b >> 4) - 8], -1).float()
    return (q * scale).to(dtype)
