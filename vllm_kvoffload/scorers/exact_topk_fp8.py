"""exact-topk-fp8: exact-topk's per-token selection with its compact keys in fp8.

The summary of a block holds, per KV head, the block's post-RoPE keys in float8 e4m3
(``block_size x head_dim`` bytes, tokens in order) followed by one fp32 scale per token
(``scale = max|k| / 448``, ``ops/quantize_ref.py``): 1 + 4/D bytes per channel instead of
bf16's 2, so 132 B per token and KV head at D = 128 (bf16: 256). Scores are
``softmax(scale_t * q . k8_t)`` summed over the GQA group; the scale factors out of the
dot product, so the fused kernel (``csrc_triton/score.py``, its fp8 path) applies it to the
logit. Attention still uses the exact K/V fetched from the host: only the ranking sees fp8.

Why: scoring reads every cold token's compact key at every step and layer, and on the
H100 that is the largest part of an offloaded decode step (docs/performance.md); fp8
halves those bytes and the keys' device memory.
"""

import torch

from vllm_kvoffload.ops import batched_ops
from vllm_kvoffload.ops.quantize_ref import FP8, dequantize_fp8_ref, quantize_fp8_ref
from vllm_kvoffload.scorers import register
from vllm_kvoffload.scorers.exact_topk import ExactTopKScorer


@register
class ExactTopKFP8Scorer(ExactTopKScorer):
    name = "exact-topk-fp8"

    def summary_spec(self):
        g = self.geometry
        return (g.num_kv_heads, g.block_size * (g.head_dim + 4)), torch.uint8

    def summarize(self, keys: torch.Tensor) -> torch.Tensor:
        if keys.is_cuda:  # one launch instead of the reference's dozen; GPU division is approximate, so a
            # few codes may differ from the reference by one step (tests/csrc_triton: < 1e-3 of them)
            from vllm_kvoffload.ops.triton_kernels import quantize_fp8

            q, scale = quantize_fp8(keys.contiguous())
        else:
            q, scale = quantize_fp8_ref(keys)  # [nb, H, bs, D] fp8, [nb, H, bs] fp32
        return torch.cat([q.view(torch.uint8).flatten(2), scale.view(torch.uint8).flatten(2)], -1)

    def keys_and_scales(self, summaries: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Views of a summary table [..., Hkv, bs * (D + 4)]: fp8 keys [..., Hkv, bs, D] and
        their fp32 scales [..., Hkv, bs] (no copy)."""
        g = self.geometry
        n = g.block_size * g.head_dim
        keys = summaries[..., :n].view(FP8).unflatten(-1, (g.block_size, g.head_dim))
        return keys, summaries[..., n:].view(torch.float32)

    def score(self, query: torch.Tensor, summaries: torch.Tensor, scale: float) -> torch.Tensor:
        # exact-topk's scoring over the dequantized keys [nb, Hkv, bs, D]
        return super().score(query, dequantize_fp8_ref(*self.keys_and_scales(summaries), torch.float32), scale)

    def score_batched(self, query, summaries, cold_slots, cold_lens, scale):
        """The fused scoring kernel's fp8 path, one launch for the batch."""
        keys, key_scale = self.keys_and_scales(summaries)
        return batched_ops(query.is_cuda).score_mass(query, keys, key_scale, cold_slots, cold_lens, scale)
