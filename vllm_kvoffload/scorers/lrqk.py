"""lrqk: low-rank proxy scores; exact attention over the fetched tokens.

LRQK (Low-Rank Query and Key attention, 2025) factorizes each head's prefill
queries and keys jointly into rank-``r`` factors (r = 32 of head_dim 128),
scores every cached token at decode with the rank-``r`` proxy ``(q B) . a_k``,
fetches the top tokens' full-precision K/V from host memory through a device
cache (hits are free, misses are transferred) and attends over them exactly.

Device summary of a block, per KV head (bf16, ``r * D + block_size * r``
values): a rank-``r`` factorization of the block's post-RoPE keys,
``K ~= A @ B`` with ``A`` [block_size, r] the top-``r`` eigenvectors of the Gram
matrix ``K K^T`` (orthonormal columns: the top left singular vectors) and
``B = A^T K`` [r, D]. ``A @ B`` is the block's best rank-``r`` approximation
(Eckart-Young); the proxy logit is ``(q B^T) . a_t = q . k_hat_t``. The Gram
route (a batched ``eigh`` of ``block_size x block_size`` matrices) replaces an SVD
of ``block_size x D`` ones, which CUDA solves one matrix at a time.

Defaults: ``rank=8`` per 32-token block (a quarter of the block's rank, as
LRQK's 32 is a quarter of head_dim).

Deviations (the interface is stateless per block and never shows queries at
summarize time):
  * the factorization is per block and of the keys only (an SVD), not a joint
    per-request Q/K factorization; the query is projected exactly on each
    block's basis, so the proxy error is the key's rank-r residual only.
  * hit/miss transfer is state across steps: the engine gathers the selected
    tokens every step; the selection benchmark simulates LRQK's device cache
    (LRU over tokens, capacity 2x the budget) to report PCIe bytes as misses.
GPU path: ``csrc_triton/score_summary.py::lrqk_mass``, one launch for the decode batch (plus
the shared softmax pass): per block, q is projected on the basis and multiplied with the
coefficients in registers. CPU: the torch ``cold_logits`` below.
"""

from __future__ import annotations

import torch

from vllm_kvoffload.scorers import register
from vllm_kvoffload.scorers.base import SoftmaxScorer

EIGH_BATCH = 1024


@register
class LRQKScorer(SoftmaxScorer):
    name = "lrqk"
    rank = 8
    cache_tokens_per_budget = 2  # simulated device cache / budget (benchmark only)

    def summary_spec(self):
        g = self.geometry
        r = min(self.rank, g.block_size, g.head_dim)
        return (g.num_kv_heads, r * g.head_dim + g.block_size * r), torch.bfloat16

    def summarize(self, keys: torch.Tensor) -> torch.Tensor:
        nb, h, bs, d = keys.shape
        r = min(self.rank, bs, d)
        k = keys.float()
        gram = (k @ k.transpose(-1, -2)).flatten(0, 1)                              # [nb * H, bs, bs]
        # batched eigh's workspace grows with the batch (about 0.3 MB per 16 x 16 matrix on CUDA):
        # at most EIGH_BATCH matrices per call bounds it
        coeff = torch.cat([torch.linalg.eigh(g).eigenvectors[..., -r:] for g in gram.split(EIGH_BATCH)])
        coeff = coeff.view(nb, h, bs, r)                                             # top r, orthonormal
        basis = coeff.transpose(-1, -2) @ k                                         # [nb, H, r, D]
        return torch.cat([basis.flatten(2), coeff.flatten(2)], -1).to(torch.bfloat16)

    def cold_logits(self, query: torch.Tensor, summaries: torch.Tensor, scale: float) -> torch.Tensor:
        g = self.geometry
        r = min(self.rank, g.block_size, g.head_dim)
        B, C = summaries.shape[:2]
        s = summaries.float()
        basis = s[..., : r * g.head_dim].reshape(B, C, g.num_kv_heads, r, g.head_dim)
        coeff = s[..., r * g.head_dim :].reshape(B, C, g.num_kv_heads, g.block_size, r)
        q = query.float().reshape(B, g.num_kv_heads, g.group_size, g.head_dim)
        proj = torch.einsum("bhgd,bchrd->bchgr", q, basis)  # q on each block's basis
        logits = torch.einsum("bchgr,bchtr->bhgct", proj, coeff) * scale
        return logits.reshape(B, g.num_q_heads, C * g.block_size)

    def fused_mass(self, kernels, query, summaries, cold_slots, cold_lens, scale):
        r = min(self.rank, self.geometry.block_size, self.geometry.head_dim)
        return kernels.lrqk_mass(query, summaries, r, cold_slots, cold_lens, scale)
