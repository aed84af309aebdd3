"""The scorer interface: rank cold tokens from a compact per-block summary.

A scorer owns two things:
  * ``summarize``: turns the keys of blocks that just went cold into a compact
    summary kept in the device tier (one fixed-shape row per host block);
  * ``score``: estimates, from those summaries, how much attention mass the
    current query puts on every cold token, aggregated over each GQA group.

Selection (top-k / top-p, token or block granularity) is shared and lives in
``vllm_kvoffload.ops.select``. A new scorer is one file: subclass ``Scorer``,
set ``name``, decorate with ``@register``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar

import torch

from vllm_kvoffload.ops import batched_ops


@dataclass(frozen=True)
class KVGeometry:
    """Shape of one layer's paged KV as the scorers see it."""

    num_kv_heads: int
    num_q_heads: int
    head_dim: int
    block_size: int
    dtype: torch.dtype

    @property
    def group_size(self) -> int:
        return self.num_q_heads // self.num_kv_heads


class Scorer(ABC):
    name: ClassVar[str]

    def __init__(self, geometry: KVGeometry):
        self.geometry = geometry

    @abstractmethod
    def summary_spec(self) -> tuple[tuple[int, ...], torch.dtype]:
        """Shape (without the leading block dim) and dtype of one block's summary."""

    @abstractmethod
    def summarize(self, keys: torch.Tensor) -> torch.Tensor:
        """keys: [num_blocks, num_kv_heads, block_size, head_dim] (post-RoPE)
        -> summaries: [num_blocks, *summary_spec()[0]]."""

    @abstractmethod
    def score(self, query: torch.Tensor, summaries: torch.Tensor, scale: float) -> torch.Tensor:
        """query: [num_q_heads, head_dim]; summaries: [num_blocks, ...]
        -> estimated attention mass per cold token, [num_kv_heads, num_blocks * block_size],
        non-negative, each row summing to the group size (one unit per query head)."""

    def score_batched(self, query: torch.Tensor, summaries: torch.Tensor, cold_slots: torch.Tensor,
                      cold_lens: torch.Tensor, scale: float) -> torch.Tensor:
        """The batched decode path's scoring: query [B, Hq, D]; ``summaries`` one layer's
        table [num_slots, ...]; cold_slots [B, max_cold] (device); each row's cold tokens
        (``cold_lens``, device int32 [B], whole blocks) -> mass [B, Hkv, max_cold * block_size],
        -inf past each row's cold tokens (never selected). Every registered scorer overrides
        this with a batched path; this fallback loops over the rows (one host sync)."""
        B, bs = query.shape[0], self.geometry.block_size
        mass = torch.full((B, self.geometry.num_kv_heads, cold_slots.shape[1] * bs), float("-inf"),
                          device=query.device)
        for b, n in enumerate((cold_lens // bs).tolist()):
            if n:
                mass[b, :, : n * bs] = self.score(query[b], summaries[cold_slots[b, :n].long()], scale)
        return mass

    def summary_bytes_per_token(self) -> float:
        shape, dtype = self.summary_spec()
        numel = 1
        for s in shape:
            numel *= s
        return numel * torch.empty((), dtype=dtype).element_size() / self.geometry.block_size


def group_softmax_mass(logits: torch.Tensor, num_kv_heads: int) -> torch.Tensor:
    """logits: [num_q_heads, n] -> softmax per query head, summed over each GQA group:
    [num_kv_heads, n]. Query heads h*g..h*g+g-1 share KV head h (vLLM's layout)."""
    probs = torch.softmax(logits.float(), dim=-1)
    return probs.view(num_kv_heads, -1, probs.shape[-1]).sum(dim=1)


def masked_group_mass(logits: torch.Tensor, cold_lens: torch.Tensor, num_kv_heads: int) -> torch.Tensor:
    """logits [B, Hq, N] of each row's cold tokens (padded to N) -> the rows' group masses
    [B, Hkv, N]: softmax over each row's first ``cold_lens[b]`` tokens per query head, summed
    over each GQA group; -inf past them (a row without cold tokens is all -inf)."""
    B, _, N = logits.shape
    valid = torch.arange(N, device=logits.device)[None, :] < cold_lens.to(logits.device).long()[:, None]
    probs = torch.softmax(logits.float().masked_fill(~valid[:, None, :], float("-inf")), dim=-1)
    mass = probs.nan_to_num(0.0).view(B, num_kv_heads, -1, N).sum(dim=2)
    return mass.masked_fill(~valid[:, None, :], float("-inf"))


class SoftmaxScorer(Scorer):
    """A scorer whose mass is a softmax of one estimated logit per cold token, summed over the
    GQA group. It writes ``cold_logits`` once, for a batch of rows; ``score`` (one request) and
    ``score_batched`` (the decode batch, every row at once: no loop over requests) derive from it."""

    @abstractmethod
    def cold_logits(self, query: torch.Tensor, summaries: torch.Tensor, scale: float) -> torch.Tensor:
        """query [B, Hq, D]; summaries [B, C, *summary_spec()[0]] (each row's cold blocks, in
        order) -> estimated ``scale * q.k`` per query head and cold token: [B, Hq, C * block_size]."""

    def score(self, query: torch.Tensor, summaries: torch.Tensor, scale: float) -> torch.Tensor:
        logits = self.cold_logits(query[None], summaries[None], scale)[0]
        return group_softmax_mass(logits, self.geometry.num_kv_heads)

    def fused_mass(self, kernels, query: torch.Tensor, summaries: torch.Tensor, cold_slots: torch.Tensor,
                   cold_lens: torch.Tensor, scale: float) -> torch.Tensor:
        """The GPU path: ``score_batched``'s result from the scorer's fused Triton kernel
        (``csrc_triton/score_summary.py``, reached through ``kernels``), which reads each
        block's summary once instead of materialising every cold token's estimated key."""
        raise NotImplementedError

    def torch_mass(self, query: torch.Tensor, summaries: torch.Tensor, cold_slots: torch.Tensor,
                   cold_lens: torch.Tensor, scale: float) -> torch.Tensor:
        """``score_batched`` in torch: every row's estimated keys at once (CPU, and GPU shapes
        the fused kernels do not tile)."""
        # padding slots are gathered too (any valid slot); their tokens are masked out below
        logits = self.cold_logits(query, summaries[cold_slots.long()], scale)
        return masked_group_mass(logits, cold_lens, self.geometry.num_kv_heads)

    def score_batched(self, query: torch.Tensor, summaries: torch.Tensor, cold_slots: torch.Tensor,
                      cold_lens: torch.Tensor, scale: float) -> torch.Tensor:
        if query.is_cuda:
            kernels = batched_ops(True)
            if kernels.summary_scoring_tiles(self.geometry.head_dim, self.geometry.block_size):
                return self.fused_mass(kernels, query, summaries, cold_slots, cold_lens, scale)
        return self.torch_mass(query, summaries, cold_slots, cold_lens, scale)
