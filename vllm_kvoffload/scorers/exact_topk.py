"""exact-topk: exact q·k against every cold token's key, kept compactly on the device.

The summary of a block is its post-RoPE keys in bf16 (the compact form of the
first release; fp8 is the GPU path's option). Scores are the softmax of q·k over
the cold tokens, summed over each GQA group. No low-rank projection and no chunk
landmarks: per-token selection is what the context-intensive paper shows holds up.
"""

import torch

from vllm_kvoffload.ops import batched_ops
from vllm_kvoffload.scorers import register
from vllm_kvoffload.scorers.base import Scorer, group_softmax_mass


@register
class ExactTopKScorer(Scorer):
    name = "exact-topk"
    key_dtype = torch.bfloat16

    def summary_spec(self):
        g = self.geometry
        return (g.num_kv_heads, g.block_size, g.head_dim), self.key_dtype

    def summarize(self, keys: torch.Tensor) -> torch.Tensor:
        return keys.to(self.key_dtype)

    def score(self, query: torch.Tensor, summaries: torch.Tensor, scale: float) -> torch.Tensor:
        g = self.geometry
        # [num_blocks, Hkv, bs, D] -> [Hkv, n, D]
        keys = summaries.permute(1, 0, 2, 3).reshape(g.num_kv_heads, -1, g.head_dim).float()
        q = query.float().view(g.num_kv_heads, g.group_size, g.head_dim)
        logits = torch.einsum("hgd,hnd->hgn", q, keys) * scale
        return group_softmax_mass(logits.reshape(g.num_q_heads, -1), g.num_kv_heads)

    def score_batched(self, query, summaries, cold_slots, cold_lens, scale):
        """The summaries are the keys: the fused scoring kernel, one launch for the batch."""
        return batched_ops(query.is_cuda).score_mass(query, summaries, None, cold_slots, cold_lens, scale)
