"""Offload: copy whole device blocks into host-pool slots with zero-copy stores.
Reference: ``vllm_kvoffload/ops/offload_ref.py`` (same arguments and layouts).

  kv5      [2, num_blocks, block_size, Hkv, D]  the device cache (any strides, D contiguous)
  blocks   [n] int (device)                     device blocks leaving the device
  host_kv  [num_slots, num_layers, 2, Hkv, block_size, D]  the pinned host pool: the cache's
                                                dtype, or fp8 e4m3 (rounded to nearest, saturated
                                                at +-448, as ``offload_ref.to_host``)
  slots    [n] int (device)                     their host slots
``keys_all_layers`` copies the same blocks' keys of a range of layers into one device tensor
[layers, n, Hkv, block_size, D] in one launch, so a scorer summarizes all of them in one call.
``store_blocks_all_layers_uva`` moves every layer in one launch: grid (n, 2 * Hkv, num_layers),
each program reading its layer's cache base address from a device table (all layers' kv5
views share one shape and strides). Each program moves one (block, head, K|V) tile of block_size x D elements
over PCIe, in stream order: it runs before any later kernel can overwrite the freed
device blocks, and the host never waits for it.
"""

import torch
import triton
import triton.language as tl

from ._common import interpreting, next_pow2
from .quantize import FP8_MAX

INT4_QMAX = tl.constexpr(7.0)  # ops/int4_ref.py's QMAX and SCALE_MIN
INT4_SCALE_MIN = tl.constexpr(1e-12)

_TL = {torch.bfloat16: tl.bfloat16, torch.float16: tl.float16, torch.float32: tl.float32}


@triton.jit
def _round_half_even(y):
    """torch.round's rounding (ties to even) from floor, which the interpreter has too."""
    r = tl.floor(y + 0.5)
    return tl.where(((r - y) == 0.5) & ((r - 2.0 * tl.floor(r * 0.5)) != 0.0), r - 1.0, r)


@triton.jit
def _copy_tile(src, dst, blk, slot, layer, kv, h,
               s_kv, s_blk, s_tok, s_h, d_slot, d_layer, d_kv, d_h, d_tok,
               BS: tl.constexpr, D: tl.constexpr, FP8: tl.constexpr, INT4: tl.constexpr = False,
               sc_ptr=None, c_slot=0, c_layer=0, c_kv=0, c_h=0, SCALES: tl.constexpr = False):
    """The (blk, h, kv) tile of a kv5 cache at ``src`` -> (slot, layer, kv, h) of the host pool.
    INT4: each token's row packed as ``ops/int4_ref.pack_int4_ref`` packs it (D/2 bytes of nibble
    pairs (j, j + D/2), then the fp32 scale); with SCALES the scales go to the device array at
    ``sc_ptr`` [slot, layer, kv, h, token] instead, and the host row holds the nibbles alone."""
    t = tl.arange(0, BS)
    base = src + kv * s_kv + blk * s_blk + h * s_h + t[:, None] * s_tok
    out = dst + slot * d_slot + layer * d_layer + kv * d_kv + h * d_h + t[:, None] * d_tok
    if INT4:
        half = tl.arange(0, D // 2)
        lo = tl.load(base + half[None, :]).to(tl.float32)
        hi = tl.load(base + D // 2 + half[None, :]).to(tl.float32)
        amax = tl.maximum(tl.max(tl.abs(lo), 1), tl.max(tl.abs(hi), 1))
        scale = tl.maximum(amax, INT4_SCALE_MIN * INT4_QMAX) / INT4_QMAX  # [BS]
        q_lo = tl.clamp(_round_half_even(tl.math.div_rn(lo, scale[:, None])), -INT4_QMAX, INT4_QMAX) + 8.0
        q_hi = tl.clamp(_round_half_even(tl.math.div_rn(hi, scale[:, None])), -INT4_QMAX, INT4_QMAX) + 8.0
        packed = q_lo.to(tl.int32) | (q_hi.to(tl.int32) << 4)
        tl.store(out + half[None, :], packed.to(tl.uint8))
        if SCALES:
            tl.store(sc_ptr + slot * c_slot + layer * c_layer + kv * c_kv + h * c_h + t, scale)
        else:
            scale_at = dst + slot * d_slot + layer * d_layer + kv * d_kv + h * d_h + t * d_tok + D // 2
            tl.store(scale_at.to(tl.pointer_type(tl.float32)), scale)
    else:
        d = tl.arange(0, D)
        x = tl.load(base + d[None, :])
        if FP8:
            x = tl.clamp(x.to(tl.float32), -FP8_MAX, FP8_MAX).to(tl.float8e4nv)
        tl.store(out + d[None, :], x)


@triton.jit
def _store_blocks_all_layers(table_ptr, blk_ptr, dst_ptr, slot_ptr,
                             s_kv, s_blk, s_tok, s_h,             # strides of every layer's kv5
                             d_slot, d_layer, d_kv, d_h, d_tok,   # host_kv strides (D contiguous)
                             sc_ptr, c_slot, c_layer, c_kv, c_h,  # SCALES: the 4-bit pool's scales (device)
                             HKV: tl.constexpr, BS: tl.constexpr, D: tl.constexpr, DTYPE: tl.constexpr,
                             FP8: tl.constexpr, INT4: tl.constexpr, SCALES: tl.constexpr):
    i = tl.program_id(0)
    kv = (tl.program_id(1) // HKV).to(tl.int64)
    h = (tl.program_id(1) % HKV).to(tl.int64)
    layer = tl.program_id(2).to(tl.int64)
    src = tl.load(table_ptr + layer).to(tl.pointer_type(DTYPE))  # this layer's kv5 base address
    blk = tl.load(blk_ptr + i).to(tl.int64)
    slot = tl.load(slot_ptr + i).to(tl.int64)
    _copy_tile(src, dst_ptr, blk, slot, layer, kv, h, s_kv, s_blk, s_tok, s_h,
               d_slot, d_layer, d_kv, d_h, d_tok, BS, D, FP8, INT4, sc_ptr, c_slot, c_layer, c_kv, c_h, SCALES)


@triton.jit
def _keys_all_layers(table_ptr, blk_ptr, dst_ptr, layer0,
                     s_kv, s_blk, s_tok, s_h,             # strides of every layer's kv5
                     d_i, d_layer, d_h, d_tok,            # out [layers, n, Hkv, bs, D] strides (D contiguous)
                     BS: tl.constexpr, D: tl.constexpr, DTYPE: tl.constexpr):
    i = tl.program_id(0)
    h = tl.program_id(1)
    layer = tl.program_id(2).to(tl.int64)  # within the range: its table entry is layer0 + layer
    src = tl.load(table_ptr + layer0 + layer).to(tl.pointer_type(DTYPE))
    blk = tl.load(blk_ptr + i).to(tl.int64)
    _copy_tile(src, dst_ptr, blk, i, layer, 0, h, s_kv, s_blk, s_tok, s_h,
               d_i, d_layer, 0, d_h, d_tok, BS, D, False)


def keys_all_layers(kv5: torch.Tensor, table: torch.Tensor, blocks: torch.Tensor, layer0: int,
                    num_layers: int, num_warps: int = 4) -> torch.Tensor:
    """Keys of device blocks ``blocks`` [n] in layers layer0 .. layer0 + num_layers - 1 of the caches
    whose base addresses ``table`` holds (``layer_pointer_table``; ``kv5``: any one of those views,
    for the shared shape and strides) -> [num_layers, n, Hkv, block_size, D] on the device, in the
    caches' dtype. One launch."""
    _, _, BS, Hkv, D = kv5.shape
    assert kv5.stride(-1) == 1 and BS == next_pow2(BS) and D == next_pow2(D)
    assert 0 <= layer0 and layer0 + num_layers <= table.numel()
    n = blocks.numel()
    out = torch.empty(num_layers, n, Hkv, BS, D, dtype=kv5.dtype, device=kv5.device)
    if n == 0 or num_layers == 0:
        return out
    so = out.stride()
    _keys_all_layers[(n, Hkv, num_layers)](
        table, blocks, out, layer0,
        kv5.stride(0), kv5.stride(1), kv5.stride(2), kv5.stride(3),
        so[1], so[0], so[2], so[3],
        BS=BS, D=D, DTYPE=_TL[kv5.dtype], num_warps=num_warps)
    return out


def _check_pool(kv5: torch.Tensor, host_kv: torch.Tensor, scales: torch.Tensor | None = None) -> None:
    from vllm_kvoffload.ops.int4_ref import INT4, nibble_bytes, row_bytes

    two, _, BS, Hkv, D = kv5.shape
    assert two == 2 and kv5.stride(-1) == 1 and host_kv.stride(-1) == 1
    assert host_kv.dtype in (kv5.dtype, torch.float8_e4m3fn, INT4)
    assert scales is None or (host_kv.dtype == INT4 and scales.dtype == torch.float32
                              and scales.shape == host_kv.shape[:5] and scales.stride(-1) == 1)
    row = D
    if host_kv.dtype == INT4:  # packed rows, or the nibbles alone with their scales kept apart
        row = row_bytes(D) if scales is None else nibble_bytes(D)
    assert host_kv.shape[2:] == (2, Hkv, BS, row), (host_kv.shape, (2, Hkv, BS, row))
    if host_kv.device.type == "cpu" and not interpreting():
        assert host_kv.is_pinned(), "zero-copy stores need pinned (page-locked) host memory"


def layer_pointer_table(kv5s: list[torch.Tensor]) -> torch.Tensor:
    """Device int64 [num_layers]: the base address of each layer's kv5 view, the table
    ``store_blocks_all_layers_uva`` reads. Checks the invariant the kernel relies on: every
    view has the first one's shape, strides, dtype and device."""
    first = kv5s[0]
    for kv5 in kv5s:
        assert (kv5.shape, kv5.stride(), kv5.dtype, kv5.device) == \
            (first.shape, first.stride(), first.dtype, first.device), "kv5 views must share one layout"
    return torch.tensor([kv5.data_ptr() for kv5 in kv5s], dtype=torch.int64, device=first.device)


def store_blocks_all_layers_uva(kv5s: list[torch.Tensor], blocks: torch.Tensor, host_kv: torch.Tensor,
                                slots: torch.Tensor, table: torch.Tensor | None = None,
                                num_warps: int = 4, scales: torch.Tensor | None = None) -> None:
    """Device blocks of every layer into their host slots: kv5s[layer] -> host_kv[:, layer].
    table: ``layer_pointer_table(kv5s)``, passed by callers that cache it (built here otherwise).
    scales: a 4-bit pool's scale array [S, L, 2, Hkv, BS] fp32 on the device (host rows: nibbles only)."""
    kv5 = kv5s[0]
    _check_pool(kv5, host_kv, scales)
    _, _, BS, Hkv, D = kv5.shape
    assert len(kv5s) == host_kv.shape[1] and BS == next_pow2(BS) and D == next_pow2(D)
    n = blocks.numel()
    if n == 0:
        return
    table = layer_pointer_table(kv5s) if table is None else table
    st = host_kv.stride()
    _store_blocks_all_layers[(n, 2 * Hkv, len(kv5s))](
        table, blocks, host_kv, slots,
        kv5.stride(0), kv5.stride(1), kv5.stride(2), kv5.stride(3),
        st[0], st[1], st[2], st[3], st[4],
        *((blocks, 0, 0, 0, 0) if scales is None else (scales, *scales.stride()[:4])),
        HKV=Hkv, BS=BS, D=D, DTYPE=_TL[kv5.dtype], FP8=host_kv.dtype == torch.float8_e4m3fn,
        INT4=host_kv.dtype == torch.uint8, SCALES=scales is not None, num_warps=num_warps)
