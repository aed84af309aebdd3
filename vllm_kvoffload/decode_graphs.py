"""CUDA graphs of the offloaded decode: one replay per layer instead of about seven launches.

vLLM's piecewise CUDA graphs leave attention eager, and the offloaded decode of a layer
(score, select, fetch, attend) costs about seven Triton launches of host time, which bounded
the step on the H100 (docs/performance.md, session 16). Here each layer's decode is
captured once per step shape and replayed.

A step shape (``key``) is everything a capture bakes in: the batch size, the padded plan
arrays' shapes and device address, the selection width ``k``, and the device cache's buffers.
``plan_batched`` pads the plan to buckets so that a steady batch keeps one shape
for hundreds of steps. Policy: the first step of a new shape runs eagerly; when the next
step has the same shape it runs eagerly and captures; later steps of
that shape replay. Any other shape drops the graphs (one shape is kept at a time). A shape
whose capture fails (logged) stays eager.

The device cache (``device_cache.py``) alternates two parities of its selection arrays: a
layer's run that writes parity p reads 1 - p. So each layer has two graphs, one per parity, and
the runtime says which one a run replays.
"""

from __future__ import annotations

from typing import Callable

import torch

from vllm_kvoffload.logs import get_logger

logger = get_logger(__name__)

# (query, output, parity) -> None: a layer's offloaded decode for the step writing that parity
LayerFn = Callable[[torch.Tensor, torch.Tensor, int], None]


class DecodeGraphs:
    """The graphs of one step shape: per (layer, parity) a CUDA graph, and static buffers for
    the query and the output."""

    def __init__(self, key: tuple, device: torch.device):
        self.key = key
        self.query: torch.Tensor | None = None  # static query and output, like the first query seen
        self.output: torch.Tensor | None = None
        self.failed: str | None = None  # why a capture failed: the shape then runs eagerly
        self.graphs: dict[tuple[int, int], torch.cuda.CUDAGraph] = {}
        self.mempool = torch.cuda.graph_pool_handle()  # the graphs' intermediates, shared
        self.stream = torch.cuda.Stream(device)

    def run(self, layer: int, fn: LayerFn, query: torch.Tensor, output: torch.Tensor, parity: int) -> None:
        """The layer's decode for this step (which writes the cache's ``parity``) into ``output``."""
        if self.failed:  # the rest of a step whose capture failed
            fn(query, output, parity)
            return
        graph = self.graphs.get((layer, parity))
        if graph is None:  # the capture step: run eagerly, then capture both parities
            if self.query is None:
                self.query, self.output = torch.empty_like(query), torch.empty_like(output)
            fn(query, output, parity)  # also compiles whatever the capture launches
            try:
                for p in range(2):
                    self.graphs[(layer, p)] = self._capture(fn, p)
            except Exception as err:  # e.g. a host sync in a scorer's path: not capturable (the eager run passed)
                first_line = str(err).partition("\n")[0]
                self.failed = f"{type(err).__name__}: {first_line}"
                logger.warning("kv_offload: offloaded decode stays eager for this step shape: capturing "
                               "its CUDA graph failed (%s)", self.failed)
            return  # this step's output and cache are complete either way
        self.query.copy_(query)
        graph.replay()
        output.copy_(self.output)

    def _capture(self, fn: LayerFn, parity: int) -> torch.cuda.CUDAGraph:
        graph = torch.cuda.CUDAGraph()
        self.stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(self.stream):
            # thread_local: vLLM's other threads may use CUDA meanwhile (they are not captured)
            graph.capture_begin(pool=self.mempool, capture_error_mode="thread_local")
            try:
                fn(self.query, self.output, parity)
            finally:
                graph.capture_end()
        torch.cuda.current_stream().wait_stream(self.stream)
        return graph


class GraphPolicy:
    """When to capture: a shape seen on two steps in a row gets graphs; one shape at a time."""

    def __init__(self):
        self.current: DecodeGraphs | None = None
        self.last_key: tuple | None = None
        self.failed_key: tuple | None = None  # the last shape whose capture failed: not captured again

    def for_step(self, key: tuple | None, make: Callable[[tuple], DecodeGraphs]) -> DecodeGraphs | None:
        """The graphs of this step (``key`` None: none), made by ``make(key)`` on a shape's second step."""
        last, self.last_key = self.last_key, key
        if key is None:
            self.current = None
            return None
        if self.current is not None and self.current.failed:
            self.failed_key, self.current = self.current.key, None  # a failed capture is not retried
        if self.current is not None and self.current.key == key:
            return self.current
        self.current = None  # a new shape: the old graphs go
        if key == last and key != self.failed_key:
            self.current = make(key)
        return self.current
