"""shadowkv: 8-token chunk-mean landmarks of the post-RoPE keys, plus outlier chunks.

ShadowKV (Sun et al., 2024, bytedance/ShadowKV) keeps on the device a rank-160
SVD of the pre-RoPE keys, one landmark per 8-token chunk (the mean of its
post-RoPE keys) and 48 "outlier" chunks (lowest cosine similarity between a
chunk's keys and its landmark) resident in full; values are offloaded. At decode
it scores chunks by ``softmax(q . landmark)`` summed over the GQA group, fetches
the values of the top ``sparse_budget / 8`` chunks and rebuilds their keys from
the low-rank factors.

Device summary of a block, per KV head and chunk (bf16): the chunk's landmark
(``head_dim`` values) and its outlier statistic, the smallest cosine similarity
of a chunk key to the landmark (1 value): ``4 * (D + 1)`` values per 32-token block.

Defaults (ShadowKV code): ``chunk_size=8``, ``rank=160``, 48 outlier chunks
next to ``sparse_budget=2048`` at 128K context.

Deviations (the scorer interface is stateless per block and the engine gathers
exact keys from the host):
  * no low-rank keys: the SVD basis is per request and computed from pre-RoPE
    keys, neither of which a scorer sees. Selection in ShadowKV depends only on
    the landmarks, so it is unchanged; attention uses exact fetched keys, which
    is an upper bound on ShadowKV's accuracy (its rank-160 key error is absent)
    and costs K+V over PCIe instead of V only.
  * outlier chunks are ranked first inside the budget (their tokens get the
    row's largest mass added before renormalising) instead of being resident
    outside it; to keep ShadowKV's outlier share, their number scales with the
    cold context: 48 per 128K tokens (``outliers_per_token``), at least 0.
  * A chunk score is broadcast to its tokens as mass / chunk_size.
GPU path: the landmark GEMM + softmax is a plain dense kernel (no custom
Triton kernel needed beyond the shared top-k).
"""

from __future__ import annotations

import torch

from vllm_kvoffload.scorers import register
from vllm_kvoffload.scorers.base import Scorer, group_softmax_mass


@register
class ShadowKVScorer(Scorer):
    name = "shadowkv"
    chunk_size = 8
    outliers_per_token = 48 / (128 * 1024)  # 48 outlier chunks at 128K context

    @property
    def chunks_per_block(self) -> int:
        assert self.geometry.block_size % self.chunk_size == 0, (self.geometry.block_size, self.chunk_size)
        return self.geometry.block_size // self.chunk_size

    def summary_spec(self):
        g = self.geometry
        return (g.num_kv_heads, self.chunks_per_block, g.head_dim + 1), torch.bfloat16

    def summarize(self, keys: torch.Tensor) -> torch.Tensor:
        nb, h, _, d = keys.shape
        chunks = keys.float().reshape(nb, h, self.chunks_per_block, self.chunk_size, d)
        landmark = chunks.mean(3)
        cos = torch.nn.functional.cosine_similarity(chunks, landmark[..., None, :], dim=-1).amin(-1)
        return torch.cat([landmark, cos[..., None]], -1).to(torch.bfloat16)

    def chunk_mass(self, query: torch.Tensor, summaries: torch.Tensor, scale: float) -> torch.Tensor:
        """[Hkv, num_chunks]: softmax over chunk landmarks, summed over the group."""
        g = self.geometry
        lm = summaries[..., : g.head_dim].transpose(0, 1).reshape(g.num_kv_heads, -1, g.head_dim).float()
        q = query.float().reshape(g.num_kv_heads, g.group_size, g.head_dim)
        logits = torch.einsum("hgd,hnd->hgn", q, lm) * scale
        return group_softmax_mass(logits.reshape(g.num_q_heads, -1), g.num_kv_heads)

    def score(self, query: torch.Tensor, summaries: torch.Tensor, scale: float) -> torch.Tensor:
        g = self.geometry
        mass = self.chunk_mass(query, summaries, scale)
        n_chunks = mass.shape[1]
        n_out = min(n_chunks, round(self.outliers_per_token * n_chunks * self.chunk_size))
        if n_out:
            cos = summaries[..., g.head_dim].transpose(0, 1).reshape(g.num_kv_heads, -1).float()
            out = cos.topk(n_out, dim=-1, largest=False).indices
            # outlier chunks outrank every other chunk: add the row max to them
            mass = mass.scatter_add(-1, out, mass.amax(-1, keepdim=True).expand_as(out))
            mass = mass * (g.group_size / mass.sum(-1, keepdim=True))
        return (mass / self.chunk_size).repeat_interleave(self.chunk_size, dim=-1)
