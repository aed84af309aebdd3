"""CUDA graphs of the offloaded decode: one replay per layer instead of about seven launches.

vLLM's piecewise CUDA graphs leave attention eager, and the offloaded decode of a layer
(score, select, fetch, attend) costs about seven Triton launches of host time, which bounded
the step on the H100 (docs/performance.md, session 16). Here each layer's decode is
captured once per step shape and replayed.

A step shape (``key``) is everything a capture bakes in: the batch size, the padded plan
arrays' shapes and device address, the selection width ``k``, and whether the device cache
is read. ``plan_batched`` pads the plan to buckets so that a steady batch keeps one shape
for hundreds of steps. Policy: the first step of a new shape runs eagerly; when the next
step has the same shape it runs eagerly into static buffers and captures; later steps of
that shape replay. Any other shape drops the graphs (one shape is kept at a time). A shape
whose static buffers do not fit, or whose capture fails (logged), stays eager.

The device cache is double-buffered: the graph of parity p reads the cache entry that the
graph of parity 1 - p wrote on the step before, and writes its own. Invariant: at the start
of a replayed step, ``runtime.cached[layer]`` is the other parity's buffers.
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from vllm_kvoffload.logs import get_logger

logger = get_logger(__name__)

# Room left on the device after the static buffers, below which no graphs are captured.
FREE_MARGIN_BYTES = 1 << 30

# (query, output, prev cache entry or None, outputs to write) -> the layer's new cache entry
LayerFn = Callable[[torch.Tensor, torch.Tensor, tuple | None, tuple], tuple]


class DecodeGraphs:
    """The graphs of one step shape: per (layer, parity) a CUDA graph, static buffers for the
    query, the output and each parity's cache entry (idx, counts, keys, values)."""

    def __init__(self, key: tuple, device: torch.device, entry_shapes: tuple, value_dtype: torch.dtype,
                 num_layers: int, parities: int):
        self.key = key
        self.parities = parities  # 2 with the device cache (double-buffered), else 1
        self.parity = 0  # the parity of this step
        self.query: torch.Tensor | None = None  # static query and output, like the first query seen
        self.output: torch.Tensor | None = None
        self.failed: str | None = None  # why a capture failed: the shape then runs eagerly

        specs = self.entry_specs(entry_shapes, value_dtype)
        self.entries = [[tuple(torch.empty(shape, dtype=dtype, device=device) for shape, dtype in specs)
                         for _ in range(parities)] for _ in range(num_layers)]
        self.graphs: dict[tuple[int, int], torch.cuda.CUDAGraph] = {}
        self.mempool = torch.cuda.graph_pool_handle()  # the graphs' intermediates, shared
        self.stream = torch.cuda.Stream(device)

    @staticmethod
    def entry_specs(entry_shapes: tuple, value_dtype: torch.dtype) -> list[tuple[tuple, torch.dtype]]:
        """(shape, dtype) of a cache entry's idx, counts, keys and values."""
        B, Hkv, k, D = entry_shapes
        return [((B, Hkv, k), torch.int32), ((B, Hkv), torch.int32),
                ((B, Hkv, k, D), value_dtype), ((B, Hkv, k, D), value_dtype)]

    @staticmethod
    def static_bytes(entry_shapes: tuple, value_dtype: torch.dtype, num_layers: int, parities: int) -> int:
        specs = DecodeGraphs.entry_specs(entry_shapes, value_dtype)
        return num_layers * parities * sum(math.prod(shape) * dtype.itemsize for shape, dtype in specs)

    def next_step(self) -> None:
        self.parity = (self.parity + 1) % self.parities

    def run(self, layer: int, fn: LayerFn, query: torch.Tensor, output: torch.Tensor, prev: tuple | None) -> tuple:
        """The layer's decode for this step; returns its new cache entry (static buffers).
        ``prev``: the layer's cache entry from the last step (None without the device cache)."""
        p = self.parity
        if self.failed:  # the rest of a step whose capture failed
            return fn(query, output, prev, None)
        if (prev is None) != (self.parities == 1):
            # The graphs read the device cache iff they are double-buffered. The runtime writes every
            # layer's entry each step, so this does not happen; if it did, the layer runs eagerly.
            logger.warning("kv_offload: layer %d runs eagerly this step: its device-cache entry %s, but "
                           "its decode graphs %s one", layer, "is missing" if prev is None else "exists",
                           "read" if self.parities == 2 else "do not read")
            return fn(query, output, prev, None)
        graph = self.graphs.get((layer, p))
        if graph is None:  # the capture step: run eagerly into the static buffers, then capture
            if self.query is None:
                self.query, self.output = torch.empty_like(query), torch.empty_like(output)
            fn(query, output, prev, self.entries[layer][p])  # also compiles whatever the capture launches
            try:
                for q in range(self.parities):
                    self.graphs[(layer, q)] = self._capture(layer, q, fn)
            except Exception as err:  # e.g. a host sync in a scorer's path: not capturable (the eager run passed)
                first_line = str(err).partition("\n")[0]
                self.failed = f"{type(err).__name__}: {first_line}"
                logger.warning("kv_offload: offloaded decode stays eager for this step shape: capturing "
                               "its CUDA graph failed (%s)", self.failed)
            return self.entries[layer][p]  # this step's output and entry are complete either way
        self.query.copy_(query)
        graph.replay()
        output.copy_(self.output)
        return self.entries[layer][p]

    def _capture(self, layer: int, parity: int, fn: LayerFn) -> torch.cuda.CUDAGraph:
        prev = self.entries[layer][1 - parity] if self.parities == 2 else None
        graph = torch.cuda.CUDAGraph()
        self.stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(self.stream):
            # thread_local: vLLM's other threads may use CUDA meanwhile (they are not captured)
            graph.capture_begin(pool=self.mempool, capture_error_mode="thread_local")
            try:
                fn(self.query, self.output, prev, self.entries[layer][parity])
            finally:
                graph.capture_end()
        torch.cuda.current_stream().wait_stream(self.stream)
        return graph


class GraphPolicy:
    """When to capture: a shape seen on two steps in a row gets graphs; one shape at a time."""

    def __init__(self):
        self.current: DecodeGraphs | None = None
        self.last_key: tuple | None = None
        self.refused: tuple | None = None  # the last shape refused (memory, or a failed capture)

    def for_step(self, key: tuple | None, make: Callable[[tuple], DecodeGraphs | None]) -> DecodeGraphs | None:
        """The graphs of this step (``key`` None: none), made by ``make(key)`` on a shape's second step."""
        last, self.last_key = self.last_key, key
        if key is None:
            self.current = None
            return None
        if self.current is not None and self.current.failed:
            self.refused, self.current = self.current.key, None  # a failed capture is not retried
        if self.current is not None and self.current.key == key:
            self.current.next_step()
            return self.current
        self.current = None  # a new shape: the old graphs go (their buffers live on in the cache)
        if key == last and key != self.refused:
            self.current = make(key)
            if self.current is None:
                self.refused = key
        return self.current
