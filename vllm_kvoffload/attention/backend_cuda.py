"""The offload backend on NVIDIA GPUs: vLLM's FlashAttention for prefill, our Triton
kernels for decode. Same wrapping as the CPU backend (see backend.py).

CUDA graphs: decode plans on the host every step (cold-block counts change), so
this backend reports no full-graph support and vLLM captures piecewise graphs
around attention (attention itself runs eagerly). vLLM logs that fallback."""

import torch
from vllm.v1.attention.backend import AttentionCGSupport, AttentionType
from vllm.v1.attention.backends.flash_attn import (
    FlashAttentionBackend,
    FlashAttentionImpl,
    FlashAttentionMetadataBuilder,
)

from vllm_kvoffload.attention.backend import OffloadBuilderMixin, OffloadImplMixin


def flash_kv5(kv_cache: torch.Tensor, head_size: int) -> torch.Tensor:
    """vLLM's FlashAttention cache as the kernels' strided view [2, blocks, block_size,
    kv_heads, dim] (0 = keys, 1 = values), whatever its physical layout: derived from
    the same key/value views vLLM's own FlashAttention impl takes."""
    keys, values = kv_cache.transpose(1, 2).split(head_size, dim=-1)  # [blocks, bs, Hkv, D] each
    kv_offset = values.storage_offset() - keys.storage_offset()
    return torch.as_strided(kv_cache, (2, *keys.shape), (kv_offset, *keys.stride()), keys.storage_offset())


class OffloadFlashAttentionImpl(OffloadImplMixin, FlashAttentionImpl):
    def __init__(self, num_heads, head_size, scale, num_kv_heads, alibi_slopes, sliding_window,
                 kv_cache_dtype, logits_soft_cap=None, attn_type=AttentionType.DECODER,
                 kv_sharing_target_layer_name=None, sinks=None) -> None:
        super().__init__(num_heads, head_size, scale, num_kv_heads, alibi_slopes, sliding_window,
                         kv_cache_dtype, logits_soft_cap, attn_type, kv_sharing_target_layer_name, sinks)
        self._init_offload(attn_type, sliding_window, alibi_slopes, sinks, logits_soft_cap)

    def kv5(self, kv_cache: torch.Tensor) -> torch.Tensor:
        return flash_kv5(kv_cache, self.head_size)

    def kv_views(self, kv_cache: torch.Tensor, blocks: torch.Tensor):
        """Keys, values of ``blocks``: [n, kv_heads, block_size, dim] each."""
        kv = self.kv5(kv_cache)[:, blocks.to(kv_cache.device)]
        return kv[0].transpose(1, 2), kv[1].transpose(1, 2)

    def forward(self, layer, query, key, value, kv_cache, attn_metadata, output,
                output_scale=None, output_block_scale=None):
        from vllm_kvoffload.attention.metadata import OffloadMetadata

        if not isinstance(attn_metadata, OffloadMetadata):
            return super().forward(layer, query, key, value, kv_cache, attn_metadata, output,
                                   output_scale, output_block_scale)
        return self._offload_forward(super().forward, layer, query, key, value, kv_cache, attn_metadata, output)


class OffloadFlashAttentionBuilder(OffloadBuilderMixin, FlashAttentionMetadataBuilder):
    _cudagraph_support = AttentionCGSupport.NEVER

    @classmethod
    def get_cudagraph_support(cls, vllm_config, kv_cache_spec):
        return AttentionCGSupport.NEVER

    def build(self, common_prefix_len, common_attn_metadata, fast_build=False):
        return self._offload_build(super().build, common_prefix_len, common_attn_metadata, fast_build)


class OffloadFlashAttentionBackend(FlashAttentionBackend):
    @staticmethod
    def get_impl_cls():
        return OffloadFlashAttentionImpl

    @staticmethod
    def get_builder_cls():
        return OffloadFlashAttentionBuilder
