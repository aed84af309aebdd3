"""Batched gather of selected cold tokens from the host pool, pure torch: the
reference of csrc_triton/gather.py (same math as ``HostPool.gather``, per request).

  host_kv     [num_slots, num_layers, 2, Hkv, block_size, D]   (HostPool.kv; pinned on GPU hosts)
  cold_slots  [B, max_cold_blocks] int   host slot of each cold block, in token order
                                         (padding entries must still be valid slots, e.g. 0)
  idx         [B, Hkv, K] int            cold-token index per KV head (topk_select's output)
  counts      [B, Hkv] int               entries j < counts are real
  out_dtype                              the outputs' dtype (default host_kv's: an fp8 pool is
                                         widened to the model's dtype here)
  scales      [num_slots, num_layers, 2, Hkv, block_size] fp32 or None
                                         a 4-bit pool's scales, kept apart on the device (host_kv
                                         then holds rows of D nibble-pair bytes); each output row
                                         gets its scale's 4 bytes appended, as the device cache
                                         keeps 4-bit rows (``int4_ref.pack_int4_ref``)
  -> sel_k, sel_v [B, Hkv, K, D] (D + 4 bytes with scales) on idx's device; rows past counts are zero.
"""

from __future__ import annotations

import torch

from vllm_kvoffload.ops.int4_ref import join_rows


def gather_ref(host_kv, layer, cold_slots, idx, counts, out_dtype=None, scales=None):
    B, Hkv, K = idx.shape
    bs, D = host_kv.shape[-2:]
    slots = cold_slots.cpu().long()
    i = idx.cpu().long()
    valid = torch.arange(K)[None, None, :] < counts.cpu()[:, :, None]
    i = torch.where(valid, i, 0)
    slot = slots.gather(1, (i // bs).view(B, -1)).view(B, Hkv, K)
    heads = torch.arange(Hkv)[None, :, None].expand(B, Hkv, K)
    out = []
    for kv in (0, 1):
        x = host_kv[:, layer, kv][slot, heads, i % bs].to(out_dtype or host_kv.dtype)  # [B, Hkv, K, D]
        if scales is not None:
            x = join_rows(x, scales[:, layer, kv].cpu()[slot, heads, i % bs])  # + each row's fp32 scale
        out.append(torch.where(valid[..., None], x, torch.zeros((), dtype=x.dtype)).to(idx.device))
    return out[0], out[1]
