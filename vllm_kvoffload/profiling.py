"""Opt-in timing of the decode path: set VLLM_KVOFFLOAD_PROFILE=/path/profile.json.

The worker brackets each phase (score, select, fetch, attend) with CUDA events and
every 64 steps writes cumulative milliseconds, call counts and the runtime's fetch
counters (tokens gathered, device-cache hits) to that file. Off (the default), ``phase`` costs one dict lookup."""

import json
import os
from contextlib import contextmanager

import torch

PATH = os.environ.get("VLLM_KVOFFLOAD_PROFILE")


class PhaseTimer:
    def __init__(self, path: str):
        self.path = path
        self.pending: list[tuple[str, torch.cuda.Event, torch.cuda.Event]] = []
        self.ms: dict[str, float] = {}
        self.calls: dict[str, int] = {}
        self.steps = 0

    @contextmanager
    def phase(self, name: str):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        yield
        end.record()
        self.pending.append((name, start, end))

    def step_done(self, fetch_stats) -> None:
        """fetch_stats: a callable returning the runtime's counters (syncs; called rarely)."""
        self.steps += 1
        if self.steps % 64:
            return
        torch.cuda.synchronize()
        for name, start, end in self.pending:
            self.ms[name] = self.ms.get(name, 0.0) + start.elapsed_time(end)
            self.calls[name] = self.calls.get(name, 0) + 1
        self.pending.clear()
        with open(self.path, "w") as f:
            json.dump({"steps": self.steps, "ms": self.ms, "calls": self.calls, "fetch": fetch_stats()}, f)


TIMER = PhaseTimer(PATH) if PATH and torch.cuda.is_available() else None


@contextmanager
def phase(name: str):
    if TIMER is None:
        yield
    else:
        with TIMER.phase(name):
            yield
