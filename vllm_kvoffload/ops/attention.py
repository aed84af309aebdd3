"""Decode attention over [resident tokens + selected cold tokens], pure torch."""

from __future__ import annotations

import torch


def sparse_decode_attention(
    query: torch.Tensor,
    resident_k: torch.Tensor,
    resident_v: torch.Tensor,
    selected_k: torch.Tensor,
    selected_v: torch.Tensor,
    selected_valid: torch.Tensor | None,
    scale: float,
) -> torch.Tensor:
    """One decode token of one request.

    query: [Hq, D]; resident_k/v: [Hkv, Nr, D] (sinks, local window and the new
    token, all in every head); selected_k/v: [Hkv, K, D] (different tokens per KV
    head); selected_valid: [Hkv, K] or None. Returns [Hq, D] in the query dtype.
    Computed in fp32; equal to dense attention when the selection covers every
    cold token.
    """
    hq, d = query.shape
    hkv = resident_k.shape[0]
    q = query.float().view(hkv, hq // hkv, d)
    keys = torch.cat([resident_k, selected_k], dim=1).float()
    values = torch.cat([resident_v, selected_v], dim=1).float()
    logits = torch.einsum("hgd,hnd->hgn", q, keys) * scale
    if selected_valid is not None and selected_valid.numel():
        mask = torch.cat(
            [torch.ones(hkv, resident_k.shape[1], dtype=torch.bool, device=query.device), selected_valid], 1
        )
        logits = logits.masked_fill(~mask[:, None, :], float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    out = torch.einsum("hgn,hnd->hgd", probs, values)
    return out.reshape(hq, d).to(query.dtype)


def dense_decode_attention(query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, scale: float) -> torch.Tensor:
    """Reference: query [Hq, D] against every token, keys/values [Hkv, N, D]."""
    empty = keys[:, :0]
    return sparse_decode_attention(query, keys, values, empty, empty, None, scale)
