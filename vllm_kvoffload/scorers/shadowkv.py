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
Batched path (``score_batched``, the whole decode batch with no loop over requests): the
landmarks are scored as keys by the exact-topk kernel (``csrc_triton/score.py``: a block of
the summary table holds ``block_size / 8`` landmark "tokens"), then the outliers of every row
are promoted at once (a stable sort of the cosines, cut at each row's own count).
"""

from __future__ import annotations

import torch

from vllm_kvoffload.ops import batched_ops
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
        n_out = min(n_chunks, self.outlier_count(n_chunks * self.chunk_size))
        if n_out:
            cos = summaries[..., g.head_dim].transpose(0, 1).reshape(g.num_kv_heads, -1).float()
            out = cos.sort(dim=-1, stable=True).indices[:, :n_out]  # lowest cosine first; ties by position
            # outlier chunks outrank every other chunk: add the row max to them
            mass = mass.scatter_add(-1, out, mass.amax(-1, keepdim=True).expand_as(out))
            mass = mass * (g.group_size / mass.sum(-1, keepdim=True))
        return (mass / self.chunk_size).repeat_interleave(self.chunk_size, dim=-1)

    def outlier_count(self, cold_tokens):
        """Outlier chunks of a row with ``cold_tokens`` cold tokens (an int, or a tensor of them)."""
        x = self.outliers_per_token * cold_tokens
        return round(x) if isinstance(x, float) else x.round().long()  # both round half to even

    def score_batched(self, query, summaries, cold_slots, cold_lens, scale):
        g = self.geometry
        cs, D = self.chunk_size, g.head_dim
        n_chunks = (cold_lens // cs).to(torch.int32)
        # chunk masses [B, Hkv, C]: the landmarks [S, Hkv, chunks_per_block, D] scored as keys
        mass = batched_ops(query.is_cuda).score_mass(query, summaries[..., :D], None, cold_slots, n_chunks, scale)
        C = mass.shape[-1]
        valid = torch.arange(C, device=mass.device)[None, None, :] < n_chunks.long()[:, None, None]
        n_out_max = min(C, self.outlier_count(C * cs))
        if n_out_max:
            cos = summaries[cold_slots.long(), :, :, D].transpose(1, 2).reshape(mass.shape).float()
            order = cos.masked_fill(~valid, float("inf")).sort(dim=-1, stable=True).indices[..., :n_out_max]
            rank_ok = torch.arange(n_out_max, device=mass.device) < self.outlier_count(n_chunks.long() * cs)[:, None]
            row_max = mass.amax(-1, keepdim=True).clamp_min(0)  # 0 on rows without cold chunks
            mass = mass.scatter_add(-1, order, (row_max * rank_ok[:, None, :]).expand_as(order))
            total = mass.masked_fill(~valid, 0).sum(-1, keepdim=True)
            mass = torch.where(valid, mass * (g.group_size / total.clamp_min(1e-30)), float("-inf"))
        return (mass / cs).repeat_interleave(cs, dim=-1)
