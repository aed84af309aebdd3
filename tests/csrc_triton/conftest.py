"""Kernel tests run on CUDA, or on CPU tensors under TRITON_INTERPRET=1 (slow:
keep CPU sizes tiny); otherwise every test here is skipped."""

import os

import pytest
import torch

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"
CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"


def pytest_collection_modifyitems(config, items):
    here = os.path.dirname(__file__)
    skip = pytest.mark.skip(reason="needs CUDA, or TRITON_INTERPRET=1 to run the kernels on CPU")
    for item in items:
        if str(item.fspath).startswith(here) and not (CUDA or INTERPRET):
            item.add_marker(skip)


@pytest.fixture
def device():
    return torch.device(DEVICE)


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    out, ref = out.float(), ref.float()
    return ((out - ref).norm() / ref.norm().clamp_min(1e-12)).item()


def random_cold_slots(cold: list[int], slots_total: int, g: torch.Generator) -> torch.Tensor:
    """[B, max(cold)] int32: each row's cold blocks on distinct random slots (zero padding)."""
    perm = torch.randperm(slots_total, generator=g)
    cold_slots = torch.zeros(len(cold), max(max(cold), 1), dtype=torch.int32)
    start = 0
    for b, n in enumerate(cold):
        cold_slots[b, :n] = perm[start:start + n].int()
        start += n
    return cold_slots
