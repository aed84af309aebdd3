"""Worker side of offloading: executes the scheduler's plan, then plans each step's
decode attention once (FlashInfer style) so every layer only runs it.

One ``OffloadRuntime`` per worker process, created when the first offloaded
attention layer is built.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from vllm.logger import init_logger

from vllm_kvoffload.config import KVOffloadConfig
from vllm_kvoffload.host_pool import HostPool
from vllm_kvoffload.ops.attention import sparse_decode_attention
from vllm_kvoffload.ops.select import select_cold_tokens
from vllm_kvoffload.scorers import KVGeometry, create_scorer

logger = init_logger(__name__)


@dataclass
class DecodeRow:
    """One decode request of this step: where its tokens are."""

    req_id: str
    seq_len: int                 # tokens including the one being decoded
    resident_blocks: torch.Tensor  # device block ids: sinks, then window..end
    resident_tokens: int         # valid tokens in those blocks, in that order
    cold_slots: torch.Tensor     # host slots of logical blocks [sink, sink + n)
    budget: int                  # cold tokens to select per KV head


class OffloadRuntime:
    def __init__(self, config: KVOffloadConfig, block_size: int):
        self.config = config
        self.block_size = block_size
        self.sink_blocks = config.sink_blocks(block_size)
        self.layer_index: dict[str, int] = {}  # offloaded layer name -> host-pool layer
        self.layers: dict[str, torch.nn.Module] = {}
        self.pool: HostPool | None = None
        self.cold: dict[str, list[int]] = {}  # req id -> host slots in logical order
        self.runner = None  # the model runner, for the batch's request ids
        self.geometry: KVGeometry | None = None

    # ---- set-up -------------------------------------------------------------
    def add_layer(self, name: str, layer: torch.nn.Module) -> None:
        if name not in self.layer_index:
            self.layer_index[name] = len(self.layer_index)
            self.layers[name] = layer

    def _ensure_pool(self, num_slots: int, kv_cache: torch.Tensor, impl) -> HostPool:
        if self.pool is None:
            self.geometry = KVGeometry(impl.num_kv_heads, impl.num_heads, impl.head_size,
                                       self.block_size, kv_cache.dtype)
            scorer = create_scorer(self.config.scorer, self.geometry)
            self.pool = HostPool(num_slots, len(self.layer_index), impl.num_kv_heads, self.block_size,
                                 impl.head_size, kv_cache.dtype, scorer, kv_cache.device)
            logger.info("kv_offload: host pool of %d blocks (%.2f GiB), scorer %s", num_slots,
                        self.pool.kv.numel() * self.pool.kv.element_size() / 2**30, scorer.name)
        return self.pool

    # ---- the plan (before vLLM touches the step's blocks) ---------------------
    def apply_plan(self, plan, num_slots: int) -> None:
        for req_id in plan.released:
            self.cold.pop(req_id, None)
        if not plan.copies:
            return
        first = next(iter(self.layers.values()))
        pool = self._ensure_pool(num_slots, first.kv_cache, first.impl)
        for req_id, logical, _, slot in plan.copies:
            slots = self.cold.setdefault(req_id, [])
            assert logical == self.sink_blocks + len(slots), "cold blocks must stay contiguous"
            slots.append(slot)
        blocks = torch.tensor([c[2] for c in plan.copies], device=first.kv_cache.device)
        slots = torch.tensor([c[3] for c in plan.copies])
        for name, layer in self.layers.items():
            keys, values = layer.impl.kv_views(layer.kv_cache, blocks)
            pool.store(self.layer_index[name], slots, keys, values)

    # ---- per step -------------------------------------------------------------
    def plan_decodes(self, num_decodes: int, seq_lens: torch.Tensor, block_table: torch.Tensor) -> list[DecodeRow]:
        req_ids = self.runner.input_batch.req_ids[:num_decodes]
        seq_lens = seq_lens[:num_decodes].tolist()
        rows = []
        for r, (req_id, seq_len) in enumerate(zip(req_ids, seq_lens)):
            nblocks = -(-seq_len // self.block_size)
            slots = self.cold.get(req_id, [])
            sink = min(self.sink_blocks, nblocks)
            logical = list(range(sink)) + list(range(sink + len(slots), nblocks))
            resident = block_table[r, logical]
            cold_tokens = len(slots) * self.block_size
            rows.append(DecodeRow(
                req_id=req_id, seq_len=seq_len, resident_blocks=resident,
                resident_tokens=seq_len - cold_tokens, cold_slots=torch.tensor(slots, dtype=torch.long),
                budget=self.config.budget_tokens(seq_len)))
        return rows

    def decode(self, layer_name: str, impl, query: torch.Tensor, kv_cache: torch.Tensor,
               rows: list[DecodeRow], output: torch.Tensor) -> None:
        """query: [num_decodes, Hq, D] -> output: [num_decodes, Hq, D]."""
        layer = self.layer_index[layer_name]
        for r, row in enumerate(rows):
            keys, values = impl.kv_views(kv_cache, row.resident_blocks)
            # [n, Hkv, bs, D] -> [Hkv, n*bs, D], then drop the unwritten tail
            rk = keys.transpose(0, 1).flatten(1, 2)[:, : row.resident_tokens]
            rv = values.transpose(0, 1).flatten(1, 2)[:, : row.resident_tokens]
            sk = sv = rk[:, :0]
            valid = None
            if row.cold_slots.numel():
                summaries = self.pool.summaries[layer][row.cold_slots.to(self.pool.summaries[layer].device)]
                mass = self.pool.scorer.score(query[r], summaries, impl.scale)
                idx, valid = select_cold_tokens(mass, row.budget, granularity=self.config.granularity,
                                                block_size=self.block_size, topp=self.config.topp)
                sk, sv = self.pool.gather(layer, row.cold_slots, idx)
                sk, sv = sk.to(rk.device), sv.to(rk.device)
            output[r] = sparse_decode_attention(query[r], rk, rv, sk, sv, valid, impl.scale)


_RUNTIME: OffloadRuntime | None = None


def get_runtime(config: KVOffloadConfig | None = None, block_size: int | None = None) -> OffloadRuntime:
    global _RUNTIME
    if _RUNTIME is None:
        assert config is not None and block_size is not None
        _RUNTIME = OffloadRuntime(config, block_size)
    return _RUNTIME


def current_runtime() -> OffloadRuntime | None:
    return _RUNTIME
