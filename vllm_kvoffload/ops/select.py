"""Choose which cold tokens a KV head attends to, from the scorer's estimated mass."""

from __future__ import annotations

import torch


def select_cold_tokens(
    mass: torch.Tensor,
    k: int,
    *,
    granularity: str = "token",
    block_size: int = 16,
    topp: float | None = None,
    min_tokens: int = 1,
) -> tuple[torch.Tensor, torch.Tensor]:
    """mass: [num_kv_heads, n] estimated attention mass of each cold token.

    Returns ``(indices, valid)``, both [num_kv_heads, m] with m <= max(k, n):
    the cold-token indices each KV head attends to, sorted ascending, and which
    of them are real (top-p may keep fewer than ``k`` on some heads).

    * token granularity: the ``k`` tokens of largest mass per head;
    * block granularity: whole blocks ranked by their best token, ``ceil(k/bs)`` of them;
    * ``topp``: keep the smallest prefix (by mass) reaching share ``topp`` of the
      head's cold mass, within [``min_tokens``, ``k``] tokens (the budget caps the minimum too).
    Invariant: with k >= n every cold token is selected on every head.
    """
    num_heads, n = mass.shape
    if n == 0 or k <= 0:
        empty = torch.empty(num_heads, 0, dtype=torch.long, device=mass.device)
        return empty, empty.bool()
    if granularity == "block":
        nb = -(-n // block_size)
        pad = nb * block_size - n
        padded = torch.nn.functional.pad(mass.float(), (0, pad), value=float("-inf"))
        block_mass = padded.view(num_heads, nb, block_size).amax(-1)
        kb = min(nb, -(-k // block_size))
        top_blocks = block_mass.topk(kb, dim=-1).indices.sort(dim=-1).values
        idx = (top_blocks[..., None] * block_size + torch.arange(block_size, device=mass.device)).flatten(1)
        return idx.clamp_max(n - 1), idx < n
    k = min(k, n)
    top = mass.float().topk(k, dim=-1)
    if topp is not None:
        share = top.values.cumsum(-1) / mass.float().sum(-1, keepdim=True).clamp_min(1e-30)
        # keep token i while the mass before it is still short of p
        reached_before = torch.cat([torch.zeros_like(share[:, :1], dtype=torch.bool), share[:, :-1] >= topp], -1)
        valid = ~reached_before | (torch.arange(k, device=mass.device) < min_tokens)
    else:
        valid = torch.ones_like(top.indices, dtype=torch.bool)
    order = top.indices.argsort(dim=-1)
    return top.indices.gather(-1, order), valid.gather(-1, order)


def select_cold_tokens_batched(
    mass: torch.Tensor,
    cold_lens: torch.Tensor,
    k: int,
    budgets: torch.Tensor,
    *,
    granularity: str = "token",
    block_size: int = 16,
    topp: float | None = None,
    min_tokens: int = 1,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``select_cold_tokens`` for a whole decode batch, on the device, with no host sync (decode
    graphs capture it): the batched path's selection of block granularity and top-p (the Triton
    top-k serves plain token top-k).

    mass [B, Hkv, n_max] (n_max a multiple of block_size; request b's cold tokens are [0, cold_lens[b]),
    a multiple of block_size too), budgets [B]: each request's ``k``. Returns idx [B, Hkv, k] int32, the
    tokens request b's head attends to, ascending below counts [B, Hkv] int32 (0 past them): the tokens
    ``select_cold_tokens(mass[b, :, :cold_lens[b]], budgets[b], ...)`` returns as valid. ``k`` bounds
    every count (block granularity: a multiple of block_size)."""
    B, Hkv, n_max = mass.shape
    dev = mass.device
    n = cold_lens.to(dev).long()[:, None, None]
    budgets = budgets.to(dev).long()[:, None, None]
    positions = torch.arange(n_max, device=dev)
    cold = positions < n
    ranked = mass.float().masked_fill(~cold, float("-inf"))
    if granularity == "block":
        nb_max = n_max // block_size
        blocks = ranked.view(B, Hkv, nb_max, block_size).amax(-1)
        kb = torch.minimum(n // block_size, -(-budgets // block_size))  # blocks per request
        kb_max = min(nb_max, k // block_size)
        top = blocks.topk(kb_max, dim=-1).indices
        valid = torch.arange(kb_max, device=dev) < kb
        first = torch.where(valid, top, nb_max).sort(dim=-1).values  # the chosen blocks first, ascending
        idx = (first[..., None] * block_size + torch.arange(block_size, device=dev)).flatten(2)
        counts = (kb * block_size).expand(B, Hkv, 1)[..., 0]
    else:
        k_max = min(k, n_max)
        top = ranked.topk(k_max, dim=-1)
        valid = torch.arange(k_max, device=dev) < torch.minimum(budgets, n)
        if topp is not None:
            total = mass.float().masked_fill(~cold, 0).sum(-1, keepdim=True).clamp_min(1e-30)
            share = torch.where(valid, top.values, 0).cumsum(-1) / total
            # keep token i while the mass before it is still short of p (as select_cold_tokens)
            reached_before = torch.cat([torch.zeros_like(share[..., :1], dtype=torch.bool), share[..., :-1] >= topp], -1)
            valid = valid & (~reached_before | (torch.arange(k_max, device=dev) < min_tokens))
        idx = torch.where(valid, top.indices, n_max).sort(dim=-1).values  # the valid tokens first, ascending
        counts = valid.expand(B, Hkv, k_max).sum(-1)
    width = idx.shape[-1]
    idx = torch.where(torch.arange(width, device=dev) < counts[..., None], idx, 0)
    out = torch.zeros(B, Hkv, k, dtype=torch.int32, device=dev)
    out[..., :min(width, k)] = idx[..., :k].int()
    return out, counts.int()
