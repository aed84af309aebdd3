"""The offload attention backend: vLLM's own backend for prefill, ours for decode.

Each platform's backend is wrapped the same way:
  * the builder asks vLLM to put one-token rows first, plans those rows with the
    runtime, and hands the rest to the stock builder;
  * the impl writes KV exactly as stock does (``do_kv_cache_update`` is
    inherited), runs the stock kernel on the prefill rows, and runs sparse
    decode attention over [sinks + window + selected cold tokens] on the rest.
"""

from __future__ import annotations

import functools

import torch
from vllm.v1.attention.backend import AttentionType
from vllm.v1.attention.backends.cpu_attn import (
    CPUAttentionBackend,
    CPUAttentionBackendImpl,
    CPUAttentionMetadataBuilder,
)

from vllm_kvoffload.attention.metadata import OffloadMetadata, count_leading_decodes, slice_rows
from vllm_kvoffload.kv_spec import OffloadAttentionSpec
from vllm_kvoffload.logs import get_logger
from vllm_kvoffload.runtime import current_runtime

logger = get_logger(__name__)


@functools.lru_cache(maxsize=None)
def cpu_page_layout(isa: str, block_size: int, head_dim: int, dtype: torch.dtype) -> torch.Tensor:
    """Where CPU_ATTN puts each (token, dim) of one (block, kv head) page.

    A CPU_ATTN page is [blocks, kv_heads, block_size, 2*dim] and each (block, head)
    region holds keys then values, packed for the ISA (``vec`` stores keys
    dim-major). Rather than hard-code every ISA's packing, write probes with vLLM's
    own op and record where they land. Returns flat offsets [2, block_size, dim]
    into the region (0 = keys, 1 = values)."""
    from vllm import _custom_ops as ops

    region = 2 * block_size * head_dim
    offsets = torch.empty(2, block_size, head_dim, dtype=torch.long)
    marks = torch.arange(1, head_dim + 1, dtype=torch.float32).to(dtype)  # exact in bf16/fp16
    for t in range(block_size):
        page = torch.zeros(1, 1, block_size, 2 * head_dim, dtype=dtype)
        kv = page.view(1, 1, 2 * block_size, head_dim)
        probe = marks.view(1, 1, head_dim)
        ops.cpu_attn_reshape_and_cache(probe, -probe, kv[:, :, :block_size], kv[:, :, block_size:],
                                       torch.tensor([t]), isa, k_scale=1.0, v_scale=1.0,
                                       kv_cache_dtype="auto")
        flat = page.view(region).float()
        for which, sign in ((0, 1.0), (1, -1.0)):
            pos = (flat * sign > 0).nonzero().flatten()
            assert pos.numel() == head_dim, f"unexpected CPU_ATTN packing for isa {isa}"
            offsets[which, t, (flat[pos] * sign).long() - 1] = pos
    return offsets


def cpu_kv_views(kv_cache: torch.Tensor, isa: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Keys and values of every block as [blocks, kv_heads, block_size, dim] (gathered
    copies when the ISA packs them; pass only the blocks you need)."""
    nb, h, bs, two_d = kv_cache.shape
    offsets = cpu_page_layout(isa, bs, two_d // 2, kv_cache.dtype)
    flat = kv_cache.reshape(nb, h, bs * two_d)
    return flat[:, :, offsets[0]], flat[:, :, offsets[1]]


class OffloadImplMixin:
    """Put first in the bases of a platform impl: it owns ``__init__`` and ``forward``
    and reaches the stock impl through ``super()``. The platform class adds
    ``kv_views`` (and on GPU ``kv5``)."""

    def __init__(self, num_heads, head_size, scale, num_kv_heads, alibi_slopes, sliding_window,
                 kv_cache_dtype, logits_soft_cap=None, attn_type=AttentionType.DECODER,
                 kv_sharing_target_layer_name=None, sinks=None) -> None:
        super().__init__(num_heads, head_size, scale, num_kv_heads, alibi_slopes, sliding_window,
                         kv_cache_dtype, logits_soft_cap, attn_type, kv_sharing_target_layer_name, sinks)
        reasons = []
        if attn_type != AttentionType.DECODER:
            reasons.append(f"attention type {attn_type}")
        if sliding_window is not None:
            reasons.append("sliding window")
        if alibi_slopes is not None:
            reasons.append("ALiBi")
        if sinks is not None:
            reasons.append("learned attention sinks")
        if logits_soft_cap:
            reasons.append("logit soft-capping")
        self.offloaded = not reasons
        if reasons:
            logger.warning_once("kv_offload: a layer with %s runs dense attention (not offloaded)",
                                ", ".join(reasons))

    def forward(self, layer, query, key, value, kv_cache, attn_metadata, output,
                output_scale=None, output_block_scale=None):
        m = attn_metadata
        if not isinstance(m, OffloadMetadata):
            return super().forward(layer, query, key, value, kv_cache, m, output, output_scale, output_block_scale)
        nt = m.num_decode_tokens
        if m.prefill is not None:
            super().forward(layer, query[nt:], key[nt:], value[nt:], kv_cache, m.prefill, output[nt:])
        if m.num_decodes:
            out = output[:nt].view(nt, self.num_heads, self.head_size)
            q = query[:nt].view(nt, self.num_heads, self.head_size)
            current_runtime().decode(layer.layer_name, self, q, kv_cache, m.decode_rows, out)
        return output


def seq_lens_cpu(cm) -> torch.Tensor:
    """The batch's sequence lengths on the host without a device sync where vLLM keeps a CPU
    copy: ``seq_lens_cpu_upper_bound`` is exact except for async speculative decoding,
    which kv_offload refuses (plugin.py)."""
    return cm.seq_lens_cpu_upper_bound if cm.seq_lens_cpu_upper_bound is not None else cm.seq_lens.cpu()


class OffloadBuilderMixin:
    """Put first in the bases of a platform builder: decode rows are planned here,
    the rest goes to the stock builder through ``super().build``."""

    reorder_batch_threshold = 1  # decode rows first

    def build(self, common_prefix_len, common_attn_metadata, fast_build=False):
        cm = common_attn_metadata
        if not isinstance(self.kv_cache_spec, OffloadAttentionSpec):  # layers left dense
            return super().build(common_prefix_len, cm, fast_build)
        nd = count_leading_decodes(cm.query_start_loc_cpu)
        runtime = current_runtime()
        rows = runtime.plan_decodes(nd, seq_lens_cpu(cm), cm.block_table_tensor) if nd else []
        runtime.plan_batched(rows, cm.block_table_tensor)
        prefill = None
        if nd < cm.num_reqs:
            prefill = super().build(common_prefix_len, slice_rows(cm, nd) if nd else cm, fast_build)
        return OffloadMetadata(num_decodes=nd, num_decode_tokens=nd, decode_rows=rows, prefill=prefill)


class OffloadCPUImpl(OffloadImplMixin, CPUAttentionBackendImpl):
    _isa: str | None = None  # fixed per layer; resolved on first use, off the hot path

    def kv_views(self, kv_cache: torch.Tensor, blocks: torch.Tensor):
        """Keys, values of ``blocks``: [n, kv_heads, block_size, dim] each."""
        if self._isa is None:
            from vllm.v1.attention.backends.cpu_attn import _get_attn_isa

            _, _, bs, two_d = kv_cache.shape
            self._isa = _get_attn_isa(kv_cache.dtype, bs, two_d // 2, self.kv_cache_dtype)
        return cpu_kv_views(kv_cache[blocks], self._isa)


class OffloadCPUBuilder(OffloadBuilderMixin, CPUAttentionMetadataBuilder):
    pass


class OffloadCPUBackend(CPUAttentionBackend):
    @staticmethod
    def get_impl_cls():
        return OffloadCPUImpl

    @staticmethod
    def get_builder_cls():
        return OffloadCPUBuilder
