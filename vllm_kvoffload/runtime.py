"""Worker side of offloading: executes the scheduler's plan, then plans each step's
decode attention once (FlashInfer style) so every layer only runs it.

One ``OffloadRuntime`` per worker process, created when the first offloaded
attention layer is built (``runtime_for_layer``; an engine built later in the same
process replaces it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from vllm_kvoffload.config import KVOffloadConfig, KVOffloadConfigError
from vllm_kvoffload.device_cache import CacheShape, DeviceCache
from vllm_kvoffload.decode_graphs import DecodeGraphs, GraphPolicy
from vllm_kvoffload.host_pool import HostPool
from vllm_kvoffload.logs import get_logger
from vllm_kvoffload.ops import batched_ops
from vllm_kvoffload.ops.attention import sparse_decode_attention
from vllm_kvoffload.ops.select import select_cold_tokens, select_cold_tokens_batched
from vllm_kvoffload.profiling import TIMER, phase
from vllm_kvoffload.scorers import KVGeometry, create_scorer

logger = get_logger(__name__)


@dataclass
class DecodeRow:
    """One decode request of this step: where its tokens are."""

    req_id: str | None
    seq_len: int                 # tokens including the one being decoded
    resident_blocks: torch.Tensor  # device block ids: sinks, then window..end
    resident_tokens: int         # valid tokens in those blocks, in that order
    cold_slots: torch.Tensor     # host slots of logical blocks [sink, sink + n)
    budget: int                  # cold tokens to select per KV head


_NO_SLOTS = torch.empty(0, dtype=torch.long)  # cold_slots of a row with nothing offloaded (never written)
# Plan padding (resident blocks, cold blocks, selected tokens): a width grows to the next
# multiple, so the step's shape (and its decode graphs) changes about once per 1K tokens decoded.
PLAN_BUCKETS = (8, 64, 64)
_ALIGN = 4  # int32 elements: each packed array starts on a 16-byte boundary, as Triton specializes pointers


def _round_up(n: int, step: int) -> int:
    return -(-n // step) * step


def _pad_rows(tensors: list[torch.Tensor], width: int) -> np.ndarray:
    """[len(tensors), width] int32: row i holds the 1-D CPU tensor tensors[i], then zeros."""
    lens = np.array([t.numel() for t in tensors])
    out = np.zeros((len(tensors), width), dtype=np.int32)
    out[np.arange(width) < lens[:, None]] = torch.cat(tensors).numpy()  # row-major: row by row
    return out


class HostToDevice:
    """Int32 host arrays to the device in ONE copy of a packed buffer; returns device views
    of the pieces. On CUDA the host buffer is a pinned staging buffer and the device buffer
    a persistent one, both reused across calls and grown when needed, and the copy is
    asynchronous: arrays of the same sizes land at the same device addresses (what CUDA
    graphs of the decode need). Invariants: the host refills the staging buffer only after
    the previous copy out of it has finished (an event), so no copy reads a half-written
    plan; the device buffer is rewritten on the stream that reads it, so a step's copy
    waits for the last step's readers."""

    def __init__(self):
        self.staging = torch.empty(0, dtype=torch.int32)
        self.copied = None  # CUDA event recorded after the last copy out of ``staging``
        self.device_buffer: torch.Tensor | None = None

    def upload(self, arrays: dict[str, np.ndarray], device: torch.device) -> dict[str, torch.Tensor]:
        sizes = [_round_up(a.size, _ALIGN) for a in arrays.values()]
        host = self._host_buffer(sum(sizes), device)
        flat, start = host.numpy(), 0
        for a, size in zip(arrays.values(), sizes):
            flat[start:start + a.size] = a.ravel()  # values fit int32 (block ids, slots, lengths)
            start += size
        if device.type == "cuda":
            buf = self.device_buffer
            if buf is None or buf.device != device or buf.numel() < host.numel():
                buf = self.device_buffer = torch.empty(max(host.numel(), 2 * (buf.numel() if buf is not None else 0)),
                                                       dtype=torch.int32, device=device)
            dev = buf[:host.numel()].copy_(host, non_blocking=True)
            self.copied.record()  # on the stream of the copy
        else:
            dev = host.to(device)
        views, start = {}, 0
        for (name, a), size in zip(arrays.items(), sizes):
            views[name] = dev[start:start + a.size].view(a.shape)
            start += size
        return views

    def _host_buffer(self, n: int, device: torch.device) -> torch.Tensor:
        if device.type != "cuda":
            return torch.empty(n, dtype=torch.int32)  # the views alias it: a fresh one per call
        if self.copied is None:
            self.copied = torch.cuda.Event()
        self.copied.synchronize()  # the last copy out of the staging buffer has finished
        if self.staging.numel() < n:
            self.staging = torch.empty(max(n, 2 * self.staging.numel()), dtype=torch.int32, pin_memory=True)
        return self.staging[:n]


class OffloadRuntime:
    def __init__(self, config: KVOffloadConfig, block_size: int):
        self.config = config
        self.block_size = block_size
        self.sink_blocks = config.sink_blocks(block_size)
        self.layer_index: dict[str, int] = {}  # offloaded layer name -> host-pool layer
        self.layers: dict[str, torch.nn.Module] = {}
        self.pool: HostPool | None = None
        self.cold: dict[str, list[int]] = {}  # req id -> host slots in logical order
        # req id -> its cold list as a CPU int64 tensor; apply_plan drops the entry of every
        # request whose list it changes, so an entry always equals its list
        self.cold_tensors: dict[str, torch.Tensor] = {}
        self.runner = None  # the model runner, for the batch's request ids
        self.batched: dict | None = None  # this step's device plan for the Triton path
        # The device cache (batched path), kept in place: each request's last selection per layer.
        # Invariant: its rows hold copies of their requests' host-pool rows, so reading them
        # equals reading the pool.
        limit = None if config.device_cache_gb is None else int(config.device_cache_gb * 2**30)
        self.device_cache = DeviceCache(limit)
        self.fetch_counts: torch.Tensor | None = None  # with the pool: device int64 [cache hits, tokens gathered]
        self.uncached_steps = 0  # decode steps whose device cache did not fit (a scratch or the per-request path ran)
        self.rows_gathered = 0  # (token, KV head, layer) rows the per-request path read from the pool
        self.plan_upload = HostToDevice()  # the per-step decode plan
        self.copy_upload = HostToDevice()  # the blocks going cold and their slots
        self.graph_policy = GraphPolicy()
        self.graphs: DecodeGraphs | None = None  # this step's decode graphs (None: eager)
        # Zero-copy store: every layer's kv5 view and their base-address table, built from the
        # caches whose data_ptrs are ``views_key`` (vLLM allocates the caches once).
        self.views_key: tuple[int, ...] | None = None
        self.views: tuple[list[torch.Tensor], torch.Tensor] | None = None
        self.max_model_len: int | None = None  # the engine's, from prepare_pool: the LRU cache's token map

    # ---- set-up -------------------------------------------------------------
    def add_layer(self, name: str, layer: torch.nn.Module) -> None:
        if name not in self.layer_index:
            self.layer_index[name] = len(self.layer_index)
            self.layers[name] = layer

    def prepare_pool(self, num_slots: int, max_requests: int | None = None, max_model_len: int | None = None) -> None:
        """Allocate the host pool now, once vLLM has bound the layers' caches at start-up: a pool
        the host cannot provide then fails the start, not the first request that offloads. With
        the engine's limits, also say how large the device cache can grow."""
        self.max_model_len = max_model_len
        if self.layers:
            first = next(iter(self.layers.values()))
            self._ensure_pool(num_slots, first.kv_cache, first.impl)
            if max_requests and max_model_len and self.use_batched_kernels():
                self._report_device_cache_bound(max_requests, max_model_len, first.kv_cache.device)

    def _report_device_cache_bound(self, max_requests: int, max_model_len: int, device: torch.device) -> None:
        """Log the device cache at its largest (every request at max_model_len), and warn where that
        would not fit: such a batch would decode without the cache (``device_cache.py``)."""
        first = next(iter(self.layers.values()))
        width = self._selection_width(self.config.budget_tokens(max_model_len), max_model_len)
        row = DeviceCache.bytes_for(CacheShape(1, first.impl.num_kv_heads, width, self.pool.cache_row,
                                               self.pool.kv.dtype, len(self.layer_index),
                                               **self._lru_geometry(max_model_len)))
        free = torch.cuda.mem_get_info(device)[0] if device.type == "cuda" else None
        bounds = [(room, what) for room, what in ((self.device_cache.limit_bytes, "device_cache_gb"),
                                                  (free, "the device's free memory now")) if room is not None]
        logger.info("kv_offload: the device cache grows with the batch, up to %.2f GiB with max_num_seqs=%d "
                    "requests at max_model_len=%d (%.1f MiB each)", max_requests * row / 2**30, max_requests,
                    max_model_len, row / 2**20)
        room, what = min(bounds) if bounds else (None, None)
        if room is not None and max_requests * row > room:
            logger.warning("kv_offload: %s (%.3g GiB) holds the device cache of %d requests at max_model_len; "
                           "a batch that needs more decodes without it (slower, the same outputs). "
                           "A lower --max-num-seqs or --max-model-len, or a smaller budget, avoids that",
                           what, room / 2**30, room // row)

    def _ensure_pool(self, num_slots: int, kv_cache: torch.Tensor, impl) -> HostPool:
        if self.pool is None:
            geometry = KVGeometry(impl.num_kv_heads, impl.num_heads, impl.head_size,
                                  self.block_size, kv_cache.dtype)
            scorer = create_scorer(self.config.scorer, geometry)
            host_dtype = self.config.host_dtype(kv_cache.dtype)
            self.config.check_head_size(impl.head_size)
            try:
                self.pool = HostPool(num_slots, len(self.layer_index), impl.num_kv_heads, self.block_size,
                                     impl.head_size, kv_cache.dtype, scorer, kv_cache.device, host_dtype=host_dtype)
            except (RuntimeError, MemoryError) as e:  # torch's allocators (pinned: cudaHostAlloc) raise these
                shape = HostPool.kv_shape(num_slots, len(self.layer_index), impl.num_kv_heads, self.block_size,
                                          impl.head_size, host_dtype)
                gib = math.prod(shape) * host_dtype.itemsize / 2**30
                kind = "pinned host" if kv_cache.device.type == "cuda" else "host"
                if self.config.host_kv_dtype == "int4":  # HostPool.scales: 4 bytes per row, on the device
                    kind += f" memory and {math.prod(shape[:5]) * 4 / 2**30:.1f} GiB of device"
                raise KVOffloadConfigError(
                    f"kv_offload could not allocate its host pool: {num_slots} blocks, {gib:.1f} GiB of {kind} memory "
                    f"(host_gb={self.config.host_gb}, host_blocks={self.config.host_blocks}): "
                    f"{str(e).splitlines()[0]}. Accepted: a pool the host can hold; lower "
                    "--kv-offload-host-gb (pinned memory is bounded by the machine's RAM and its "
                    "locked-memory limit)") from e
            self.fetch_counts = torch.zeros(2, dtype=torch.int64, device=kv_cache.device)
            stored = self.pool.kv.dtype
            if self.pool.scales is not None:
                stored = (f"4-bit rows, their scales in {self.pool.scales.numel() * 4 / 2**30:.2f} GiB of device "
                          "memory")
            logger.info("kv_offload: host pool of %d blocks (%.2f GiB, %s), scorer %s", num_slots,
                        self.pool.kv.numel() * self.pool.kv.element_size() / 2**30, stored, scorer.name)
        return self.pool

    # ---- the plan (before vLLM touches the step's blocks) ---------------------
    def apply_plan(self, plan, num_slots: int) -> None:
        for req_id in plan.released:
            self.cold.pop(req_id, None)
            self.cold_tensors.pop(req_id, None)
        self.device_cache.release(plan.released)  # their rows are stale: free them for new requests
        if not plan.copies:
            return
        first = next(iter(self.layers.values()))
        pool = self._ensure_pool(num_slots, first.kv_cache, first.impl)
        for req_id, logical, _, slot in plan.copies:
            slots = self.cold.setdefault(req_id, [])
            assert logical == self.sink_blocks + len(slots), "cold blocks must stay contiguous"
            slots.append(slot)
            self.cold_tensors.pop(req_id, None)
        blocks = np.array([c[2] for c in plan.copies], dtype=np.int64)
        slots = np.array([c[3] for c in plan.copies], dtype=np.int64)
        device = first.kv_cache.device
        if device.type == "cuda" and hasattr(first.impl, "kv5"):
            dev = self.copy_upload.upload({"blocks": blocks, "slots": slots}, device)
            pool.store_from_caches(*self._layer_views(), dev["blocks"], dev["slots"])
        else:
            blocks, slots = torch.from_numpy(blocks).to(device), torch.from_numpy(slots)
            for name, layer in self.layers.items():
                keys, values = layer.impl.kv_views(layer.kv_cache, blocks)
                pool.store(self.layer_index[name], slots, keys, values)

    def _layer_views(self) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Every layer's kv5 view in host-pool layer order (``layers`` and ``layer_index``
        share insertion order) and the device table of their base addresses, rebuilt only
        when a layer's cache tensor moved."""
        key = tuple(layer.kv_cache.data_ptr() for layer in self.layers.values())
        if key != self.views_key:
            from vllm_kvoffload.ops.triton_kernels import load

            kv5s = [layer.impl.kv5(layer.kv_cache) for layer in self.layers.values()]
            self.views = kv5s, load("offload").layer_pointer_table(kv5s)
            self.views_key = key
        return self.views

    # ---- per step -------------------------------------------------------------
    def plan_decodes(self, num_decodes: int, seq_lens: torch.Tensor, block_table: torch.Tensor) -> list[DecodeRow]:
        """seq_lens: CPU (or device) tensor; block_table: the step's device block table."""
        # Rows without a request (vLLM's dummy/profiling runs) have no cold blocks.
        known = self.runner.input_batch.req_ids[:num_decodes] if self.runner is not None else []
        req_ids = list(known) + [None] * (num_decodes - len(known))
        seq_lens = seq_lens[:num_decodes].tolist()
        table = self._block_table_rows(block_table, num_decodes)
        bs = self.block_size
        rows = []
        for r, (req_id, seq_len) in enumerate(zip(req_ids, seq_lens)):
            nblocks = -(-seq_len // bs)
            cold = self._cold_slots(req_id)
            sink = min(self.sink_blocks, nblocks)
            # logical blocks [sink, sink + #cold) are in the host pool; the others are resident
            resident = np.concatenate((table[r, :sink], table[r, sink + cold.numel():nblocks]))
            rows.append(DecodeRow(
                req_id=req_id, seq_len=seq_len, resident_blocks=torch.from_numpy(resident),
                resident_tokens=seq_len - cold.numel() * bs, cold_slots=cold,
                budget=self.config.budget_tokens(seq_len)))
        return rows

    def _block_table_rows(self, block_table: torch.Tensor, n: int) -> np.ndarray:
        """The step's first ``n`` block-table rows on the host: vLLM's own host copy (the source
        of the device table) where the runner has one, else a device-to-host copy, a sync that
        under async scheduling would wait for the step in flight."""
        tables = getattr(getattr(self.runner, "input_batch", None), "block_table", None)
        for table in getattr(tables, "block_tables", ()):
            if table.get_device_tensor(n).data_ptr() == block_table.data_ptr():
                return table.get_numpy_array()[:n]
        return block_table[:n].cpu().numpy()

    def _cold_slots(self, req_id: str | None) -> torch.Tensor:
        """The request's host slots in logical order, CPU int64 (shared: read only)."""
        if req_id is None or req_id not in self.cold:
            return _NO_SLOTS
        slots = self.cold_tensors.get(req_id)
        if slots is None:
            slots = self.cold_tensors[req_id] = torch.from_numpy(np.array(self.cold[req_id], dtype=np.int64))
        return slots

    def decode(self, layer_name: str, impl, query: torch.Tensor, kv_cache: torch.Tensor,
               rows: list[DecodeRow], output: torch.Tensor) -> None:
        """query: [num_decodes, Hq, D] -> output: [num_decodes, Hq, D]."""
        if self.batched is not None and hasattr(impl, "kv5"):
            return self._decode_batched(layer_name, impl, query, kv_cache, output)
        return self._decode_rows(layer_name, impl, query, kv_cache, rows, output)

    # ---- GPU: one launch per kernel for the whole decode batch --------------------------
    def use_batched_kernels(self) -> bool:
        """Batched path: FlashAttention-layout caches (``impl.kv5``), any scorer
        (``Scorer.score_batched``: the whole batch in one fused scoring launch on GPU) and any
        selection (token top-k in Triton; blocks and top-p in torch, ``select_cold_tokens_batched``).
        Triton on GPU, the batched torch references elsewhere (tests)."""
        first = next(iter(self.layers.values()), None)
        return first is not None and hasattr(first.impl, "kv5")

    def plan_batched(self, rows: list[DecodeRow], block_table: torch.Tensor) -> None:
        """Device tensors shared by every layer of this step (plan once, run per layer): built
        in numpy, then one host->device copy of one packed int32 buffer, sliced on the device.
        Table widths and ``k`` are padded up to buckets (``PLAN_BUCKETS``; kernels read each
        row's own lengths and budget), so a steady batch keeps one shape: its decode graphs."""
        self.batched = None
        if not rows or not self.use_batched_kernels():
            self.graphs = self.graph_policy.for_step(None, self._make_graphs)
            return
        bs = self.block_size
        res_step, cold_step, _ = PLAN_BUCKETS
        res_lens = np.array([r.resident_tokens for r in rows], dtype=np.int32)
        cold_blocks = np.array([r.cold_slots.numel() for r in rows], dtype=np.int32)
        budgets = np.array([r.budget for r in rows], dtype=np.int32)
        res = _pad_rows([r.resident_blocks for r in rows], _round_up(int((-(-res_lens // bs)).max()), res_step))
        cold = _pad_rows([r.cold_slots for r in rows], _round_up(max(1, int(cold_blocks.max())), cold_step))
        cold_lens = cold_blocks * bs
        any_cold = bool(cold_lens.max() > 0)
        k = self._selection_width(int(budgets.max()), int(cold_lens.max()))
        arrays = dict(res_table=res, res_lens=res_lens, cold_slots=cold, cold_lens=cold_lens, budgets=budgets)
        if any_cold:
            first = next(iter(self.layers.values()))
            cache_plan = self.device_cache.plan(
                [r.req_id for r in rows], first.impl.num_kv_heads, k, self.pool.cache_row,  # pool rows, packed or not
                self.pool.kv.dtype, len(self.layer_index), block_table.device, reuse=self.config.device_cache,
                **self._lru_geometry(cold.shape[1] * bs))
            if cache_plan is None or self.device_cache.shape.shared:  # this batch's cache does not fit
                self.uncached_steps += 1
            if cache_plan is None:  # nor its scratch: the per-request path, which needs no buffers
                self.graphs = self.graph_policy.for_step(None, self._make_graphs)
                return
            arrays["cache_rows"], arrays["cache_fresh"] = cache_plan
        dev = self.plan_upload.upload(arrays, block_table.device)
        self.batched = dict(dev, k=k, any_cold=any_cold)
        key = None
        if any_cold and self._graphs_enabled(block_table.device):
            key = (len(rows), k, dev["res_table"].data_ptr(), self.device_cache.key(),
                   *((n, a.shape) for n, a in arrays.items()))
        self.graphs = self.graph_policy.for_step(key, self._make_graphs)

    def _lru_geometry(self, cold_tokens: int) -> dict:
        """The LRU cache's factor and token-map entries (none where the factor is 1, or the cache is off):
        at least ``cold_tokens``, and the engine's max_model_len where known, so the map is sized once."""
        factor = self.config.device_cache_factor if self.config.device_cache else 1
        if factor == 1:
            return {}
        return dict(factor=factor, tokens=_round_up(max(cold_tokens, self.max_model_len or 0), 1024))

    def _selection_width(self, budget: int, cold_tokens: int) -> int:
        """``k`` of a step whose widest budget and longest cold span are these: the device cache's width
        too. In buckets of PLAN_BUCKETS[2] tokens, and for block granularity a multiple of the block size
        (whole blocks: ceil(budget / block size) of them; both powers of two)."""
        step = PLAN_BUCKETS[2] if self.config.granularity == "token" else max(PLAN_BUCKETS[2], self.block_size)
        return _round_up(max(1, min(budget, cold_tokens)), step)

    def _graphs_enabled(self, device: torch.device) -> bool:
        if not (self.config.decode_graphs and device.type == "cuda"):
            return False
        if TIMER is not None:
            logger.info_once("kv_offload: decode graphs are off while VLLM_KVOFFLOAD_PROFILE times each phase")
            return False
        return True

    def _make_graphs(self, key: tuple) -> DecodeGraphs:
        first = next(iter(self.layers.values()))
        logger.info("kv_offload: capturing decode graphs for batch %d, k %d", len(self.batched["res_lens"]),
                    self.batched["k"])
        return DecodeGraphs(key, first.kv_cache.device)

    def fetch_stats(self) -> dict:
        """Cold tokens attended at decode so far, counted once per KV head and layer (on either path),
        the share the device cache served (the batched path's; the per-request path reads every one
        from the pool), and the steps that ran without the cache because it did not fit (in a scratch,
        or on the per-request path). Syncs with the device: call it rarely."""
        hits, gathered = self.fetch_counts.tolist() if self.fetch_counts is not None else (0, 0)
        gathered += self.rows_gathered
        return {"tokens_gathered": gathered, "cache_hits": hits,
                "cache_hit_rate": hits / gathered if gathered else None,
                "steps_without_device_cache": self.uncached_steps}

    def _decode_batched(self, layer_name, impl, query, kv_cache, output) -> None:
        b = self.batched
        layer = self.layer_index[layer_name]
        if not b["any_cold"]:
            B, Hkv, D = query.shape[0], impl.num_kv_heads, impl.head_size
            sel = query.new_zeros(B, Hkv, 1, D)
            counts = torch.zeros(B, Hkv, dtype=torch.int32, device=query.device)
            with phase("attend"):
                batched_ops(query.is_cuda).sparse_decode(query, impl.kv5(kv_cache), b["res_table"], b["res_lens"],
                                                         sel, sel, counts, impl.scale, out=output)
        else:
            def run(q, out, parity):
                self._offloaded_layer(layer, impl, q, kv_cache, out, parity)

            parity = self.device_cache.next_parity(layer)
            if self.graphs is not None:
                self.graphs.run(layer, run, query, output, parity)
            else:
                run(query, output, parity)
        if TIMER is not None and layer == len(self.layer_index) - 1:
            TIMER.step_done(self.fetch_stats)

    def _offloaded_layer(self, layer: int, impl, query, kv_cache, output, parity: int) -> None:
        """Score, select, fetch and attend one layer for the whole decode batch into ``output``;
        the selection goes into the device cache in place (this run writes ``parity``). Device
        work only, shapes from the plan: no host sync, so a CUDA graph can capture it."""
        tk = batched_ops(query.is_cuda)
        b = self.batched
        with phase("score"):
            mass = self.pool.scorer.score_batched(query, self.pool.summaries[layer], b["cold_slots"],
                                                  b["cold_lens"], impl.scale)
        with phase("select"):
            cfg = self.config
            if cfg.granularity == "token" and cfg.topp is None:
                idx, counts = tk.topk_select(mass, b["cold_lens"], b["k"], budgets=b["budgets"])
            else:
                idx, counts = select_cold_tokens_batched(mass, b["cold_lens"], b["k"], b["budgets"],
                                                         granularity=cfg.granularity, block_size=self.block_size,
                                                         topp=cfg.topp, min_tokens=cfg.topp_min_tokens)
        fetch = (self.pool.kv, layer, b["cold_slots"], idx, counts, b["cache_rows"], b["cache_fresh"])
        # misses: zero-copy reads of the pinned host pool over PCIe, into the cache
        if self.device_cache.shape.lru:  # into the least recently used slots; pos: each selected token's slot
            *state, pos, keys, values = self.device_cache.lru_layer(layer, idx.shape[0], idx.shape[2])
            with phase("fetch"):
                tk.gather_lru(*fetch, *state, pos, keys, values, self.fetch_counts, scales=self.pool.scales)
        else:  # into the slots of the tokens no longer selected; the selection fills slots [0, count)
            *state, keys, values = self.device_cache.layer(layer, parity)
            pos = None
            with phase("fetch"):
                tk.gather_inplace(*fetch, *state, keys, values, self.fetch_counts, scales=self.pool.scales)
        with phase("attend"):  # selections from an fp8 pool stay fp8 in the cache; the attention widens them
            tk.sparse_decode(query, impl.kv5(kv_cache), b["res_table"], b["res_lens"], keys, values, counts,
                             impl.scale, out=output, sel_rows=b["cache_rows"], sel_pos=pos)

    # ---- reference path: one request at a time, pure torch --------------------------------
    def _decode_rows(self, layer_name: str, impl, query: torch.Tensor, kv_cache: torch.Tensor,
                     rows: list[DecodeRow], output: torch.Tensor) -> None:
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
                                                block_size=self.block_size, topp=self.config.topp,
                                                min_tokens=self.config.topp_min_tokens)
                sk, sv = self.pool.gather(layer, row.cold_slots, idx)
                self.rows_gathered += int(valid.sum())
                sk, sv = sk.to(rk.device), sv.to(rk.device)
            output[r] = sparse_decode_attention(query[r], rk, rv, sk, sv, valid, impl.scale)


_RUNTIME: OffloadRuntime | None = None


def runtime_for_layer(config: KVOffloadConfig, block_size: int, name: str, layer: torch.nn.Module) -> OffloadRuntime:
    """The runtime that ``layer`` (an offloaded attention layer named ``name``) belongs to, with the
    layer added. One engine per process at a time: a layer of a new model under a name the current
    runtime knows means a new engine in this process (vLLM in-process, one after another); the old
    runtime holds the old engine's layers, caches and pool, so it is dropped and a fresh one begins."""
    global _RUNTIME
    if _RUNTIME is not None and _RUNTIME.layers.get(name, layer) is not layer:
        logger.info("kv_offload: a new engine in this process; the previous engine's offload state is released")
        _RUNTIME = None
    if _RUNTIME is None:
        _RUNTIME = OffloadRuntime(config, block_size)
    _RUNTIME.add_layer(name, layer)
    return _RUNTIME


def current_runtime() -> OffloadRuntime | None:
    return _RUNTIME
