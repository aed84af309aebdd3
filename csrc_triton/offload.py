"""Offload: copy whole device blocks into host-pool slots with zero-copy stores.
Reference: ``vllm_kvoffload/ops/offload_ref.py`` (same arguments and layouts).

  kv5      [2, num_blocks, block_size, Hkv, D]  the device cache (any strides, D contiguous)
  blocks   [n] int (device)                     device blocks leaving the device
  host_kv  [num_slots, num_layers, 2, Hkv, block_size, D]  the pinned host pool
  slots    [n] int (device)                     their host slots
Grid (n, Hkv, 2): each program moves one (block, head, K|V) tile of block_size x D
elements over PCIe, in stream order: it runs before any later kernel can overwrite
the freed device blocks, and the host never waits for it.
"""

import torch
import triton
import triton.language as tl

from ._common import interpreting

_TL = {torch.bfloat16: tl.bfloat16, torch.float16: tl.float16, torch.float32: tl.float32}


@triton.jit(do_not_specialize=['layer'])  # per-step sizes: no recompiles
def _store_blocks(src_ptr, blk_ptr, dst_ptr, slot_ptr, layer,
                  s_kv, s_blk, s_tok, s_h,             # kv5 strides (D contiguous)
                  d_slot, d_layer, d_kv, d_h, d_tok,   # host_kv strides (D contiguous)
                  BS: tl.constexpr, D: tl.constexpr, FROM_INT: tl.constexpr, DTYPE: tl.constexpr):
    i = tl.program_id(0)
    h = tl.program_id(1)
    kv = tl.program_id(2)
    blk = tl.load(blk_ptr + i).to(tl.int64)
    slot = tl.load(slot_ptr + i).to(tl.int64)
    t = tl.arange(0, BS)
    d = tl.arange(0, D)
    x = tl.load(src_ptr + kv * s_kv + blk * s_blk + h * s_h + t[:, None] * s_tok + d[None, :])
    dst = dst_ptr.to(tl.pointer_type(DTYPE)) if FROM_INT else dst_ptr
    tl.store(dst + slot * d_slot + layer * d_layer + kv * d_kv + h * d_h + t[:, None] * d_tok + d[None, :], x)


def store_blocks_uva(kv5: torch.Tensor, blocks: torch.Tensor, host_kv: torch.Tensor, layer: int,
                     slots: torch.Tensor, mode: str = "tensor", num_warps: int = 4) -> None:
    two, _, BS, Hkv, D = kv5.shape
    assert two == 2 and kv5.stride(-1) == 1 and host_kv.stride(-1) == 1
    assert host_kv.shape[2:] == (2, Hkv, BS, D) and host_kv.dtype == kv5.dtype
    if host_kv.device.type == "cpu" and not interpreting():
        assert host_kv.is_pinned(), "zero-copy stores need pinned (page-locked) host memory"
    n = blocks.numel()
    if n == 0:
        return
    dst = host_kv if mode == "tensor" else host_kv.data_ptr()
    st = host_kv.stride()
    _store_blocks[(n, Hkv, 2)](kv5, blocks, dst, slots, layer,
                               kv5.stride(0), kv5.stride(1), kv5.stride(2), kv5.stride(3),
                               st[0], st[1], st[2], st[3], st[4],
                               BS=BS, D=D, FROM_INT=mode == "int", DTYPE=_TL[kv5.dtype], num_warps=num_warps)
