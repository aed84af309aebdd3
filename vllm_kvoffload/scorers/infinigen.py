"""infinigen: approximate scores from a partial set of (skewed) key channels.

InfiniGen (Lee et al., OSDI 2024) skews each layer's query/key weights offline
with an orthogonal matrix from their SVD so that q.k concentrates in a few
channels, keeps those ~30% of the key channels ("partial key cache") on the
device, and speculates the *next* layer's attention from the current layer's
input and partial query weights, so the next layer's tokens are prefetched a
layer ahead. Tokens whose speculated score is within ``alpha`` of the maximum
are fetched (capped by a budget).

Device summary of a block, per KV head (bf16, shape ``[block_size + 1, r]``):
row 0 holds the indices of the block's ``r = ceil(0.3 * D)`` kept channels
(integers <= 256 are exact in bf16), rows 1.. the keys on those channels.

Defaults: ``partial_ratio=0.3`` (InfiniGen's partial weight ratio).

Deviations (the interface gives neither weights nor the next layer's input):
  * no offline skewing: the kept channels are, per block and KV head, the
    ``r`` channels of largest key energy in that block. Real Q/K energy sits
    in a few outlier channels, which is what skewing amplifies; per-block
    choice costs ``r`` indices per block instead of one skew per layer.
  * the score uses the current layer's query (restricted to the kept channels),
    not a speculation from the previous layer: selection quality here is an
    upper bound on InfiniGen's; the layer-ahead prefetch only changes timing.
  * the ``alpha`` threshold is the engine's top-p budget (``--kv-offload-topp``)
    and the budget cap its top-k.
GPU path: ``csrc_triton/score_summary.py::infinigen_mass``, one launch for the decode batch
(plus the shared softmax pass): per block, the query is gathered on the block's kept channels
and multiplied with the partial keys in registers. CPU: the torch ``cold_logits`` below.
"""

from __future__ import annotations

import math

import torch

from vllm_kvoffload.scorers import register
from vllm_kvoffload.scorers.base import SoftmaxScorer


@register
class InfiniGenScorer(SoftmaxScorer):
    name = "infinigen"
    partial_ratio = 0.3

    @property
    def rank(self) -> int:
        assert self.geometry.head_dim <= 256, "channel indices must be exact in bf16"
        return math.ceil(self.partial_ratio * self.geometry.head_dim)

    def summary_spec(self):
        g = self.geometry
        return (g.num_kv_heads, g.block_size + 1, self.rank), torch.bfloat16

    def summarize(self, keys: torch.Tensor) -> torch.Tensor:
        k = keys.float()
        idx = k.square().sum(2).topk(self.rank, dim=-1).indices.sort(-1).values  # [nb, H, r]
        part = k.gather(-1, idx[:, :, None, :].expand(-1, -1, k.shape[2], -1))  # [nb, H, bs, r]
        return torch.cat([idx[:, :, None, :].float(), part], 2).to(torch.bfloat16)

    def cold_logits(self, query: torch.Tensor, summaries: torch.Tensor, scale: float) -> torch.Tensor:
        g = self.geometry
        idx = summaries[:, :, :, 0].long()          # [B, C, H, r]: the block's kept channels
        part = summaries[:, :, :, 1:].float()       # [B, C, H, bs, r]: the keys on them
        B, C, _, r = idx.shape
        q = query.float().reshape(B, 1, g.num_kv_heads, g.group_size, g.head_dim).expand(-1, C, -1, -1, -1)
        q_sel = q.gather(-1, idx[:, :, :, None, :].expand(-1, -1, -1, g.group_size, -1))  # [B, C, H, G, r]
        logits = torch.einsum("bchgr,bchtr->bhgct", q_sel, part) * scale
        return logits.reshape(B, g.num_q_heads, C * g.block_size)

    def fused_mass(self, kernels, query, summaries, cold_slots, cold_lens, scale):
        return kernels.infinigen_mass(query, summaries, cold_slots, cold_lens, scale)
