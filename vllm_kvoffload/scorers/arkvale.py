"""arkvale: page digests (bounding cuboids of the keys), with eviction and recall.

ArkVale (Chen et al., NeurIPS 2024) summarizes every 32-token page of post-RoPE
keys by a digest, the bounding cuboid of its keys (channel-wise max and min),
keeps the digests on the device, backs every page up to host memory, and keeps
a device page cache of ``page_budget`` pages. Each decode step estimates the
pages' importance from the digests (max of q.k over the cuboid), recalls the
top ``page_topk = page_budget / 2`` pages missing from the cache and evicts the
least important ones.

Device summary of a block, per KV head and page (bf16): ``[min, max]`` keys
(the cuboid), ``2 * D`` values per page.

Defaults (ArkVale code, ``enable_arkvale``/``InferState``): ``page_size=32``
(capped at the engine block size), one importance shared by all KV heads of a
layer (``n_groups=1``: the estimate is summed over every query head, so all
KV heads select the same pages), ``page_topk = page_budget / 2``.

Deviations: the scorer returns per-token mass (page mass / page_size, identical
rows for every KV head); the engine's budget plays ``page_topk``. Eviction and
recall are state across decode steps, which the engine does not keep for cold
blocks (it gathers selected tokens from the host every step): the selection
benchmark simulates ArkVale's device page cache (capacity ``2 * page_topk``,
evict the lowest estimate) to report PCIe bytes per step as recalls only.
GPU path: quest's batched scoring (the exact-topk Triton kernel on the pages), then
:func:`shared_over_kv_heads`.
"""

from __future__ import annotations

import torch

from vllm_kvoffload.scorers import register
from vllm_kvoffload.scorers.quest import QuestScorer, upper_bound_logits


@register
class ArkValeScorer(QuestScorer):  # same page digests (min/max bounds), its own scoring
    name = "arkvale"
    default_page_size = 32
    cache_pages_per_topk = 2  # page_budget / page_topk

    def score_batched(self, query, summaries, cold_slots, cold_lens, scale):
        return shared_over_kv_heads(super().score_batched(query, summaries, cold_slots, cold_lens,
                                                          scale))

    def score(self, query: torch.Tensor, summaries: torch.Tensor, scale: float) -> torch.Tensor:
        g = self.geometry
        logits = upper_bound_logits(query, summaries, g.num_kv_heads) * scale
        # one importance per page for the whole layer: every KV head gets the
        # mean over all query heads' softmax, so each row sums to the group size
        shared = torch.softmax(logits, dim=-1).sum(0) / g.num_kv_heads
        mass = shared.expand(g.num_kv_heads, -1) / self.page_size
        return mass.repeat_interleave(self.page_size, dim=-1)


def shared_over_kv_heads(group_mass: torch.Tensor) -> torch.Tensor:
    """[B, Hkv, n] per-group masses -> ArkVale's one importance for all KV heads.

    The sum of every query head's softmax, divided by Hkv, is the sum of the group masses over
    KV heads divided by Hkv; each row then still sums to the group size. -inf stays -inf."""
    shared = group_mass.sum(1, keepdim=True) / group_mass.shape[1]
    return shared.expand_as(group_mass).contiguous()
