"""Block accounting of a running engine, and its decode reads (``decode``: cold tokens attended per
KV head and layer, and the share the device cache served): ``engine_stats(llm)`` in Python, or
``GET /kv_offload/stats`` on a server started with ``--kv-offload``."""

from __future__ import annotations

from typing import Any


def engine_stats(llm) -> dict[str, Any]:
    """Scheduler-side counts of device and host blocks for a ``vllm.LLM``, and the workers' decode counters."""
    client = llm.llm_engine.engine_core
    if hasattr(client, "call_utility"):  # engine core in its own process
        return client.call_utility("kv_offload_stats")
    return client.engine_core.kv_offload_stats()  # in-process engine core
