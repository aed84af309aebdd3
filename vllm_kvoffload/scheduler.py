"""vLLM's scheduler plus the offload plan: it tells the offload managers which
request may offload this step, and hands their plan to the worker with the step.

Two classes, one per vLLM scheduler: ``OffloadScheduler`` (synchronous) and
``OffloadAsyncScheduler`` (async scheduling, vLLM's default on GPU: the next step is
scheduled while the last one runs, so the host's work overlaps the device's). The plan
is the same in both: blocks go cold only on a request's one-token decode steps, and
the worker executes a plan on its stream before that step's forward pass, after every
step scheduled earlier."""

from __future__ import annotations

from typing import Any

from vllm.v1.core.sched.async_scheduler import AsyncScheduler
from vllm.v1.core.sched.output import SchedulerOutput
from vllm.v1.core.sched.scheduler import Scheduler

from vllm_kvoffload.kv_spec import OffloadManager, OffloadPlan


class OffloadSchedulerMixin:
    """Put first in the bases of a vLLM scheduler class."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.offload_managers: list[OffloadManager] = [
            m for m in self.kv_cache_manager.coordinator.single_type_managers
            if isinstance(m, OffloadManager)
        ]
        self.peak_running = 0
        allocate = self.kv_cache_manager.allocate_slots

        def allocate_slots(request, num_new_tokens, *args, **kwargs):
            # Offload only on a one-token decode of the last known token: every
            # later step of this request is then a decode too, so no prefill
            # chunk (served by vLLM's dense kernels) ever needs a cold block.
            # (Async scheduling counts in-flight tokens as computed: still true.)
            decoding = num_new_tokens == 1 and request.num_computed_tokens + 1 >= request.num_tokens
            for m in self.offload_managers:
                m.decoding_request = request.request_id if decoding else None
            try:
                return allocate(request, num_new_tokens, *args, **kwargs)
            finally:
                for m in self.offload_managers:
                    m.decoding_request = None

        self.kv_cache_manager.allocate_slots = allocate_slots

    def schedule(self, *args, **kwargs) -> SchedulerOutput:
        output = super().schedule(*args, **kwargs)
        plan = OffloadPlan()
        for m in self.offload_managers:
            part = m.take_plan()
            plan.copies += part.copies
            plan.released += part.released
        output.kv_offload_plan = plan  # read by the worker runtime before the forward pass
        self.peak_running = max(self.peak_running, len(self.running))
        return output

    def kv_offload_stats(self) -> dict[str, Any]:
        """Block accounting for leak checks and the /kv_offload/stats endpoint."""
        pool = self.kv_cache_manager.block_pool
        m = self.offload_managers[0] if self.offload_managers else None
        per_request = {}
        for req_id in self.requests:
            per_request[req_id] = {
                "device_blocks": m.device_blocks_held(req_id) if m else None,
                "host_blocks": len(m.cold_slots.get(req_id, ())) if m else 0,
            }
        return {
            "device_blocks_total": pool.num_gpu_blocks - 1,  # minus vLLM's null block
            "device_blocks_free": pool.get_num_free_blocks(),
            "host_blocks_total": m.host.num_slots if m else 0,
            "host_blocks_free": m.host.num_free if m else 0,
            "host_blocks_offloaded_total": m.host.allocated_total if m else 0,
            "num_running": len(self.running),
            "num_waiting": len(self.waiting),
            "peak_running": self.peak_running,
            "requests": per_request,
        }


class OffloadScheduler(OffloadSchedulerMixin, Scheduler):
    pass


class OffloadAsyncScheduler(OffloadSchedulerMixin, AsyncScheduler):
    pass
