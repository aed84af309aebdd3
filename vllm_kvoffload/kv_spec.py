"""Scheduler side of the two tiers: which device blocks leave for the host pool.

``OffloadAttentionSpec`` marks attention layers served with offload. Its manager
is vLLM's full-attention manager plus one rule: once a request decodes, every
block outside [sink blocks] + [local window] moves to a host slot and its device
block returns to vLLM's free pool (replaced by the null block, as the sliding
window manager does). The copy itself is the worker's job: the manager records
``(request, logical block, device block, host slot)`` and the scheduler ships
the records with the step's output, so the worker copies before anything can
overwrite the freed device block.

Invariants:
  * a request's cold blocks are exactly logical blocks [sink, sink + len(slots)),
    offloaded in increasing order, so the cold tokens form one contiguous range;
  * a request holds at most sink + ceil(window / block_size) + 1 device blocks
    while decoding (plus the whole prompt during prefill);
  * host slots return to the allocator whenever vLLM frees the request
    (finished, aborted or preempted), and a plan never writes one slot twice.
"""

from __future__ import annotations

import dataclasses
from collections import deque
from dataclasses import dataclass, field

from vllm.v1.core.single_type_kv_cache_manager import FullAttentionManager
from vllm.v1.kv_cache_interface import FullAttentionSpec
from vllm.v1.kv_cache_spec_registry import KVCacheSpecRegistry

from vllm_kvoffload.logs import get_logger


logger = get_logger(__name__)


@dataclass(frozen=True, kw_only=True)
class OffloadAttentionSpec(FullAttentionSpec):
    sink_tokens: int
    window_tokens: int
    host_blocks: int

    @classmethod
    def merge(cls, specs: list["OffloadAttentionSpec"]) -> "OffloadAttentionSpec":
        base = FullAttentionSpec.merge(specs)  # type: ignore[arg-type]
        extra = {(s.sink_tokens, s.window_tokens, s.host_blocks) for s in specs}
        assert len(extra) == 1, f"offloaded layers disagree on their settings: {extra}"
        sink, window, host = extra.pop()
        base_fields = {f.name: getattr(base, f.name) for f in dataclasses.fields(base) if f.init}
        return cls(**base_fields, sink_tokens=sink, window_tokens=window, host_blocks=host)


@dataclass
class OffloadPlan:
    """What the worker must do before this step's forward pass."""

    # (request id, logical block index, device block id, host slot), in order.
    copies: list[tuple[str, int, int, int]] = field(default_factory=list)
    # Requests whose host slots were released (finished, aborted, preempted).
    released: list[str] = field(default_factory=list)


class HostSlotAllocator:
    """Free list of host-pool slots (one slot holds one block of every layer; HostPool stores them head-major)."""

    def __init__(self, num_slots: int):
        self.num_slots = num_slots
        self._free = deque(range(num_slots))
        self.allocated_total = 0  # slots handed out since start-up: blocks that went cold, a counter

    @property
    def num_free(self) -> int:
        return len(self._free)

    def allocate(self) -> int | None:
        if not self._free:
            return None
        self.allocated_total += 1
        return self._free.popleft()

    def free(self, slots: list[int]) -> None:
        self._free.extend(slots)


class OffloadManager(FullAttentionManager):
    def __init__(self, kv_cache_spec: OffloadAttentionSpec, **kwargs) -> None:
        super().__init__(kv_cache_spec, **kwargs)
        self.sink_blocks = -(-kv_cache_spec.sink_tokens // self.block_size)
        self.window_tokens = kv_cache_spec.window_tokens
        self.host = HostSlotAllocator(kv_cache_spec.host_blocks)
        self.cold_slots: dict[str, list[int]] = {}
        self.plan = OffloadPlan()
        # Set by the scheduler around allocate_slots: the request whose step is a
        # one-token decode of its last known token (so all its later steps are too).
        self.decoding_request: str | None = None
        self._warned_full = False

    def remove_skipped_blocks(self, request_id, processed_computed_tokens, num_prompt_tokens=None):
        if request_id != self.decoding_request:
            return
        blocks = self.req_to_blocks.get(request_id)
        if not blocks:
            return
        slots = self.cold_slots.setdefault(request_id, [])
        first = self.sink_blocks + len(slots)
        last = min((processed_computed_tokens - self.window_tokens) // self.block_size, len(blocks))
        freed = []
        for i in range(first, last):
            slot = self.host.allocate()
            if slot is None:  # host pool full: the block simply stays on the device
                if not self._warned_full:
                    logger.warning("kv_offload: host pool full (%d blocks); blocks stay on "
                                   "the device until requests finish", self.host.num_slots)
                    self._warned_full = True
                break
            self.plan.copies.append((request_id, i, blocks[i].block_id, slot))
            slots.append(slot)
            freed.append(blocks[i])
            blocks[i] = self._null_block
        if freed:
            self.block_pool.free_blocks(freed)

    def free(self, request_id: str) -> None:
        super().free(request_id)
        slots = self.cold_slots.pop(request_id, None)
        if slots is not None:
            # A copy recorded this step for a request freed in the same step (preempted
            # right after its decode was scheduled) must not run: its slot may go to
            # another request's copy in the very same plan.
            self.plan.copies = [c for c in self.plan.copies if c[0] != request_id]
            self.host.free(slots)
            self.plan.released.append(request_id)

    def take_plan(self) -> OffloadPlan:
        plan, self.plan = self.plan, OffloadPlan()
        return plan

    def device_blocks_held(self, request_id: str) -> int:
        return sum(not b.is_null for b in self.req_to_blocks.get(request_id, ()))


def register_spec() -> None:
    KVCacheSpecRegistry.register(OffloadAttentionSpec, OffloadManager, uniform_type_base_spec=FullAttentionSpec)
