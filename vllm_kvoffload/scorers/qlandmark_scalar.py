"""qlandmark-scalar: qlandmark's per-token 2-bit landmarks on a scalar grid, for fast GPU scoring.

The same method as ``qlandmark`` (the key of every cold token, Hadamard-rotated, scaled to
unit RMS and quantized to 2 bits per channel; score = softmax of ``scale * q . k_hat``
summed over the GQA group) and the same 34 bytes per token and KV head at D = 128. Two
differences: the rotated query is rounded to int8 steps per query head (``rotated``), and the
grid: each channel is coded on its own into the 4-level MSE-optimal uniform quantizer of
N(0, 1) (``qlandmark``'s ``grid="uniform"``), instead of 4 channels at a time into a
256-entry 4-D codebook. A code then decodes with a shift and a mask, no
table lookup, and the fused kernel scores on tensor cores:

    q . k_hat = s * STEP * sum_d q_d * (level_d - 1.5)
              = s * STEP * (sum_d q_d * level_d  -  1.5 * sum_d q_d)

where ``level_d`` in 0..3 is read straight from the bits. Its relative key error is 0.34
against the codebook's 0.32 (docs/scorers.md).

Device summary of a block, per KV head (``uint8`` row, planar so that each token's codes
are one aligned 32-byte run for D = 128):
  * ``block_size x head_dim / 4`` bytes: tokens in order, byte ``j`` of a token holds the
    levels of channels ``4j..4j+3``, channel ``4j + k`` in bits ``6 - 2k`` and ``7 - 2k``;
  * ``block_size x 2`` bytes: each token's scale (RMS of its rotated key), bf16 bit pattern.

GPU path: ``csrc_triton/score_summary.py::qscalar_mass`` scores, ``csrc_triton/quantize.py::
quantize_2bit_planar`` summarizes (one launch per layer). CPU: ``cold_logits`` (qlandmark's, over the
dequantized keys) and ``summarize``'s torch path, which are their references.
"""

from __future__ import annotations

import torch

from vllm_kvoffload.scorers import register
from vllm_kvoffload.scorers.qlandmark import UNIFORM_STEP, VEC, QLandmarkScorer, hadamard, vq_quantize


@register
class QLandmarkScalarScorer(QLandmarkScorer):
    name = "qlandmark-scalar"
    grid = "uniform"

    def summary_spec(self):
        g = self.geometry
        assert g.head_dim % VEC == 0, g.head_dim
        return (g.num_kv_heads, g.block_size * (g.head_dim // VEC + 2)), torch.uint8

    def summarize(self, keys: torch.Tensor) -> torch.Tensor:
        g = self.geometry
        if keys.is_cuda:
            from vllm_kvoffload.ops import triton_kernels

            if triton_kernels.summary_scoring_tiles(g.head_dim, g.block_size):  # one launch, not about 15
                return triton_kernels.quantize_2bit_planar(keys, hadamard(g.head_dim, keys.device), UNIFORM_STEP)
        codes, scale = vq_quantize(keys, VEC, self.grid)  # [nb, H, bs, D/4] uint8, [nb, H, bs]
        scale_bytes = scale.to(torch.bfloat16).view(torch.uint8)  # [nb, H, 2 * bs]
        return torch.cat([codes.flatten(2), scale_bytes], -1)

    def codes_and_scales(self, summaries: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Views of summaries [..., Hkv, bs * (D/4 + 2)]: codes [..., Hkv, bs, D/4] uint8 and
        scales [..., Hkv, bs] bf16 (no copy); qlandmark's ``landmarks`` dequantizes through it."""
        g = self.geometry
        n = g.block_size * (g.head_dim // VEC)
        codes = summaries[..., :n].unflatten(-1, (g.block_size, g.head_dim // VEC))
        return codes, summaries[..., n:].view(torch.bfloat16)

    def rotated(self, query: torch.Tensor) -> torch.Tensor:
        """The query in the landmarks' Hadamard basis, rounded to int8 steps per query head (its
        largest channel to +-127): the int8 operand of the tensor-core kernel, here in fp32, so
        that the torch path and the kernel score the same query. Rounding again changes nothing."""
        q = super().rotated(query)
        step = q.abs().amax(-1, keepdim=True).clamp_min(1e-30) / 127
        return torch.floor(q / step + 0.5) * step

    def fused_mass(self, kernels, query, summaries, cold_slots, cold_lens, scale):
        # The int8 decodings round the query on the device: rounding here too changes nothing and cost
        # about 7 ms per decode step of host time under cProfile (32 layers, H100, session 16).
        if kernels.qscalar_default_decode(self.geometry.head_dim) >= 2:
            q = QLandmarkScorer.rotated(self, query)
        else:
            q = self.rotated(query)
        return kernels.qscalar_mass(q, summaries, UNIFORM_STEP, cold_slots, cold_lens, scale)
