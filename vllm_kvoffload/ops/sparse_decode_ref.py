"""Batched paged sparse decode attention, pure torch: the reference of
csrc_triton/sparse_decode.py. One loop iteration per request around
``ops.attention.sparse_decode_attention``.

Layouts (vLLM FlashAttention):
  query        [B, Hq, D]
  kv_cache     [2, num_blocks, block_size, Hkv, D]   (0 = keys, 1 = values)
  block_table  [B, max_resident_blocks] int          resident blocks, in token order
  res_lens     [B] int                               resident tokens; the rest of the listed
                                                     blocks (the unwritten tail) is ignored
  sel_k/sel_v  [B, Hkv, K, D]                        gathered cold tokens, per KV head (the
                                                     query's dtype, or fp8 e4m3: widened, or
                                                     4-bit rows [.., D/2 + 4] uint8: unpacked)
  sel_lens     [B, Hkv] int                          entries j < sel_lens are real
  sel_valid    [B, Hkv, K] bool or None              optional extra mask (top-p)
  sel_rows     [B] int or None                       request b's row of sel_k/sel_v (then
                                                     [R, Hkv, K, D]: the in-place device cache);
                                                     None: row b
  sel_pos      [B, Hkv, Ksel] int or None            selected token j of (b, h) at slot
                                                     sel_pos[b, h, j] of its row (the LRU device
                                                     cache; then sel_lens <= Ksel); None: slot j
"""

from __future__ import annotations

import torch

from vllm_kvoffload.ops.attention import sparse_decode_attention
from vllm_kvoffload.ops.offload_ref import from_host


def resident_kv(kv_cache: torch.Tensor, block_table: torch.Tensor, res_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One request's resident keys/values, [Hkv, res_len, D] each."""
    bs = kv_cache.shape[2]
    nblk = -(-res_len // bs)
    blocks = block_table[:nblk].long()
    k = kv_cache[0, blocks].flatten(0, 1)[:res_len]  # [res_len, Hkv, D]
    v = kv_cache[1, blocks].flatten(0, 1)[:res_len]
    return k.transpose(0, 1), v.transpose(0, 1)


def sparse_decode_ref(query, kv_cache, block_table, res_lens, sel_k, sel_v, sel_lens, scale, sel_valid=None,
                      sel_rows=None, sel_pos=None):
    B, Hq, D = query.shape
    K = sel_k.shape[2] if sel_pos is None else sel_pos.shape[2]
    out = torch.empty_like(query)
    for b in range(B):
        rk, rv = resident_kv(kv_cache, block_table[b], int(res_lens[b]))
        valid = torch.arange(K, device=query.device)[None, :] < sel_lens[b].to(query.device)[:, None]
        if sel_valid is not None:
            valid = valid & sel_valid[b]
        r = b if sel_rows is None else int(sel_rows[b])
        sk, sv = from_host(sel_k[r], query.dtype), from_host(sel_v[r], query.dtype)
        if sel_pos is not None:  # [Hkv, Ksel, D]: each selected token's slot
            at = sel_pos[b].long().clamp(0, sk.shape[1] - 1)[:, :, None].expand(-1, -1, D)
            sk, sv = sk.gather(1, at), sv.gather(1, at)
        out[b] = sparse_decode_attention(query[b], rk, rv, sk, sv, valid, scale)
    return out
