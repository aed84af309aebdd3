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
(c) ``gather_inplace``: the device cache kept in place: each request's cache row holds its
    last selection; tokens selected again stay in their slots, the others are read as (a) does
    into the slots of the tokens no longer selected. The attention reads the row.
(b) ``gather_copy_engine``: idx to the host (one small D2H, synchronising), the rows
    gathered on the CPU with index_select into a pinned staging buffer, then one
    non_blocking H2D copy per tensor on a side stream (DMA engine, no SMs used).
    Rows past counts are unspecified.
An fp8 pool (``host_kv_dtype=fp8``) may be widened on the way: (a) and (b) take ``out_dtype``
(default: the pool's dtype) for their outputs, and (a) converts in registers, so PCIe carries the
fp8 bytes.
Where nothing is converted (``out_dtype`` is the pool's), (a) and (c) move rows as 32-bit words
(``_words``): a tile then holds a quarter (fp8) or half (bf16) as many elements, each with its
64-bit address in registers. On the H100 the copying device cache's gather (before session 24) had
used 160 registers per thread (19% occupancy, stalled on memory latency); words took it from 166 to
102 us per layer at 100% hits, against 53 us for a device copy of the same bytes (docs/kernels.md).
(c) always keeps the pool's dtype (the cache holds pool rows; the attention widens fp8).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import cdiv, device_buffer, interpreting, next_pow2, row_align

_TL = {torch.bfloat16: tl.bfloat16, torch.float16: tl.float16, torch.float32: tl.float32,
       torch.float8_e4m3fn: tl.float8e4nv, torch.uint8: tl.uint8}


@triton.jit
def _pool_rows(kv_ptr, sc_ptr, src, sc_src, m, d, D: tl.constexpr, SCALES: tl.constexpr):
    """Rows [BLOCK_T, D_PAD] of the pool at element offsets ``src`` (rows where ``m``; 0 elsewhere). With
    SCALES (a 4-bit pool: host rows hold only the nibbles), column D is the token's scale word, read from
    the device array at ``sc_src``, so the row comes out as the device cache keeps it (nibbles, scale)."""
    x = tl.load(kv_ptr + src[:, None] + d[None, :], mask=m[:, None] & (d < D)[None, :], other=0.0)
    if SCALES:
        sc = tl.load(sc_ptr + sc_src, mask=m, other=0)
        x = tl.where((d == D)[None, :], sc[:, None], x)
    return x


@triton.jit(do_not_specialize=['layer', 'K', 's_slb', 's_ib', 's_ih', 's_ob', 's_oh'])  # per-step sizes: no recompiles
def _gather_rows(
    kv_arg, slots_ptr, idx_ptr, cnt_ptr, ok_ptr, ov_ptr,
    layer, K, Hkv,
    s_slot, s_layer, s_kv, s_h, s_tok,    # host_kv [S, L, 2, Hkv, BS, D], D contiguous (any order)
    s_slb,                                # cold_slots [B, max_cold_blocks]
    s_ib, s_ih,                           # idx [B, Hkv, K]
    s_ob, s_oh, s_ot,                     # out_k and out_v [B, Hkv, K, D_OUT], same strides
    sc_ptr, c_slot, c_layer, c_kv, c_h,   # SCALES: the 4-bit pool's scale words [S, L, 2, Hkv, BS] (device)
    D: tl.constexpr, BS: tl.constexpr, BLOCK_T: tl.constexpr,  # D: elements of a host row (int32 words: _words)
    FROM_INT: tl.constexpr, DTYPE: tl.constexpr, D_PAD: tl.constexpr,  # D_PAD: next_pow2(D_OUT)
    D_OUT: tl.constexpr, SCALES: tl.constexpr,  # D_OUT: D, or D + 1 (the scale word) with SCALES
):
    pid = tl.program_id(0)
    b = tl.program_id(1)
    h = tl.program_id(2)  # slowest: programs running together read one KV head's part of the pool
    if FROM_INT:
        kv_ptr = kv_arg.to(tl.pointer_type(DTYPE))
    else:
        kv_ptr = kv_arg
    j = pid * BLOCK_T + tl.arange(0, BLOCK_T)
    d = tl.arange(0, D_PAD)
    cnt = tl.load(cnt_ptr + b * Hkv + h)
    jm = j < cnt
    i = tl.load(idx_ptr + b * s_ib + h * s_ih + j, mask=jm, other=0)
    slot = tl.load(slots_ptr + b * s_slb + i // BS, mask=jm, other=0).to(tl.int64)
    src = slot * s_slot + layer.to(tl.int64) * s_layer + h.to(tl.int64) * s_h + (i % BS) * s_tok
    sc_src = slot * c_slot + layer.to(tl.int64) * c_layer + h.to(tl.int64) * c_h + i % BS
    k = _pool_rows(kv_ptr, sc_ptr, src, sc_src, jm, d, D, SCALES)
    v = _pool_rows(kv_ptr + s_kv, sc_ptr + c_kv, src, sc_src, jm, d, D, SCALES)
    dst = b.to(tl.int64) * s_ob + h * s_oh + j.to(tl.int64)[:, None] * s_ot + d[None, :]
    om = (j < K)[:, None] & (d < D_OUT)[None, :]
    tl.store(ok_ptr + dst, k.to(ok_ptr.dtype.element_ty), mask=om)
    tl.store(ov_ptr + dst, v.to(ov_ptr.dtype.element_ty), mask=om)


def _scale_args(host_kv: torch.Tensor, scales: torch.Tensor | None, like: torch.Tensor) -> tuple:
    """(pointer, 4 strides) of a 4-bit pool's device scale array as int32 words, or a dummy pointer
    (``like``) and zeros where the pool keeps no scales apart."""
    if scales is None:
        return like, 0, 0, 0, 0
    S, L, two, Hkv, BS, _ = host_kv.shape
    assert host_kv.dtype == torch.uint8, "scales go with a 4-bit pool (uint8 rows of nibbles)"
    assert scales.shape == (S, L, two, Hkv, BS) and scales.dtype == torch.float32 and scales.stride(-1) == 1
    w = scales.view(torch.int32)
    return (w, *w.stride()[:4])


def _words(*tensors: torch.Tensor) -> list[torch.Tensor] | None:
    """The tensors viewed as int32 words along their last dim (rows copied without conversion),
    or None where a row is not a whole number of words (the kernels pad a row's words to a power of
    two: a 4-bit row of head size 128 is 17 words)."""
    size = tensors[0].element_size()
    row_bytes = tensors[0].shape[-1] * size
    words = row_bytes // 4
    same_rows = all(t.dtype == tensors[0].dtype and t.stride(-1) == 1 for t in tensors)
    aligned = all(row_align(t) * size % 4 == 0 for t in tensors)  # every row starts on a word
    if not (same_rows and aligned and row_bytes % 4 == 0 and words > 0):
        return None
    return [t.view(torch.int32) for t in tensors]


def _checked_outputs(host_kv, idx, counts, out_k, out_v, out_dtype, scales=None):
    """Shared checks of the zero-copy gathers; allocates the staging outputs [B, Hkv, K, D] (with
    ``scales``, a 4-bit pool's: rows of D + 4 bytes, the nibbles then the scale)."""
    B, Hkv, K = idx.shape
    S, L, two, Hkv2, BS, D = host_kv.shape
    D = D if scales is None else D + 4
    assert two == 2 and Hkv2 == Hkv and host_kv.stride(-1) == 1 and counts.is_contiguous()
    if host_kv.device.type == "cpu" and not interpreting():
        assert host_kv.is_pinned(), "zero-copy reads need pinned (page-locked) host memory"
    mk = lambda: torch.empty(B, Hkv, K, D, dtype=out_dtype or host_kv.dtype, device=idx.device)  # noqa: E731
    out_k = mk() if out_k is None else out_k
    out_v = mk() if out_v is None else out_v
    assert out_k.stride() == out_v.stride() and out_k.stride(-1) == 1 and out_k.dtype == out_v.dtype
    return out_k, out_v


def gather_uva(host_kv, layer, cold_slots, idx, counts, out_k=None, out_v=None,
               mode="tensor", block_t=32, num_warps=4, out_dtype=None, scales=None):
    """Same contract as ``gather_ref``; cold_slots/idx/counts/out on the device,
    host_kv pinned on the host (or on the device, or CPU under the interpreter); ``scales``: a
    4-bit pool's scale array on the device (its rows come out with their scales appended)."""
    B, Hkv, K = idx.shape
    BS = host_kv.shape[-2]
    out_k, out_v = _checked_outputs(host_kv, idx, counts, out_k, out_v, out_dtype, scales)
    kv, ok, ov = _words(host_kv, out_k, out_v) or (host_kv, out_k, out_v)
    assert scales is None or kv.dtype == torch.int32, "a 4-bit pool's rows move as whole words"
    arg = kv if mode == "tensor" else kv.data_ptr()
    st = kv.stride()
    sc = _scale_args(host_kv, scales, idx)
    _gather_rows[(cdiv(K, block_t), B, Hkv)](
        arg, cold_slots, idx, counts, ok, ov, layer, K, Hkv,
        st[0], st[1], st[2], st[3], st[4], cold_slots.stride(0), idx.stride(0), idx.stride(1),
        ok.stride(0), ok.stride(1), ok.stride(2), *sc,
        D=kv.shape[-1], BS=BS, BLOCK_T=block_t, FROM_INT=mode == "int", DTYPE=_TL.get(kv.dtype, tl.int32),
        D_PAD=next_pow2(ok.shape[-1]), D_OUT=ok.shape[-1], SCALES=scales is not None,
        num_warps=num_warps,
    )
    return out_k, out_v


def gather_copy_engine(host_kv, layer, cold_slots_cpu, idx, counts, out_k=None, out_v=None,
                       staging=None, stream=None, out_dtype=None):
    """(b): host index_select into pinned ``staging`` [2, B, Hkv, K, D], then async H2D on
    ``stream`` (default: a new side stream). The caller orders its consumer after
    ``stream`` (``torch.cuda.current_stream().wait_stream(stream)``). Returns out_k, out_v, stream."""
    B, Hkv, K = idx.shape
    BS, D = host_kv.shape[-2:]
    dev = idx.device
    i = idx.to("cpu", torch.long)  # synchronises with the producer of idx
    valid = torch.arange(K)[None, None, :] < counts.to("cpu")[:, :, None]
    i = torch.where(valid, i, 0)
    slot = cold_slots_cpu.long().gather(1, (i // BS).view(B, -1)).view(B, Hkv, K)
    h = torch.arange(Hkv)[None, :, None]
    # row of key (slot, layer, 0, h, tok) in the pool's storage viewed as rows of D (any layout
    # whose rows are contiguous: the host pool is head-major, [layer, head, slot, K|V, token, dim])
    st = [x // D for x in host_kv.stride()[:5]]
    assert host_kv.stride(-1) == 1 and all(x % D == 0 for x in host_kv.stride()[:5])
    row = slot * st[0] + layer * st[1] + h * st[3] + (i % BS) * st[4]
    n_rows = (host_kv.untyped_storage().nbytes() // host_kv.element_size() - host_kv.storage_offset()) // D
    flat = host_kv.as_strided((n_rows, D), (D, 1))
    pin = dev.type == "cuda"
    if staging is None:
        staging = torch.empty(2, B, Hkv, K, D, dtype=host_kv.dtype, pin_memory=pin)
    torch.index_select(flat, 0, row.view(-1), out=staging[0].view(-1, D))
    torch.index_select(flat, 0, (row + st[2]).view(-1), out=staging[1].view(-1, D))
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


# ---- (c) the device cache, kept in place (gather_inplace_ref's docstring) ------------------
@triton.jit
def _search(sorted_ptr, n, x, mask, N_ITER):
    """(position, found) of each x in sorted_ptr[0:n) (ascending, distinct): a branch-free binary
    search of N_ITER >= bit_length(n) steps; position is where x would go where not found."""
    lo = tl.zeros(x.shape, tl.int32)
    hi = tl.zeros(x.shape, tl.int32) + n
    for _ in range(N_ITER):
        live = lo < hi
        mid = (lo + hi) // 2
        v = tl.load(sorted_ptr + mid, mask=live & mask, other=0)
        go_right = live & (v < x)
        lo = tl.where(go_right, mid + 1, lo)
        hi = tl.where(live & ~go_right, mid, hi)
    found = mask & (lo < n)
    found = found & (tl.load(sorted_ptr + lo, mask=found, other=-1) == x)
    return lo, found


# Two launches over tiles of this step's selection. The first finds each token's slot where it
# is a hit and, per tile, ranks its misses and the last selection's dropped tokens (whose slots
# it lists, per tile); the second gives the g-th miss of a (row, KV head) the g-th freed slot,
# from the tiles' tallies, and reads the misses from the pool into their slots.
INPLACE_MATCH_BLOCK = 512  # tokens per program of the first launch (a multiple of the second's)


@triton.jit
def _inplace_row(rows_ptr, fresh_ptr, cnt_ptr, pcnt_ptr, b, h, Hkv, KC):
    """(cache row r, count n, last count pn, reuse, offset of the (row, KV head)'s arrays) of request
    b's KV head h. reuse: the last selection is kept where it is; else (a fresh row, or a shrunk
    count) token j goes to slot j."""
    r = tl.load(rows_ptr + b)
    n = tl.load(cnt_ptr + b * Hkv + h)
    pn = tl.load(pcnt_ptr + r * Hkv + h)
    reuse = (tl.load(fresh_ptr + b) == 0) & (pn <= n)
    return r, n, pn, reuse, (r * Hkv + h).to(tl.int64) * KC


@triton.jit(do_not_specialize=['K', 'KC', 'NT', 'N_ITER', 's_ib', 's_ih'])
def _inplace_match(idx_ptr, cnt_ptr, rows_ptr, fresh_ptr, pidx_ptr, ppos_ptr, pcnt_ptr, nidx_ptr, ncnt_ptr,
                   match_ptr, free_ptr, tally_ptr, stat_ptr, K, KC, NT, N_ITER, Hkv, s_ib, s_ih, BLOCK: tl.constexpr):
    t = tl.program_id(0)
    b = tl.program_id(1)
    h = tl.program_id(2)
    r, n, pn, reuse, row = _inplace_row(rows_ptr, fresh_ptr, cnt_ptr, pcnt_ptr, b, h, Hkv, KC)
    j = t * BLOCK + tl.arange(0, BLOCK)
    jm = j < n
    sel = idx_ptr + b.to(tl.int64) * s_ib + h * s_ih
    i = tl.load(sel + j, mask=jm, other=0)
    tl.store(nidx_ptr + row + j, i, mask=jm)
    if t == 0:
        tl.store(ncnt_ptr + r * Hkv + h, n)
    bh_tile = (b * Hkv + h) * NT + t
    if reuse:
        prev = pidx_ptr + row
        at, hit = _search(prev, pn, i, jm, N_ITER)
        slot = tl.load(ppos_ptr + row + at, mask=hit, other=0)
        miss = (jm & ~hit).to(tl.int32)
        # a hit's slot, or -(1 + the miss's rank in this tile)
        tl.store(match_ptr + bh_tile.to(tl.int64) * BLOCK + j - t * BLOCK, tl.where(hit, slot, -tl.cumsum(miss, 0)),
                 mask=jm)
        tl.store(tally_ptr + 2 * bh_tile, tl.sum(miss, 0))
        # the last selection's tokens at the same positions: those not selected now free their slots,
        # listed in order at this tile's part of free_ptr
        pm = j < pn
        old = tl.load(prev + j, mask=pm, other=0)
        _, kept = _search(sel, n, old, pm, N_ITER)
        freed = (pm & ~kept).to(tl.int32)
        old_slot = tl.load(ppos_ptr + row + j, mask=freed != 0, other=0)
        tl.store(free_ptr + bh_tile.to(tl.int64) * BLOCK + tl.cumsum(freed, 0) - freed, old_slot, mask=freed != 0)
        tl.store(tally_ptr + 2 * bh_tile + 1, tl.sum(freed, 0))
        tl.atomic_add(stat_ptr, tl.sum(hit.to(tl.int64), 0))
    else:
        tl.store(match_ptr + bh_tile.to(tl.int64) * BLOCK + j - t * BLOCK, tl.zeros([BLOCK], tl.int32) - 1, mask=jm)
    # the counters here, not in the second launch: one atomic pair to one address per tile of BLOCK
    # tokens rather than per BLOCK_T (at 100% hits, 34.3 -> 31.7 us per layer on the H100, session 26)
    tl.atomic_add(stat_ptr + 1, tl.sum(jm.to(tl.int64), 0))


@triton.jit(do_not_specialize=['layer', 'K', 'KC', 'NT', 's_slb', 's_ib', 's_ih'])
def _inplace_fill(kv_arg, slots_ptr, idx_ptr, cnt_ptr, rows_ptr, fresh_ptr, pcnt_ptr, npos_ptr, ok_ptr, ov_ptr,
                  match_ptr, free_ptr, tally_ptr, layer, K, KC, NT, Hkv,
                  s_slot, s_layer, s_kv, s_h, s_tok, s_slb, s_ib, s_ih, sc_ptr, c_slot, c_layer, c_kv, c_h,
                  D: tl.constexpr, BS: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK: tl.constexpr,
                  NT_PAD: tl.constexpr, D_PAD: tl.constexpr, D_OUT: tl.constexpr, SCALES: tl.constexpr):
    pid = tl.program_id(0)
    b = tl.program_id(1)
    h = tl.program_id(2)  # slowest: programs running together read one KV head's part of the pool
    r, n, pn, reuse, row = _inplace_row(rows_ptr, fresh_ptr, cnt_ptr, pcnt_ptr, b, h, Hkv, KC)
    j = pid * BLOCK_T + tl.arange(0, BLOCK_T)
    jm = j < n
    # (read from the first launch's scratch, never from npos, which this launch writes: a load that the
    # compiler repeats in another layout must not see this launch's own stores)
    pos = tl.load(match_ptr + (b * Hkv + h).to(tl.int64) * NT * BLOCK + j, mask=jm, other=0)
    miss = jm & (pos < 0)
    # Reused rows: the g-th miss of the (row, KV head) takes its g-th freed slot, or where the count
    # grew and the freed ones are taken, slot pn + (g - freed); fresh rows: slot j.
    tiles = tl.arange(0, NT_PAD)
    tally = tally_ptr + 2 * ((b * Hkv + h) * NT + tiles)
    misses = tl.load(tally, mask=tiles < NT, other=0)  # (stale where not reused: then unused)
    freed = tl.load(tally + 1, mask=tiles < NT, other=0)
    tile = pid * BLOCK_T // BLOCK  # the first launch's tile of these tokens
    g = tl.sum(tl.where(tiles < tile, misses, 0), 0) - pos - 1
    ends = tl.cumsum(freed, 0)  # freed slots in the tiles up to each, inclusive
    src_tile = tl.sum((ends[None, :] <= g[:, None]).to(tl.int32), 1)
    start = tl.sum(tl.where(tiles[None, :] == src_tile[:, None], ends - freed, 0), 1)
    slot_at = ((b * Hkv + h) * NT + src_tile).to(tl.int64) * BLOCK + g - start
    reused_miss = miss & ((tl.zeros_like(pos) + reuse.to(tl.int32)) != 0)
    n_freed = tl.sum(freed, 0)
    freed_slot = tl.load(free_ptr + slot_at, mask=reused_miss & (g < n_freed), other=0)
    reused_slot = tl.where(g < n_freed, freed_slot, pn + g - n_freed)
    slot = tl.where(reused_miss, reused_slot, tl.where(miss, j, pos))
    tl.store(npos_ptr + row + j, slot, mask=jm)
    i = tl.load(idx_ptr + b.to(tl.int64) * s_ib + h * s_ih + j, mask=miss, other=0)
    blk = tl.load(slots_ptr + b * s_slb + i // BS, mask=miss, other=0).to(tl.int64)
    src = blk * s_slot + layer.to(tl.int64) * s_layer + h.to(tl.int64) * s_h + (i % BS) * s_tok
    sc_src = blk * c_slot + layer.to(tl.int64) * c_layer + h.to(tl.int64) * c_h + i % BS
    d = tl.arange(0, D_PAD)
    k = _pool_rows(kv_arg, sc_ptr, src, sc_src, miss, d, D, SCALES)
    v = _pool_rows(kv_arg + s_kv, sc_ptr + c_kv, src, sc_src, miss, d, D, SCALES)
    dm = miss[:, None] & (d < D_OUT)[None, :]
    dst = (row + slot)[:, None] * D_OUT + d[None, :]  # cache rows [R, Hkv, KC, D_OUT] contiguous
    tl.store(ok_ptr + dst, k, mask=dm)
    tl.store(ov_ptr + dst, v, mask=dm)


def gather_inplace(host_kv, layer, cold_slots, idx, counts, rows, fresh, prev_idx, prev_pos, prev_counts,
                   new_idx, new_pos, new_counts, cache_k, cache_v, stats, block_t=32, num_warps=4, scales=None):
    """Same contract as ``gather_inplace_ref`` (the device cache in place). cache_k/cache_v
    [R, Hkv, KC, D] contiguous, in the pool's dtype; the index arrays [R, Hkv, KC] and
    counts [R, Hkv] contiguous int32; rows, fresh [B] int32; stats [2] int64. No host sync."""
    B, Hkv, K = idx.shape
    R, Hkv2, KC, D = cache_k.shape
    BS = host_kv.shape[-2]
    assert Hkv2 == Hkv and K <= KC and cache_k.dtype == cache_v.dtype == host_kv.dtype, "the cache holds pool rows"
    assert D == host_kv.shape[-1] + (0 if scales is None else 4), "a 4-bit pool's cache rows hold their scale"
    assert cache_k.is_contiguous() and cache_v.is_contiguous() and idx.stride(-1) == 1 and counts.is_contiguous()
    for t in (prev_idx, prev_pos, new_idx, new_pos):
        assert t.shape == (R, Hkv, KC) and t.is_contiguous() and t.dtype == torch.int32
    assert prev_counts.shape == new_counts.shape == (R, Hkv) and stats.dtype == torch.int64
    if host_kv.device.type == "cpu" and not interpreting():
        assert host_kv.is_pinned(), "zero-copy reads need pinned (page-locked) host memory"
    block = INPLACE_MATCH_BLOCK
    assert block % block_t == 0
    NT = max(1, cdiv(K, block))
    part = B * Hkv * NT * block
    need = 2 * part + B * Hkv * NT * 2
    # the first launch's results for the second: each token's hit slot or miss rank, the freed
    # slots, the tiles' tallies
    scratch = device_buffer("gather_inplace", need, idx.device)
    match, free, tally = scratch[:part], scratch[part:2 * part], scratch[2 * part:need]
    _inplace_match[(NT, B, Hkv)](
        idx, counts, rows, fresh, prev_idx, prev_pos, prev_counts, new_idx, new_counts, match, free, tally, stats,
        K, KC, NT, max(1, KC.bit_length()), Hkv, idx.stride(0), idx.stride(1), BLOCK=block, num_warps=num_warps)
    kv, ok, ov = _words(host_kv, cache_k, cache_v) or (host_kv, cache_k, cache_v)
    assert scales is None or kv.dtype == torch.int32, "a 4-bit pool's rows move as whole words"
    st = kv.stride()
    _inplace_fill[(cdiv(K, block_t), B, Hkv)](
        kv, cold_slots, idx, counts, rows, fresh, prev_counts, new_pos, ok, ov, match, free, tally,
        layer, K, KC, NT, Hkv, st[0], st[1], st[2], st[3], st[4], cold_slots.stride(0), idx.stride(0), idx.stride(1),
        *_scale_args(host_kv, scales, idx),
        D=kv.shape[-1], BS=BS, BLOCK_T=block_t, BLOCK=block, NT_PAD=max(2, next_pow2(NT)),
        D_PAD=next_pow2(ok.shape[-1]), D_OUT=ok.shape[-1], SCALES=scales is not None, num_warps=num_warps)


# ---- (d) the LRU device cache, wider than one selection (gather_lru_ref's docstring) -------
# Three launches: match (each selected token's hit, stamped with this step, or its rank among
# its tile's misses), victims (per row and KV head, the misses' slots: a histogram of the slots'
# clipped ages finds the age threshold, then one ordered pass lists the slots), fill (the g-th
# miss takes the g-th listed slot and is read from the pool into it). The fill's programs cover the
# selection's tokens, misses or not. Programs over the misses in rank order (BLOCK_T misses each,
# from per-tile lists of misses) were slower on the H100: 861 against 726 us per layer at 30% misses
# (session 29, calls e and f), so they were taken out.
LRU_MATCH_BLOCK = 512  # selected tokens per program of the match launch (a multiple of the fill's)
LRU_SCAN_BLOCK = 1024  # slots per pass of the victims launch
AGE_BINS = 256  # ages 0 .. AGE_CLIP


@triton.jit(do_not_specialize=['K', 'C', 'T', 'NT', 's_ib', 's_ih'])
def _lru_match(idx_ptr, cnt_ptr, rows_ptr, fresh_ptr, slot_of_ptr, token_at_ptr, used_at_ptr, clock_ptr, pos_ptr,
               match_ptr, tally_ptr, stat_ptr, K, C, T, NT, Hkv, s_ib, s_ih, BLOCK: tl.constexpr):
    t = tl.program_id(0)
    b = tl.program_id(1)
    h = tl.program_id(2)
    r = tl.load(rows_ptr + b)
    n = tl.load(cnt_ptr + b * Hkv + h)
    now = tl.load(clock_ptr + r * Hkv + h) + 1
    j = t * BLOCK + tl.arange(0, BLOCK)
    jm = j < n
    reuse = (tl.zeros([BLOCK], tl.int32) + tl.load(fresh_ptr + b)) == 0  # a fresh row has no hits
    i = tl.load(idx_ptr + b.to(tl.int64) * s_ib + h * s_ih + j, mask=jm, other=0)
    row = (r * Hkv + h).to(tl.int64)
    s = tl.load(slot_of_ptr + row * T + i, mask=jm & reuse, other=-1)
    inside = jm & reuse & (s >= 0) & (s < C)
    hit = inside & (tl.load(token_at_ptr + row * C + s, mask=inside, other=-1) == i)
    tl.store(used_at_ptr + row * C + s, tl.zeros_like(s) + now, mask=hit)
    tl.store(pos_ptr + (b * Hkv + h).to(tl.int64) * K + j, s, mask=hit)
    miss = (jm & ~hit).to(tl.int32)
    bh_tile = (b * Hkv + h) * NT + t
    tl.store(match_ptr + bh_tile.to(tl.int64) * BLOCK + j - t * BLOCK, tl.cumsum(miss, 0) * miss, mask=jm)  # rank + 1
    tl.store(tally_ptr + bh_tile, tl.sum(miss, 0))
    tl.atomic_add(stat_ptr, tl.sum(hit.to(tl.int64), 0))
    tl.atomic_add(stat_ptr + 1, tl.sum(jm.to(tl.int64), 0))


@triton.jit(do_not_specialize=['C', 'NT', 'KV'])
def _lru_victims(rows_ptr, fresh_ptr, token_at_ptr, used_at_ptr, clock_ptr, tally_ptr, victims_ptr, C, NT, KV, Hkv,
                 EMPTY: tl.constexpr, AGE_CLIP: tl.constexpr, BINS: tl.constexpr, SCAN: tl.constexpr,
                 NT_PAD: tl.constexpr):
    b = tl.program_id(0)
    h = tl.program_id(1)
    r = tl.load(rows_ptr + b)
    now = tl.load(clock_ptr + r * Hkv + h) + 1
    tiles = tl.arange(0, NT_PAD)
    m = tl.sum(tl.load(tally_ptr + (b * Hkv + h) * NT + tiles, mask=tiles < NT, other=0), 0)
    row = (r * Hkv + h).to(tl.int64) * C
    victims = victims_ptr + (b * Hkv + h).to(tl.int64) * KV
    c = tl.arange(0, SCAN)
    if tl.load(fresh_ptr + b) != 0:
        # a fresh row: every slot emptied, and the misses fill slots [0, m) (all equally old)
        for c0 in range(0, C, SCAN):
            cm = c0 + c < C
            tl.store(token_at_ptr + row + c0 + c, tl.full([SCAN], -1, tl.int32), mask=cm)
            tl.store(used_at_ptr + row + c0 + c, tl.full([SCAN], EMPTY, tl.int32), mask=cm)
        for c0 in range(0, m, SCAN):
            tl.store(victims + c0 + c, c0 + c, mask=c0 + c < m)
    else:
        # ages after the match stamped this step's hits (age 0): lanes past C count as age 0, which
        # is never taken (at least m slots are older)
        hist = tl.zeros([BINS], tl.int32)
        for c0 in range(0, C, SCAN):
            cm = c0 + c < C
            age = tl.minimum(tl.maximum(now - tl.load(used_at_ptr + row + c0 + c, mask=cm, other=now), 0), AGE_CLIP)
            hist += tl.histogram(age, BINS)
        bins = tl.arange(0, BINS)
        at_least = tl.sum(hist, 0) - tl.cumsum(hist, 0) + hist  # slots of age >= each bin
        thr = tl.sum(((bins >= 1) & (at_least >= m)).to(tl.int32), 0)  # the oldest age that yields m slots
        older = tl.sum(tl.where(bins > thr, hist, 0), 0)
        need_at_thr = m - older
        taken = 0
        seen_at_thr = 0
        for c0 in range(0, C, SCAN):
            cm = c0 + c < C
            age = tl.minimum(tl.maximum(now - tl.load(used_at_ptr + row + c0 + c, mask=cm, other=now), 0), AGE_CLIP)
            at_thr = (cm & (age == thr)).to(tl.int32)
            take = ((cm & (age > thr)) | ((at_thr != 0) & (seen_at_thr + tl.cumsum(at_thr, 0) - at_thr < need_at_thr)))
            take = take.to(tl.int32)
            tl.store(victims + taken + tl.cumsum(take, 0) - take, c0 + c, mask=take != 0)
            taken += tl.sum(take, 0)
            seen_at_thr += tl.sum(at_thr, 0)
    tl.store(clock_ptr + r * Hkv + h, now)


@triton.jit(do_not_specialize=['layer', 'K', 'C', 'T', 'NT', 'KV', 's_slb', 's_ib', 's_ih'])
def _lru_fill(kv_arg, slots_ptr, idx_ptr, cnt_ptr, rows_ptr, slot_of_ptr, token_at_ptr, used_at_ptr, clock_ptr, pos_ptr,
              ok_ptr, ov_ptr, match_ptr, tally_ptr, victims_ptr, layer, K, C, T, NT, KV, Hkv,
              s_slot, s_layer, s_kv, s_h, s_tok, s_slb, s_ib, s_ih, sc_ptr, c_slot, c_layer, c_kv, c_h,
              D: tl.constexpr, BS: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK: tl.constexpr, NT_PAD: tl.constexpr,
              D_PAD: tl.constexpr, D_OUT: tl.constexpr, SCALES: tl.constexpr):
    pid = tl.program_id(0)
    b = tl.program_id(1)
    h = tl.program_id(2)  # slowest: programs running together read one KV head's part of the pool
    r = tl.load(rows_ptr + b)
    n = tl.load(cnt_ptr + b * Hkv + h)
    now = tl.load(clock_ptr + r * Hkv + h)  # the victims launch advanced it to this step
    j = pid * BLOCK_T + tl.arange(0, BLOCK_T)
    jm = j < n
    rank = tl.load(match_ptr + (b * Hkv + h).to(tl.int64) * NT * BLOCK + j, mask=jm, other=0)  # miss rank + 1, or 0
    miss = jm & (rank > 0)
    tiles = tl.arange(0, NT_PAD)
    tile = pid * BLOCK_T // BLOCK  # the match launch's tile of these tokens
    before = tl.sum(tl.load(tally_ptr + (b * Hkv + h) * NT + tiles, mask=tiles < tile, other=0), 0)
    slot = tl.load(victims_ptr + (b * Hkv + h).to(tl.int64) * KV + before + rank - 1, mask=miss, other=0)
    i = tl.load(idx_ptr + b.to(tl.int64) * s_ib + h * s_ih + j, mask=miss, other=0)
    row = (r * Hkv + h).to(tl.int64)
    tl.store(token_at_ptr + row * C + slot, i, mask=miss)
    tl.store(used_at_ptr + row * C + slot, tl.zeros_like(slot) + now, mask=miss)
    tl.store(slot_of_ptr + row * T + i, slot, mask=miss)
    tl.store(pos_ptr + (b * Hkv + h).to(tl.int64) * K + j, slot, mask=miss)
    blk = tl.load(slots_ptr + b * s_slb + i // BS, mask=miss, other=0).to(tl.int64)
    src = blk * s_slot + layer.to(tl.int64) * s_layer + h.to(tl.int64) * s_h + (i % BS) * s_tok
    sc_src = blk * c_slot + layer.to(tl.int64) * c_layer + h.to(tl.int64) * c_h + i % BS
    d = tl.arange(0, D_PAD)
    k = _pool_rows(kv_arg, sc_ptr, src, sc_src, miss, d, D, SCALES)
    v = _pool_rows(kv_arg + s_kv, sc_ptr + c_kv, src, sc_src, miss, d, D, SCALES)
    dm = miss[:, None] & (d < D_OUT)[None, :]
    dst = (row * C + slot)[:, None] * D_OUT + d[None, :]  # cache rows [R, Hkv, C, D_OUT] contiguous
    tl.store(ok_ptr + dst, k, mask=dm)
    tl.store(ov_ptr + dst, v, mask=dm)


def gather_lru(host_kv, layer, cold_slots, idx, counts, rows, fresh, slot_of, token_at, used_at, clock, pos,
               cache_k, cache_v, stats, block_t=32, num_warps=4, scales=None):
    """Same contract as ``gather_lru_ref`` (the LRU device cache). cache_k/cache_v [R, Hkv, C, D]
    contiguous, in the pool's dtype; token_at/used_at [R, Hkv, C], slot_of [R, Hkv, T], clock [R, Hkv]
    and pos [B, Hkv, K] contiguous int32; rows, fresh [B] int32; stats [2] int64. No host sync."""
    from vllm_kvoffload.ops.gather_lru_ref import AGE_CLIP, EMPTY

    B, Hkv, K = idx.shape
    R, Hkv2, C, D = cache_k.shape
    T = slot_of.shape[2]
    BS = host_kv.shape[-2]
    assert Hkv2 == Hkv and K <= C and cache_k.dtype == cache_v.dtype == host_kv.dtype, "the cache holds pool rows"
    assert D == host_kv.shape[-1] + (0 if scales is None else 4), "a 4-bit pool's cache rows hold their scale"
    assert cache_k.is_contiguous() and cache_v.is_contiguous() and idx.stride(-1) == 1 and counts.is_contiguous()
    for t, shape in ((token_at, (R, Hkv, C)), (used_at, (R, Hkv, C)), (slot_of, (R, Hkv, T)), (clock, (R, Hkv)),
                     (pos, (B, Hkv, K))):
        assert t.shape == shape and t.is_contiguous() and t.dtype == torch.int32, (t.shape, shape)
    assert cold_slots.shape[1] * BS <= T, "slot_of must cover every cold token"
    if host_kv.device.type == "cpu" and not interpreting():
        assert host_kv.is_pinned(), "zero-copy reads need pinned (page-locked) host memory"
    block = LRU_MATCH_BLOCK
    assert block % block_t == 0
    NT = max(1, cdiv(K, block))
    KV = NT * block
    part = B * Hkv * KV
    # the match's miss ranks and tallies, and the victims' slot lists
    scratch = device_buffer("gather_lru", 2 * part + B * Hkv * NT, idx.device)
    match, victims, tally = scratch[:part], scratch[part:2 * part], scratch[2 * part:2 * part + B * Hkv * NT]
    _lru_match[(NT, B, Hkv)](
        idx, counts, rows, fresh, slot_of, token_at, used_at, clock, pos, match, tally, stats,
        K, C, T, NT, Hkv, idx.stride(0), idx.stride(1), BLOCK=block, num_warps=num_warps)
    _lru_victims[(B, Hkv)](
        rows, fresh, token_at, used_at, clock, tally, victims, C, NT, KV, Hkv,
        EMPTY=EMPTY, AGE_CLIP=AGE_CLIP, BINS=AGE_BINS, SCAN=LRU_SCAN_BLOCK, NT_PAD=max(2, next_pow2(NT)),
        num_warps=num_warps)
    kv, ok, ov = _words(host_kv, cache_k, cache_v) or (host_kv, cache_k, cache_v)
    assert scales is None or kv.dtype == torch.int32, "a 4-bit pool's rows move as whole words"
    st = kv.stride()
    _lru_fill[(cdiv(K, block_t), B, Hkv)](
        kv, cold_slots, idx, counts, rows, slot_of, token_at, used_at, clock, pos, ok, ov, match, tally, victims,
        layer, K, C, T, NT, KV, Hkv, st[0], st[1], st[2], st[3], st[4], cold_slots.stride(0), idx.stride(0),
        idx.stride(1), *_scale_args(host_kv, scales, idx), D=kv.shape[-1], BS=BS, BLOCK_T=block_t, BLOCK=block,
        NT_PAD=max(2, next_pow2(NT)), D_PAD=next_pow2(ok.shape[-1]), D_OUT=ok.shape[-1], SCALES=scales is not None,
        num_warps=num_warps)
