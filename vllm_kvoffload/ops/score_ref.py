"""Batched exact-topk scoring, pure torch: the reference of csrc_triton/score.py.
Same math as ``scorers/exact_topk.py`` (softmax of q·k*scale over the cold tokens
per query head, summed over the GQA group), for a batch of requests.

Layouts:
  query       [B, Hq, D]
  keys        [num_slots, Hkv, block_size, D]  bf16, or float8_e4m3fn with
  key_scale   [num_slots, Hkv, block_size] fp32 (see quantize_ref), else None
  cold_slots  [B, max_cold_blocks] int   slot of each cold block, in token order
  cold_lens   [B] int                    cold tokens of each request
  -> mass     [B, Hkv, n_max] fp32, n_max = max_cold_blocks * block_size by default;
              entries past cold_lens[b] are -inf (never selected).
"""

from __future__ import annotations

import torch

from vllm_kvoffload.ops.quantize_ref import dequantize_fp8_ref
from vllm_kvoffload.scorers.base import group_softmax_mass


def cold_keys(keys, key_scale, slots, n):
    """One request's cold keys, fp32 [Hkv, n, D]."""
    bs = keys.shape[2]
    blk = slots[: -(-n // bs)].long()
    k = keys[blk].float() if key_scale is None else dequantize_fp8_ref(keys[blk], key_scale[blk], torch.float32)
    return k.permute(1, 0, 2, 3).flatten(1, 2)[:, :n]


def score_mass_ref(query, keys, key_scale, cold_slots, cold_lens, scale, n_max=None):
    B, Hq, D = query.shape
    Hkv, bs = keys.shape[1], keys.shape[2]
    n_max = n_max or cold_slots.shape[1] * bs
    mass = torch.full((B, Hkv, n_max), float("-inf"), device=query.device)
    for b in range(B):
        n = int(cold_lens[b])
        if n == 0:
            continue
        k = cold_keys(keys, key_scale, cold_slots[b], n)
        logits = torch.einsum("hgd,hnd->hgn", query[b].float().view(Hkv, -1, D), k) * scale
        mass[b, :, :n] = group_softmax_mass(logits.reshape(Hq, n), Hkv)
    return mass
