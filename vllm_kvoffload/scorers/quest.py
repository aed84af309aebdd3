"""quest: per-page channel-wise min/max key bounds; the page score is the upper
bound of q.k over the page.

Quest (Tang et al., ICML 2024, mit-han-lab/Quest) keeps, per 16-token page and
KV head, the element-wise min and max of the page's post-RoPE keys. For a query
``q`` the page's criticality is ``sum_d max(q_d * min_d, q_d * max_d)``, an upper
bound on ``q . k`` for every key of the page; the top pages are attended.

Device summary of a block, per KV head and page (bf16): ``[min, max]`` keys,
``2 * D`` values per page (``D / 4`` values per token for 16-token pages).
The min is rounded down and the max up to bf16, so the bound stays an upper bound.

Defaults (Quest paper/code): ``page_size=16`` (capped at the engine block size). Quest targets MHA; for GQA the
bound is computed per query head, turned into a softmax over pages and summed
over the group (the engine's mass convention), and a page's mass is spread
evenly over its tokens. Quest's "first two layers dense" is the engine's
per-layer configuration, not the scorer's.
Batched (GPU) path, :meth:`QuestScorer.score_batched`: the bound
``ub = relu(q) . max + min(q, 0) . min`` is ONE dot product, of ``[min(q, 0), relu(q)]`` with the
page's stored ``[min, max]`` (2D values, already contiguous in that order). So pages are scored
as keys of width 2D by the exact-topk scoring kernel (``csrc_triton/score.py``), with the same
softmax-over-pages and GQA-group sum, in one launch for the whole batch.
"""

from __future__ import annotations

import torch

from vllm_kvoffload.ops import batched_ops
from vllm_kvoffload.scorers import register
from vllm_kvoffload.scorers.base import Scorer, group_softmax_mass


def page_bounds(keys: torch.Tensor, page_size: int) -> torch.Tensor:
    """keys [nb, H, bs, D] -> [nb, H, bs / page_size, 2, D] bf16 (min rounded down, max up)."""
    nb, h, bs, d = keys.shape
    assert bs % page_size == 0, (bs, page_size)
    pages = keys.float().reshape(nb, h, bs // page_size, page_size, d)
    lo, hi = pages.amin(3), pages.amax(3)
    lo_b, hi_b = lo.to(torch.bfloat16), hi.to(torch.bfloat16)
    inf = torch.tensor(float("inf"), dtype=torch.bfloat16, device=keys.device)
    lo_b = torch.where(lo_b.float() > lo, torch.nextafter(lo_b, -inf), lo_b)
    hi_b = torch.where(hi_b.float() < hi, torch.nextafter(hi_b, inf), hi_b)
    return torch.stack([lo_b, hi_b], 3)


def upper_bound_logits(query: torch.Tensor, bounds: torch.Tensor, num_kv_heads: int) -> torch.Tensor:
    """query [Hq, D], bounds [nb, Hkv, P, 2, D] -> max over each page of q.k, [Hq, nb * P]."""
    hq, d = query.shape
    b = bounds.transpose(0, 1).reshape(num_kv_heads, -1, 2, d).float()
    q = query.float().reshape(num_kv_heads, hq // num_kv_heads, d)
    ub = torch.einsum("hgd,hnd->hgn", q.clamp_min(0), b[:, :, 1]) + torch.einsum(
        "hgd,hnd->hgn", q.clamp_max(0), b[:, :, 0])
    return ub.reshape(hq, -1)


@register
class QuestScorer(Scorer):
    name = "quest"
    default_page_size = 16

    @property
    def page_size(self) -> int:
        return min(self.default_page_size, self.geometry.block_size)  # a page never spans blocks

    def summary_spec(self):
        g = self.geometry
        return (g.num_kv_heads, g.block_size // self.page_size, 2, g.head_dim), torch.bfloat16

    def summarize(self, keys: torch.Tensor) -> torch.Tensor:
        return page_bounds(keys, self.page_size)

    def score(self, query: torch.Tensor, summaries: torch.Tensor, scale: float) -> torch.Tensor:
        g = self.geometry
        logits = upper_bound_logits(query, summaries, g.num_kv_heads) * scale
        mass = group_softmax_mass(logits, g.num_kv_heads)
        return (mass / self.page_size).repeat_interleave(self.page_size, dim=-1)

    def score_batched(self, query, summaries, cold_slots, cold_lens, scale):
        return batched_page_mass(batched_ops(query.is_cuda).score_mass, query, summaries, cold_slots, cold_lens,
                                 self.page_size, scale)


def batched_page_mass(score_mass, query, summaries, cold_slots, cold_lens, page_size, scale):
    """Quest's mass for a decode batch with the exact-topk scoring kernel ``score_mass``
    (Triton, or its torch reference): query [B, Hq, D], summaries [slots, Hkv, P, 2, D],
    cold_lens [B] tokens (whole blocks, so whole pages) -> [B, Hkv, max_cold * block_size],
    -inf past each row's cold tokens."""
    split_query = torch.cat([query.clamp_max(0), query.clamp_min(0)], dim=-1).contiguous()  # [B, Hq, 2D]
    page_keys = summaries.flatten(-2)  # [slots, Hkv, P, 2D]: [min, max] per page
    page_mass = score_mass(split_query, page_keys, None, cold_slots, cold_lens // page_size, scale)
    return (page_mass / page_size).repeat_interleave(page_size, dim=-1)  # -inf pages stay -inf tokens
