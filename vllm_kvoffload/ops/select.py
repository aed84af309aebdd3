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
