"""Worker side of the host tier: the block store and the compact summaries.

One host slot holds one block of every offloaded layer:
    kv[slot, layer, 0 | 1, kv_head, token, dim]   (0 = keys, 1 = values)
That is the logical shape; in memory the pool is head-major (``kv_tensor``), stored as
[layer, kv_head, slot, 0 | 1, token, dim]:
- the blocks of one (layer, KV head) lie together, so a decode step's reads of one layer and head
  stay within 1/(num_layers x num_kv_heads) of the pool. Zero-copy reads of scattered rows slow
  down as they spread: on an H100, 41 GB/s within 256 MB, 24 GB/s over 1 GB and 10 GB/s over
  4 GB (docs/performance.md, session 25);
- a block's keys and values are adjacent (2 x block_size x dim elements), so a token's K and V rows
  lie in one page where the two blocks fit (an fp8 pool of head size 128 and 16-token blocks: 4 KiB).
  Where few of the selected tokens miss the device cache, the reads are bound by address
  translations, not bytes: one page per miss instead of two read the misses 1.3-1.5x faster
  (docs/performance.md, session 26).
and ``summaries[layer][slot]`` is the scorer's compact summary of that block,
kept in the device tier. Slots are assigned by the scheduler's
``HostSlotAllocator``; this class only stores and reads.

``kv`` holds the model's dtype, or fp8, or 4-bit rows (``host_dtype``, ``ops/offload_ref.to_host``;
4-bit: ``host_kv_dtype="int4"``, with the scales in device memory, ``scales``); reads return the model's dtype (``dtype``). Summaries are always made from the exact keys.
"""

from __future__ import annotations

import torch

from vllm_kvoffload.host_memory import HostMemory, host_empty
from vllm_kvoffload.ops.int4_ref import INT4, join_rows, nibble_bytes, split_rows
from vllm_kvoffload.ops.offload_ref import from_host, to_host
from vllm_kvoffload.scorers.base import Scorer


class HostPool:
    def __init__(self, num_slots: int, num_layers: int, num_kv_heads: int, block_size: int,
                 head_dim: int, dtype: torch.dtype, scorer: Scorer, device: torch.device,
                 host_dtype: torch.dtype | None = None, memory: HostMemory = "pinned"):
        pin = device.type == "cuda"
        self.dtype = dtype  # the model's KV dtype: what reads return
        self.kv = self.kv_tensor(num_slots, num_layers, num_kv_heads, block_size, head_dim,
                                 host_dtype or dtype, pin, memory)
        # A 4-bit pool keeps each row's fp32 scale here, in device memory [slot, layer, 2, kv_head, token]:
        # the host row is then 64 bytes at head size 128, one PCIe read unit (int4_ref.nibble_bytes).
        self.scales = (torch.empty(self.kv.shape[:5], dtype=torch.float32, device=device)
                       if self.kv.dtype == INT4 else None)
        shape, summary_dtype = scorer.summary_spec()
        # one tensor for all layers (one write stores a block's summaries in every layer);
        # summaries[layer] is its view of one layer
        self.all_summaries = torch.empty(num_layers, num_slots, *shape, dtype=summary_dtype, device=device)
        self.summaries = list(self.all_summaries.unbind(0))
        self.scorer = scorer
        self.block_size = block_size

    @staticmethod
    def kv_shape(num_slots: int, num_layers: int, num_kv_heads: int, block_size: int, head_dim: int,
                 dtype: torch.dtype | None = None) -> tuple:
        """The pool's logical shape; its last dimension is a row: head_dim elements, or a 4-bit row's
        nibble bytes where ``dtype`` is ``int4_ref.INT4`` (its scale is in ``scales``)."""
        row = nibble_bytes(head_dim) if dtype == INT4 else head_dim
        return num_slots, num_layers, 2, num_kv_heads, block_size, row

    @staticmethod
    def kv_tensor(num_slots: int, num_layers: int, num_kv_heads: int, block_size: int, head_dim: int,
                  dtype: torch.dtype, pin: bool, memory: HostMemory = "pinned") -> torch.Tensor:
        """The pool [slot, layer, 2, kv_head, token, dim], stored [layer, kv_head, slot, 2, token, dim]:
        ``kv[:, layer, :, head]`` is contiguous. Empty, not zeros (pinned memory is faulted in when
        it is locked; pageable memory as slots fill). ``memory``: 4 KiB or 2 MiB pages (host_memory.py)."""
        S, L, two, H, BS, D = HostPool.kv_shape(num_slots, num_layers, num_kv_heads, block_size, head_dim, dtype)
        return host_empty((L, H, S, two, BS, D), dtype, pin, memory).permute(2, 0, 3, 1, 4, 5)

    @property
    def num_slots(self) -> int:
        return self.kv.shape[0]

    @property
    def cache_row(self) -> int:
        """The width of a row in the device cache: the pool's, or a 4-bit row with its scale appended."""
        return self.kv.shape[-1] + (0 if self.scales is None else 4)

    def _rows(self, layer: int, kv: int, idx: tuple) -> torch.Tensor:
        """Pool rows at ``idx`` (indices into [slot, kv_head, token]) of one layer, in the model's dtype."""
        rows = self.kv[:, layer, kv][idx]
        if self.scales is not None:  # indexed where they live: only the rows read cross to the host
            rows = join_rows(rows, self.scales[:, layer, kv][tuple(i.to(self.scales.device) for i in idx)].cpu())
        return from_host(rows, self.dtype)

    def store(self, layer: int, slots: torch.Tensor, keys: torch.Tensor, values: torch.Tensor) -> None:
        """keys/values: [n, kv_heads, block_size, dim] of the blocks going cold."""
        host_slots = slots.to(self.kv.device)
        # Blocking copies: the device blocks are reused by vLLM right after this step.
        for kv, x in enumerate((keys, values)):
            rows = to_host(x, self.kv.dtype)
            if self.scales is not None:
                rows, scale = split_rows(rows)
                self.scales[slots.to(self.scales.device), layer, kv] = scale.to(self.scales.device)
            self.kv[host_slots, layer, kv] = rows.to(self.kv.device)
        self.summaries[layer][slots.to(self.summaries[layer].device)] = self.scorer.summarize(keys)

    def store_from_caches(self, kv5s: list[torch.Tensor], table: torch.Tensor, blocks: torch.Tensor,
                          slots: torch.Tensor, group_bytes: int = 64 * 2**20) -> None:
        """GPU: device blocks of every layer's cache view kv5s[layer] [2, blocks, bs, Hkv, D]
        straight into their pinned slots, all layers in one zero-copy launch (stream-ordered,
        no host sync; table: ``offload.layer_pointer_table(kv5s)``), then their summaries, as many
        layers at a time as ``group_bytes`` of keys hold (a decode step's few blocks: all layers in a
        handful of launches; a long prefill's thousands: a layer at a time). Scorers summarize
        blocks independently of their layer, so layers can share one call."""
        from vllm_kvoffload.ops.triton_kernels import load

        offload = load("offload")
        offload.store_blocks_all_layers_uva(kv5s, blocks, self.kv, slots, table=table, scales=self.scales)
        n = blocks.numel()
        if n == 0:
            return
        kv5 = kv5s[0]
        per_layer = n * kv5[0, 0].numel() * kv5.element_size()
        group = max(1, min(len(kv5s), group_bytes // per_layer))
        for layer0 in range(0, len(kv5s), group):
            g = min(group, len(kv5s) - layer0)
            keys = offload.keys_all_layers(kv5, table, blocks, layer0, g)  # [g, n, Hkv, bs, D]
            summaries = self.scorer.summarize(keys.flatten(0, 1))
            self.all_summaries[layer0:layer0 + g, slots] = summaries.reshape(g, n, *summaries.shape[1:])

    def gather(self, layer: int, slots: torch.Tensor, token_idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Cold tokens chosen per KV head. slots: [n_cold_blocks] (the request's
        cold blocks in order); token_idx: [kv_heads, k] indices into its cold range.
        Returns keys, values: [kv_heads, k, dim]."""
        token_idx = token_idx.cpu()  # the pool is host memory: its indices are computed on the host
        heads = torch.arange(token_idx.shape[0])[:, None]
        idx = (slots.cpu()[token_idx // self.block_size], heads, token_idx % self.block_size)
        return self._rows(layer, 0, idx), self._rows(layer, 1, idx)

    def read_blocks(self, layer: int, slots: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Whole blocks back, [n, kv_heads, block_size, dim] each (tests, oracle)."""
        s = slots.cpu()
        return self._rows(layer, 0, (s,)), self._rows(layer, 1, (s,))
