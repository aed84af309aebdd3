"""The device cache of the batched decode, kept in place (``ops/gather_inplace_ref.py``).

Each running request owns a row of the cache (stable across vLLM's batch reorders) holding, per
offloaded layer and KV head, its last selection's keys and values in slots [0, count): tokens
selected again stay where they are, only the others are read from the host pool, into the slots
of the tokens no longer selected. The attention reads the row in place. Before session 24 the
cache was a buffer per step that every re-selected token was copied into (2.0 ms of a 19 ms
step at 128K on the H100, docs/performance.md).

Per layer: keys and values [R, Hkv, KC, D] in the pool's dtype, and two parities of the
selection arrays (idx, pos [R, Hkv, KC], counts [R, Hkv]): each run of a layer reads the parity
its last run wrote and writes the other (the layer's own parity flips per run, so it holds however
often the plan runs), and one CUDA graph per (layer, parity) replays any step.
Invariants: a row's arrays describe its cached tokens only if the row is not fresh this step;
a request's row never changes while it runs, except that a new allocation (more rows or a
wider selection) makes every row fresh.

The cache grows with the batch and never shrinks. A batch whose cache would pass ``limit_bytes``
(``device_cache_gb``), or that the device cannot allocate, gets no cache (``plan`` returns None):
its steps decode on the per-request path, which needs no cache, until a batch fits again. So an
overloaded server slows down instead of failing a forward pass out of memory.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from vllm_kvoffload.logs import get_logger

logger = get_logger(__name__)

ROW_STEP = 8  # the cache's rows grow in steps of this many requests


@dataclass(frozen=True)
class CacheShape:
    rows: int
    kv_heads: int
    width: int  # KC: the widest selection it holds
    head_size: int
    dtype: torch.dtype
    num_layers: int


class DeviceCache:
    def __init__(self, limit_bytes: int | None = None):
        self.limit_bytes = limit_bytes  # None: no limit but the device's memory
        self.refused: CacheShape | None = None  # the last shape that did not fit; no larger one is tried
        self.shape: CacheShape | None = None
        self.values: list[tuple[torch.Tensor, torch.Tensor]] = []  # per layer: keys, values
        self.arrays: list[list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]] = []  # [layer][parity]: idx, pos, counts
        self.row_of: dict[str, int] = {}  # request -> its row
        self.parities: list[int] = []  # per layer: the parity its last run wrote

    @staticmethod
    def bytes_for(shape: CacheShape) -> int:
        values = 2 * shape.rows * shape.kv_heads * shape.width * shape.head_size * shape.dtype.itemsize
        arrays = 2 * (2 * shape.rows * shape.kv_heads * shape.width + shape.rows * shape.kv_heads) * 4
        return shape.num_layers * (values + arrays)

    def key(self) -> tuple:
        """What decode graphs capture of the cache: its buffers' identity."""
        return (self.shape, self.values[0][0].data_ptr()) if self.values else (None,)

    def release(self, req_ids) -> None:
        """Free the rows of requests that ended (finished, aborted, preempted)."""
        for rid in req_ids:
            self.row_of.pop(rid, None)

    def plan(self, req_ids: list[str], kv_heads: int, width: int, head_size: int, dtype: torch.dtype,
             num_layers: int, device: torch.device, reuse: bool) -> tuple[np.ndarray, np.ndarray] | None:
        """This step's (row of each request, fresh flag of each) as int32 arrays, or None where the
        cache this batch needs does not fit (see the module's docstring). ``reuse`` False (the
        cache is off): every row is fresh, so every selected token is read from the pool."""
        if not reuse:
            self.row_of.clear()
        fresh = np.array([rid not in self.row_of for rid in req_ids], dtype=np.int32)
        taken = set(self.row_of.values())
        free = (r for r in range(len(taken) + len(req_ids)) if r not in taken)
        for rid, new in zip(req_ids, fresh):
            if new:
                self.row_of[rid] = next(free)
        rows = np.array([self.row_of[rid] for rid in req_ids], dtype=np.int32)
        need = CacheShape(int(rows.max()) + 1, kv_heads, width, head_size, dtype, num_layers)
        have = self.shape
        if (have is None or need.rows > have.rows or need.width > have.width
                or (have.kv_heads, have.head_size, have.dtype, have.num_layers) != (kv_heads, head_size, dtype, num_layers)):
            # rows in multiples of ROW_STEP (a batch ramping up re-allocates every ROW_STEP requests)
            rows_ = max(-(-need.rows // ROW_STEP) * ROW_STEP, have.rows if have else 0)
            grown = CacheShape(rows_, kv_heads, max(width, have.width if have else 0), head_size, dtype, num_layers)
            if not (self._allocate(grown, device) or self._allocate(need, device)):
                return None
            fresh[:] = 1
        return rows, fresh

    def _allocate(self, shape: CacheShape, device: torch.device) -> bool:
        """Replace the buffers with ones of ``shape``; False (and no buffers) where it does not fit."""
        self.values, self.arrays, self.shape = [], [], None  # the old buffers go first
        nbytes = self.bytes_for(shape)
        refused = self.refused
        if refused is not None and shape.rows >= refused.rows and shape.width >= refused.width:
            return False  # larger than one that already did not fit: not tried again
        if self.limit_bytes is not None and nbytes > self.limit_bytes:
            return self._refuse(shape, f"over device_cache_gb={self.limit_bytes / 2**30:g}")
        R, H, W, D = shape.rows, shape.kv_heads, shape.width, shape.head_size
        try:
            for _ in range(shape.num_layers):
                # zeros: slots past a count are never read by the kernels, but the torch reference multiplies them by 0
                self.values.append(tuple(torch.zeros(R, H, W, D, dtype=shape.dtype, device=device) for _ in range(2)))
                self.arrays.append([(torch.zeros(R, H, W, dtype=torch.int32, device=device),
                                     torch.zeros(R, H, W, dtype=torch.int32, device=device),
                                     torch.zeros(R, H, dtype=torch.int32, device=device)) for _ in range(2)])
        except (torch.OutOfMemoryError, MemoryError) as err:
            self.values, self.arrays = [], []
            return self._refuse(shape, f"the device could not allocate it: {str(err).splitlines()[0]}")
        logger.info("kv_offload: device cache of %d rows x %d tokens (%.2f GiB)", R, W, nbytes / 2**30)
        self.parities = [0] * shape.num_layers
        self.shape = shape
        self.refused = None
        return True

    def _refuse(self, shape: CacheShape, reason: str) -> bool:
        if shape != self.refused:
            logger.warning("kv_offload: a device cache of %d rows x %d tokens (%.2f GiB) does not fit (%s); "
                           "until the batch fits, its decode steps run on the per-request path (slower, the "
                           "same outputs)", shape.rows, shape.width, self.bytes_for(shape) / 2**30, reason)
        self.refused = shape
        return False

    def next_parity(self, layer: int) -> int:
        """The parity this run of ``layer`` writes (the other one than its last run's)."""
        self.parities[layer] ^= 1
        return self.parities[layer]

    def layer(self, layer: int, parity: int) -> tuple[torch.Tensor, ...]:
        """(prev idx, prev pos, prev counts, new idx, new pos, new counts, keys, values) of a layer,
        for the run that writes ``parity``: gather_inplace's arguments after rows and fresh."""
        prev, new = self.arrays[layer][1 - parity], self.arrays[layer][parity]
        return (*prev, *new, *self.values[layer])
