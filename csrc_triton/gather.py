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
(c) ``gather_cached``: (a) with a device cache, the previous step's selection of the same
    (request, layer, KV head); tokens selected again are copied on the device.
(b) ``gather_copy_engine``: idx to the host (one small D2H, synchronising), the rows
    gathered on the CPU with index_select into a pinned staging buffer, then one
    non_blocking H2D copy per tensor on a side stream (DMA engine, no SMs used).
    Rows past counts are unspecified.
An fp8 pool (``host_kv_dtype=fp8``) is widened on the way: every gather takes ``out_dtype``
(default: the pool's dtype) for its outputs, and (a) and (c) convert in registers, so PCIe
carries the fp8 bytes.
Where nothing is converted (``out_dtype`` is the pool's), (a) and (c) move rows as 32-bit words
(``_words``): a tile then holds a quarter (fp8) or half (bf16) as many elements, each with its
64-bit address in registers. On the H100 the cached gather had used 160 registers per thread
(19% occupancy, stalled on memory latency); words took it from 166 to 102 us per layer at 100%
hits, against 53 us for a device copy of the same bytes (examples/gpu_gather.py, docs/kernels.md).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import cdiv, interpreting, row_align

_TL = {torch.bfloat16: tl.bfloat16, torch.float16: tl.float16, torch.float32: tl.float32,
       torch.float8_e4m3fn: tl.float8e4nv}


@triton.jit(do_not_specialize=['layer', 'K', 's_slb', 's_ib', 's_ih', 's_ob', 's_oh'])  # per-step sizes: no recompiles
def _gather_rows(
    kv_arg, slots_ptr, idx_ptr, cnt_ptr, ok_ptr, ov_ptr,
    layer, K, Hkv,
    s_slot, s_layer, s_kv, s_h, s_tok,    # host_kv [S, L, 2, Hkv, BS, D], D contiguous
    s_slb,                                # cold_slots [B, max_cold_blocks]
    s_ib, s_ih,                           # idx [B, Hkv, K]
    s_ob, s_oh, s_ot,                     # out_k and out_v [B, Hkv, K, D], same strides
    D: tl.constexpr, BS: tl.constexpr, BLOCK_T: tl.constexpr,  # D: elements of a row (int32 words: _words)
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
    tl.store(ok_ptr + dst, k.to(ok_ptr.dtype.element_ty), mask=om)
    tl.store(ov_ptr + dst, v.to(ov_ptr.dtype.element_ty), mask=om)


def _words(*tensors: torch.Tensor) -> list[torch.Tensor] | None:
    """The tensors viewed as int32 words along their last dim (rows copied without conversion),
    or None where a row is not a whole number of words or a power of two of them."""
    size = tensors[0].element_size()
    row_bytes = tensors[0].shape[-1] * size
    words = row_bytes // 4
    same_rows = all(t.dtype == tensors[0].dtype and t.stride(-1) == 1 for t in tensors)
    aligned = all(row_align(t) * size % 4 == 0 for t in tensors)  # every row starts on a word
    if not (same_rows and aligned and row_bytes % 4 == 0 and words & (words - 1) == 0):
        return None
    return [t.view(torch.int32) for t in tensors]


def _checked_outputs(host_kv, idx, counts, out_k, out_v, out_dtype):
    """Shared checks of the zero-copy gathers; allocates the staging outputs [B, Hkv, K, D]."""
    B, Hkv, K = idx.shape
    S, L, two, Hkv2, BS, D = host_kv.shape
    assert two == 2 and Hkv2 == Hkv and host_kv.stride(-1) == 1 and counts.is_contiguous()
    if host_kv.device.type == "cpu" and not interpreting():
        assert host_kv.is_pinned(), "zero-copy reads need pinned (page-locked) host memory"
    mk = lambda: torch.empty(B, Hkv, K, D, dtype=out_dtype or host_kv.dtype, device=idx.device)  # noqa: E731
    out_k = mk() if out_k is None else out_k
    out_v = mk() if out_v is None else out_v
    assert out_k.stride() == out_v.stride() and out_k.stride(-1) == 1 and out_k.dtype == out_v.dtype
    return out_k, out_v


def gather_uva(host_kv, layer, cold_slots, idx, counts, out_k=None, out_v=None,
               mode="tensor", block_t=32, num_warps=4, out_dtype=None):
    """Same contract as ``gather_ref``; cold_slots/idx/counts/out on the device,
    host_kv pinned on the host (or on the device, or CPU under the interpreter)."""
    B, Hkv, K = idx.shape
    BS = host_kv.shape[-2]
    out_k, out_v = _checked_outputs(host_kv, idx, counts, out_k, out_v, out_dtype)
    kv, ok, ov = _words(host_kv, out_k, out_v) or (host_kv, out_k, out_v)
    arg = kv if mode == "tensor" else kv.data_ptr()
    st = kv.stride()
    _gather_rows[(cdiv(K, block_t), Hkv, B)](
        arg, cold_slots, idx, counts, ok, ov, layer, K, Hkv,
        st[0], st[1], st[2], st[3], st[4], cold_slots.stride(0), idx.stride(0), idx.stride(1),
        ok.stride(0), ok.stride(1), ok.stride(2),
        D=kv.shape[-1], BS=BS, BLOCK_T=block_t, FROM_INT=mode == "int", DTYPE=_TL.get(kv.dtype, tl.int32),
        num_warps=num_warps,
    )
    return out_k, out_v


def gather_copy_engine(host_kv, layer, cold_slots_cpu, idx, counts, out_k=None, out_v=None,
                       staging=None, stream=None, out_dtype=None):
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
    mk = lambda: torch.empty(B, Hkv, K, D, dtype=out_dtype or host_kv.dtype, device=dev)  # noqa: E731
    out_k = mk() if out_k is None else out_k
    out_v = mk() if out_v is None else out_v
    if pin:  # (copy_ widens an fp8 pool on the device, after the transfer)
        stream = stream or torch.cuda.Stream(dev)
        with torch.cuda.stream(stream):
            out_k.copy_(staging[0], non_blocking=True)
            out_v.copy_(staging[1], non_blocking=True)
    else:
        out_k.copy_(staging[0])
        out_v.copy_(staging[1])
    return out_k, out_v, stream


# ---- (c) the device cache: last step's selection of each (request, KV head) -------------
@triton.jit(do_not_specialize=['layer', 'K', 'KP', 'N_ITER', 's_slb', 's_ib', 's_ih', 's_ob', 's_oh',
                               's_pib', 's_pih', 's_pob', 's_poh'])
def _gather_cached_rows(
    kv_arg, slots_ptr, idx_ptr, cnt_ptr, ok_ptr, ov_ptr,
    prow_ptr, pidx_ptr, pcnt_ptr, pk_ptr, pv_ptr, stat_ptr,
    layer, K, KP, N_ITER, Hkv,
    s_slot, s_layer, s_kv, s_h, s_tok,    # host_kv [S, L, 2, Hkv, BS, D], D contiguous
    s_slb,                                # cold_slots [B, max_cold_blocks]
    s_ib, s_ih,                           # idx [B, Hkv, K]
    s_ob, s_oh, s_ot,                     # out_k and out_v [B, Hkv, K, D], same strides
    s_pib, s_pih,                         # prev_idx [Bp, Hkv, KP]
    s_pob, s_poh, s_pot,                  # prev_k and prev_v [Bp, Hkv, KP, D], same strides
    D: tl.constexpr, BS: tl.constexpr, BLOCK_T: tl.constexpr,  # D: elements of a row (int32 words: _words)
):
    pid = tl.program_id(0)
    h = tl.program_id(1)
    b = tl.program_id(2)
    j = pid * BLOCK_T + tl.arange(0, BLOCK_T)
    d = tl.arange(0, D)
    cnt = tl.load(cnt_ptr + b * Hkv + h)
    jm = j < cnt
    i = tl.load(idx_ptr + b * s_ib + h * s_ih + j, mask=jm, other=0)
    # Where was token i in this request's previous selection? prev_idx rows are ascending
    # (topk_select's contract), so a branch-free binary search over [0, pcnt) finds it.
    prow = tl.load(prow_ptr + b)
    pcnt = tl.load(pcnt_ptr + tl.maximum(prow, 0) * Hkv + h, mask=prow >= 0, other=0)
    prev = pidx_ptr + prow.to(tl.int64) * s_pib + h * s_pih
    lo = tl.zeros([BLOCK_T], tl.int32)
    hi = tl.zeros([BLOCK_T], tl.int32) + pcnt
    for _ in range(N_ITER):
        live = lo < hi
        mid = (lo + hi) // 2
        v = tl.load(prev + mid, mask=live & jm, other=0)
        go_right = live & (v < i)
        lo = tl.where(go_right, mid + 1, lo)
        hi = tl.where(live & ~go_right, mid, hi)
    hit = jm & (lo < pcnt)
    hit = hit & (tl.load(prev + lo, mask=hit, other=-1) == i)
    miss = jm & ~hit
    # hits: a device read of the cached row; misses: a zero-copy read over PCIe
    csrc = prow.to(tl.int64) * s_pob + h * s_poh + lo.to(tl.int64)[:, None] * s_pot + d[None, :]
    slot = tl.load(slots_ptr + b * s_slb + i // BS, mask=miss, other=0).to(tl.int64)
    hsrc = slot * s_slot + layer * s_layer + h * s_h + (i % BS) * s_tok
    out_ty = ok_ptr.dtype.element_ty  # the cache holds earlier outputs: the same dtype (an fp8 pool's widened)
    k = tl.where(hit[:, None], tl.load(pk_ptr + csrc, mask=hit[:, None], other=0.0),
                 tl.load(kv_arg + hsrc[:, None] + d[None, :], mask=miss[:, None], other=0.0).to(out_ty))
    v = tl.where(hit[:, None], tl.load(pv_ptr + csrc, mask=hit[:, None], other=0.0),
                 tl.load(kv_arg + s_kv + hsrc[:, None] + d[None, :], mask=miss[:, None], other=0.0).to(out_ty))
    dst = b.to(tl.int64) * s_ob + h * s_oh + j.to(tl.int64)[:, None] * s_ot + d[None, :]
    om = (j < K)[:, None]
    tl.store(ok_ptr + dst, k, mask=om)
    tl.store(ov_ptr + dst, v, mask=om)
    tl.atomic_add(stat_ptr, tl.sum(hit.to(tl.int64), 0))
    tl.atomic_add(stat_ptr + 1, tl.sum(jm.to(tl.int64), 0))


def gather_cached(host_kv, layer, cold_slots, idx, counts, prev_row, prev_idx, prev_counts, prev_k, prev_v,
                  stats, out_k=None, out_v=None, block_t=32, num_warps=4, out_dtype=None):
    """``gather_uva`` with a device cache: tokens that were in the same request's previous
    selection of this layer (prev_* [Bp, Hkv, KP(, D)], row prev_row[b] or -1) are copied
    on the device; only the others are read from the pinned pool. Same output as
    ``gather_ref``. stats [2] int64 (device) accumulates (cache hits, tokens gathered)."""
    B, Hkv, K = idx.shape
    BS = host_kv.shape[-2]
    out_k, out_v = _checked_outputs(host_kv, idx, counts, out_k, out_v, out_dtype)
    assert prev_counts.is_contiguous() and prev_idx.stride(-1) == 1 and prev_k.stride() == prev_v.stride()
    assert prev_k.stride(-1) == 1 and prev_row.numel() == B and stats.dtype == torch.int64
    assert prev_k.dtype == prev_v.dtype == out_k.dtype, "the cache holds earlier outputs of this gather"
    KP = prev_idx.shape[-1]
    kv, ok, ov, pk, pv = _words(host_kv, out_k, out_v, prev_k, prev_v) or (host_kv, out_k, out_v, prev_k, prev_v)
    st = kv.stride()
    _gather_cached_rows[(cdiv(K, block_t), Hkv, B)](
        kv, cold_slots, idx, counts, ok, ov, prev_row, prev_idx, prev_counts, pk, pv, stats,
        layer, K, KP, max(1, KP.bit_length()), Hkv,
        st[0], st[1], st[2], st[3], st[4], cold_slots.stride(0), idx.stride(0), idx.stride(1),
        ok.stride(0), ok.stride(1), ok.stride(2), prev_idx.stride(0), prev_idx.stride(1),
        pk.stride(0), pk.stride(1), pk.stride(2),
        D=kv.shape[-1], BS=BS, BLOCK_T=block_t, num_warps=num_warps,
    )
    return out_k, out_v
