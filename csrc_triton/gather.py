"""Gather the selected cold tokens of every (request, KV head) from the host pool
into device staging buffers sel_k/sel_v [B, Hkv, K, D]. Reference:
``vllm_kvoffload/ops/gather_ref.py`` (same arguments and layouts).

(a) ``gather_uva``: a Triton kernel that reads the pinned host pool directly over
    PCIe (zero-copy). Pinned memory from cudaHostAlloc (torch's pin_memory) is
    mapped into the device's unified address space, so its address is valid in a
    kernel. Two ways to hand it to Triton (``mode``):
      "tensor": pass the pinned CPU tensor itself; Triton's launcher turns its
                data_ptr into a device pointer with cuPointerGetAttribute, which
                succeeds for pinned memory (a pageable tensor is refused);
      "int":    pass data_ptr() as an int64 and cast it in the kernel
                (``addr.to(tl.pointer_type(dtype))``), bypassing any checks.
    Grid (cdiv(K, BLOCK_T), Hkv, B): each program copies BLOCK_T rows of D
    elements per KV tensor (K and V), writes zeros past counts[b, h].
(b) ``gather_copy_engine``: idx to the host (one small D2H, synchronising), the rows
    gathered on the CPU with index_select into a pinned staging buffer, then one
    non_blocking H2D copy per tensor on a side stream (DMA engine, no SMs used).
    Rows past counts are unspecified.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import cdiv, interpreting

_TL = {torch.bfloat16: tl.bfloat16, torch.float16: tl.float16, torch.float32: tl.float32}


@triton.jit(do_not_specialize=['layer', 'K', 's_slb', 's_ib', 's_ih', 's_ob', 's_oh'])  # per-step sizes: no recompiles
def _gather_rows(
    kv_arg, slots_ptr, idx_ptr, cnt_ptr, ok_ptr, ov_ptr,
    layer, K, Hkv,
    s_slot, s_layer, s_kv, s_h, s_tok,    # host_kv [S, L, 2, Hkv, BS, D], D contiguous
    s_slb,                                # cold_slots [B, max_cold_blocks]
    s_ib, s_ih,                           # idx [B, Hkv, K]
    s_ob, s_oh, s_ot,                     # out_k and out_v [B, Hkv, K, D], same strides
    D: tl.constexpr, BS: tl.constexpr, BLOCK_T: tl.constexpr,
    FROM_INT: tl.constexpr, DTYPE: tl.constexpr,
):
    pid = tl.program_id(0)
    h = tl.program_id(1)
    b = tl.program_id(2)
    if FROM_INT:
        kv_ptr = kv_arg.to(tl.pointer_type(DTYPE))
    else:
        kv_ptr = kv_arg
    j = pid * BLOCK_T + tl.arange(0, BLOCK_T)
    d = tl.arange(0, D)
    cnt = tl.load(cnt_ptr + b * Hkv + h)
    jm = j < cnt
    i = tl.load(idx_ptr + b * s_ib + h * s_ih + j, mask=jm, other=0)
    slot = tl.load(slots_ptr + b * s_slb + i // BS, mask=jm, other=0).to(tl.int64)
    src = slot * s_slot + layer * s_layer + h * s_h + (i % BS) * s_tok
    k = tl.load(kv_ptr + src[:, None] + d[None, :], mask=jm[:, None], other=0.0)
    v = tl.load(kv_ptr + s_kv + src[:, None] + d[None, :], mask=jm[:, None], other=0.0)
    dst = b.to(tl.int64) * s_ob + h * s_oh + j.to(tl.int64)[:, None] * s_ot + d[None, :]
    om = (j < K)[:, None]
    tl.store(ok_ptr + dst, k, mask=om)
    tl.store(ov_ptr + dst, v, mask=om)


def gather_uva(host_kv, layer, cold_slots, idx, counts, out_k=None, out_v=None,
               mode="tensor", block_t=32, num_warps=4):
    """Same contract as ``gather_ref``; cold_slots/idx/counts/out on the device,
    host_kv pinned on the host (or on the device, or CPU under the interpreter)."""
    B, Hkv, K = idx.shape
    S, L, two, Hkv2, BS, D = host_kv.shape
    assert two == 2 and Hkv2 == Hkv and host_kv.stride(-1) == 1 and counts.is_contiguous()
    if host_kv.device.type == "cpu" and not interpreting():
        assert host_kv.is_pinned(), "zero-copy reads need pinned (page-locked) host memory"
    mk = lambda: torch.empty(B, Hkv, K, D, dtype=host_kv.dtype, device=idx.device)  # noqa: E731
    out_k = mk() if out_k is None else out_k
    out_v = mk() if out_v is None else out_v
    assert out_k.stride() == out_v.stride() and out_k.stride(-1) == 1
    arg = host_kv if mode == "tensor" else host_kv.data_ptr()
    st = host_kv.stride()
    _gather_rows[(cdiv(K, block_t), Hkv, B)](
        arg, cold_slots, idx, counts, out_k, out_v, layer, K, Hkv,
        st[0], st[1], st[2], st[3], st[4], cold_slots.stride(0), idx.stride(0), idx.stride(1),
        out_k.stride(0), out_k.stride(1), out_k.stride(2),
        D=D, BS=BS, BLOCK_T=block_t, FROM_INT=mode == "int", DTYPE=_TL[host_kv.dtype],
        num_warps=num_warps,
    )
    return out_k, out_v


def gather_copy_engine(host_kv, layer, cold_slots_cpu, idx, counts, out_k=None, out_v=None,
                       staging=None, stream=None):
    """(b): host index_select into pinned ``staging`` [2, B, Hkv, K, D], then async H2D on
    ``stream`` (default: a new side stream). The caller orders its consumer after
    ``stream`` (``torch.cuda.current_stream().wait_stream(stream)``). Returns out_k, out_v, stream."""
    B, Hkv, K = idx.shape
    S, L, _, _, BS, D = host_kv.shape
    dev = idx.device
    i = idx.to("cpu", torch.long)  # synchronises with the producer of idx
    valid = torch.arange(K)[None, None, :] < counts.to("cpu")[:, :, None]
    i = torch.where(valid, i, 0)
    slot = cold_slots_cpu.long().gather(1, (i // BS).view(B, -1)).view(B, Hkv, K)
    h = torch.arange(Hkv)[None, :, None]
    # row of key (slot, layer, 0, h, tok) in host_kv viewed as [S*L*2*Hkv*BS, D]
    row = ((slot * L + layer) * 2 * Hkv + h) * BS + i % BS
    flat = host_kv.view(-1, D)
    pin = dev.type == "cuda"
    if staging is None:
        staging = torch.empty(2, B, Hkv, K, D, dtype=host_kv.dtype, pin_memory=pin)
    torch.index_select(flat, 0, row.view(-1), out=staging[0].view(-1, D))
    torch.index_select(flat, 0, (row + Hkv * BS).view(-1), out=staging[1].view(-1, D))
    mk = lambda: torch.empty(B, Hkv, K, D, dtype=host_kv.dtype, device=dev)  # noqa: E731
    out_k = mk() if out_k is None else out_k
    out_v = mk() if out_v is None else out_v
    if pin:
        stream = stream or torch.cuda.Stream(dev)
        with torch.cuda.stream(stream):
            out_k.copy_(staging[0], non_blocking=True)
            out_v.copy_(staging[1], non_blocking=True)
    else:
        out_k.copy_(staging[0])
        out_v.copy_(staging[1])
    return out_k, out_v, stream
