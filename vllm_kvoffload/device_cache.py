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

With ``factor`` above 1 (``device_cache_factor``) each (row, layer, KV head) holds ``factor`` times the
selection's width, least recently used out first (``ops/gather_lru_ref.py``): a token that leaves
the selection for a few steps and comes back is still on the device. Its arrays per layer are the
slots' tokens and last uses, each token's slot (``tokens`` entries: any cold length) and a step
clock; one ``pos`` buffer shared by the layers gives the attention each selected token's slot. The
parities above are for the in-place kernel only (factor 1, and the scratch, which is always factor 1).

The cache grows with the batch and never shrinks. A batch whose cache would pass ``limit_bytes``
(``device_cache_gb``), or that the device cannot allocate, gets a scratch instead: one layer's
buffers, as many rows as the batch, shared by every layer (the layers run one after another on one
stream) and filled afresh by each (every row fresh: nothing is reused across steps, every selected
token is read from the pool, as with the cache off). Where even that does not fit, ``plan`` returns
None and the step decodes on the per-request path, which needs no buffers. Either way the cache
comes back once a batch fits, so an overloaded server slows down instead of failing a forward pass
out of memory.
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
    shared: bool = False  # the scratch: one set of buffers for every layer
    factor: int = 1  # slots per (row, layer, KV head) in units of width; above 1: the LRU cache
    tokens: int = 0  # LRU: entries of the token -> slot map (at least any cold length)

    @property
    def buffer_sets(self) -> int:
        return 1 if self.shared else self.num_layers

    @property
    def lru(self) -> bool:
        return self.factor > 1

    @property
    def slots(self) -> int:
        return self.factor * self.width


class DeviceCache:
    def __init__(self, limit_bytes: int | None = None):
        self.limit_bytes = limit_bytes  # None: no limit but the device's memory
        # the bytes of the smallest cache that did not fit: none as large is tried again until a cache fits
        self.refused_bytes: int | None = None
        self.shape: CacheShape | None = None
        self.values: list[tuple[torch.Tensor, torch.Tensor]] = []  # per layer: keys, values
        self.arrays: list[list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]] = []  # [layer][parity]: idx, pos, counts
        self.lru_arrays: list[tuple[torch.Tensor, ...]] = []  # LRU, per layer: slot_of, token_at, used_at, clock
        self.pos: torch.Tensor | None = None  # LRU: each selected token's slot, [rows * kv_heads * width] int32
        self.row_of: dict[str, int] = {}  # request -> its row
        self.parities: list[int] = []  # per layer: the parity its last run wrote

    @staticmethod
    def bytes_for(shape: CacheShape) -> int:
        rh = shape.rows * shape.kv_heads
        values = 2 * rh * shape.slots * shape.head_size * shape.dtype.itemsize
        if shape.lru:  # token_at, used_at, slot_of, clock per layer; pos once
            arrays = (2 * rh * shape.slots + rh * shape.tokens + rh) * 4
            return shape.buffer_sets * (values + arrays) + rh * shape.width * 4
        arrays = 2 * (2 * rh * shape.width + rh) * 4
        return shape.buffer_sets * (values + arrays)

    def key(self) -> tuple:
        """What decode graphs capture of the cache: its buffers' identity."""
        return (self.shape, self.values[0][0].data_ptr()) if self.values else (None,)

    def release(self, req_ids) -> None:
        """Free the rows of requests that ended (finished, aborted, preempted)."""
        for rid in req_ids:
            self.row_of.pop(rid, None)

    def plan(self, req_ids: list[str], kv_heads: int, width: int, head_size: int, dtype: torch.dtype,
             num_layers: int, device: torch.device, reuse: bool, factor: int = 1,
             tokens: int = 0) -> tuple[np.ndarray, np.ndarray] | None:
        """This step's (row of each request, fresh flag of each) as int32 arrays: rows of the cache, or
        of the scratch (all fresh) where the batch's cache does not fit, or None where neither fits
        (see the module's docstring). ``reuse`` False (the cache is off): every row is fresh, so every
        selected token is read from the pool."""
        if not reuse:
            self.row_of.clear()
        fresh = np.array([rid not in self.row_of for rid in req_ids], dtype=np.int32)
        taken = set(self.row_of.values())
        free = (r for r in range(len(taken) + len(req_ids)) if r not in taken)
        for rid, new in zip(req_ids, fresh):
            if new:
                self.row_of[rid] = next(free)
        rows = np.array([self.row_of[rid] for rid in req_ids], dtype=np.int32)
        lru = dict(factor=factor, tokens=tokens) if factor > 1 else {}
        need = CacheShape(int(rows.max()) + 1, kv_heads, width, head_size, dtype, num_layers, **lru)
        if self._holds(need):
            return rows, fresh
        have = self.shape if self.shape is not None and not self.shape.shared else None
        # rows in multiples of ROW_STEP (a batch ramping up re-allocates every ROW_STEP requests)
        rows_ = max(-(-need.rows // ROW_STEP) * ROW_STEP, have.rows if have else 0)
        if lru:
            lru["tokens"] = max(tokens, have.tokens if have else 0)
        grown = CacheShape(rows_, kv_heads, max(width, have.width if have else 0), head_size, dtype, num_layers, **lru)
        if self._allocate(grown, device) or self._allocate(need, device):
            return rows, np.ones_like(fresh)
        # no cache for this batch (its rows stay assigned): the scratch, row b for request b, all fresh
        scratch = CacheShape(len(req_ids), kv_heads, width, head_size, dtype, num_layers, shared=True)
        if self._holds(scratch) or self._allocate(scratch, device):
            return np.arange(len(req_ids), dtype=np.int32), np.ones_like(fresh)
        return None

    def _holds(self, need: CacheShape) -> bool:
        """Whether the buffers serve ``need``: the same kind and geometry, rows and width enough."""
        have = self.shape
        return (have is not None and need.rows <= have.rows and need.width <= have.width
                and need.tokens <= have.tokens
                and (have.kv_heads, have.head_size, have.dtype, have.num_layers, have.shared, have.factor)
                == (need.kv_heads, need.head_size, need.dtype, need.num_layers, need.shared, need.factor))

    def _allocate(self, shape: CacheShape, device: torch.device) -> bool:
        """Replace the buffers with ones of ``shape``; False where it does not fit (then the old buffers
        stay, unless the device refused it: they were freed to make room)."""
        nbytes = self.bytes_for(shape)
        if self.refused_bytes is not None and nbytes >= self.refused_bytes:
            return False  # as large as one that already did not fit: not tried again
        if self.limit_bytes is not None and nbytes > self.limit_bytes:
            return self._refuse(shape, f"over device_cache_gb={self.limit_bytes / 2**30:g}")
        # the old buffers go first
        self.values, self.arrays, self.lru_arrays, self.pos, self.shape = [], [], [], None, None
        R, H, W, D = shape.rows, shape.kv_heads, shape.width, shape.head_size
        i32 = dict(dtype=torch.int32, device=device)
        try:
            for _ in range(shape.buffer_sets):
                # zeros: slots past a count are never read by the kernels, but the torch reference multiplies them by 0
                self.values.append(tuple(torch.zeros(R, H, shape.slots, D, dtype=shape.dtype, device=device)
                                         for _ in range(2)))
                if shape.lru:  # every row starts fresh, and the LRU kernel empties a fresh row's slots itself
                    self.lru_arrays.append((torch.zeros(R, H, shape.tokens, **i32),
                                            torch.full((R, H, shape.slots), -1, **i32),
                                            torch.zeros(R, H, shape.slots, **i32), torch.zeros(R, H, **i32)))
                else:
                    self.arrays.append([(torch.zeros(R, H, W, **i32), torch.zeros(R, H, W, **i32),
                                         torch.zeros(R, H, **i32)) for _ in range(2)])
            if shape.lru:
                self.pos = torch.zeros(R * H * W, **i32)
        except (torch.OutOfMemoryError, MemoryError) as err:
            self.values, self.arrays, self.lru_arrays, self.pos = [], [], [], None
            return self._refuse(shape, f"the device could not allocate it: {str(err).splitlines()[0]}")
        if shape.shared:
            logger.warning("kv_offload: decoding without the device cache, in a scratch of %d rows x %d tokens "
                           "(%.2f GiB): every selected token is read from the host pool until the batch's cache "
                           "fits", R, W, nbytes / 2**30)
        else:
            logger.info("kv_offload: device cache of %d rows x %d tokens (%.2f GiB)", R, shape.slots, nbytes / 2**30)
            self.refused_bytes = None
        self.parities = [0] * shape.num_layers
        self.shape = shape
        return True

    def _refuse(self, shape: CacheShape, reason: str) -> bool:
        nbytes = self.bytes_for(shape)
        what = "scratch" if shape.shared else "device cache"
        logger.warning("kv_offload: a %s of %d rows x %d tokens (%.2f GiB) does not fit (%s)%s", what, shape.rows,
                       shape.width, nbytes / 2**30, reason,
                       "; its decode steps run on the per-request path (slower, the same outputs)" if shape.shared
                       else "")
        self.refused_bytes = nbytes if self.refused_bytes is None else min(self.refused_bytes, nbytes)
        return False

    def next_parity(self, layer: int) -> int:
        """The parity this run of ``layer`` writes (the other one than its last run's)."""
        self.parities[layer] ^= 1
        return self.parities[layer]

    def lru_layer(self, layer: int, batch: int, width: int) -> tuple[torch.Tensor, ...]:
        """(slot_of, token_at, used_at, clock, pos [batch, kv_heads, width], keys, values) of a layer of the
        LRU cache: gather_lru's arguments after rows and fresh, then the attention's slots."""
        pos = self.pos[: batch * self.shape.kv_heads * width].view(batch, self.shape.kv_heads, width)
        return (*self.lru_arrays[layer], pos, *self.values[layer])

    def layer(self, layer: int, parity: int) -> tuple[torch.Tensor, ...]:
        """(prev idx, prev pos, prev counts, new idx, new pos, new counts, keys, values) of a layer,
        for the run that writes ``parity``: gather_inplace's arguments after rows and fresh."""
        i = 0 if self.shape.shared else layer
        prev, new = self.arrays[i][1 - parity], self.arrays[i][parity]
        return (*prev, *new, *self.values[i])
