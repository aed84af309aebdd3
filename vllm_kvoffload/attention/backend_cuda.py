"""The offload backend on NVIDIA GPUs: vLLM's FlashAttention for prefill, our Triton
kernels for decode. Same wrapping as the CPU backend (see backend.py).

CUDA graphs: decode plans on the host every step (cold-block counts change), so
this backend reports no full-graph support and vLLM captures piecewise graphs
around attention (attention itself runs eagerly). vLLM logs that fallback."""

import torch
from vllm.v1.attention.backend import AttentionCGSupport
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
    _kv5: tuple | None = None  # (cache key, view) of the last kv_cache seen

    def kv5(self, kv_cache: torch.Tensor) -> torch.Tensor:
        # A layer's cache tensor is allocated once, so its view is built once (asked per step).
        key = (kv_cache.data_ptr(), kv_cache.shape, kv_cache.stride())
        if self._kv5 is None or self._kv5[0] != key:
            self._kv5 = (key, flash_kv5(kv_cache, self.head_size))
        return self._kv5[1]

    def kv_views(self, kv_cache: torch.Tensor, blocks: torch.Tensor):
        """Keys, values of ``blocks``: [n, kv_heads, block_size, dim] each."""
        kv = self.kv5(kv_cache)[:, blocks.to(kv_cache.device)]
        return kv[0].transpose(1, 2), kv[1].transpose(1, 2)


class OffloadFlashAttentionBuilder(OffloadBuilderMixin, FlashAttentionMetadataBuilder):
    _cudagraph_support = AttentionCGSupport.NEVER

    @classmethod
    def get_cudagraph_support(cls, vllm_config, kv_cache_spec):
        return AttentionCGSupport.NEVER


class OffloadFlashAttentionBackend(FlashAttentionBackend):
    @staticmethod
    def get_impl_cls():
        return OffloadFlashAttentionImpl

    @staticmethod
    def get_builder_cls():
        return OffloadFlashAttentionBuilder
