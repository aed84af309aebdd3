"""The host pool's memory: 4 KiB pinned pages or 2 MiB huge pages (host_memory.py)."""

import gc
from pathlib import Path

import pytest
import torch

from vllm_kvoffload.host_memory import HUGE_PAGE, host_empty, huge_page_bytes
from vllm_kvoffload.host_pool import HostPool
from vllm_kvoffload.scorers import KVGeometry, create_scorer

THP = Path("/sys/kernel/mm/transparent_hugepage/enabled")


def mapped(addr: int) -> bool:
    for line in open("/proc/self/maps"):
        lo, hi = (int(x, 16) for x in line.split()[0].split("-"))
        if lo <= addr < hi:
            return True
    return False


def test_huge_page_tensor_is_aligned_usable_and_unmapped_with_its_last_view():
    t = host_empty((3, 2**20 + 5), torch.bfloat16, pin=False, memory="hugepages")
    assert t.shape == (3, 2**20 + 5) and t.dtype == torch.bfloat16 and t.is_contiguous()
    addr = t.data_ptr()
    assert addr % HUGE_PAGE == 0
    t.copy_(torch.arange(t.numel(), dtype=torch.float32).view(t.shape).to(torch.bfloat16))
    view = t[2, -3:]
    expect = view.clone()
    del t
    gc.collect()
    assert mapped(addr) and torch.equal(view, expect)  # the view keeps the mapping alive
    del view
    gc.collect()
    assert not mapped(addr)  # and the last one gives it back


@pytest.mark.skipif(not THP.exists() or "[never]" in THP.read_text(), reason="no transparent huge pages here")
def test_touched_memory_lies_in_huge_pages():
    t = host_empty((16 * 2**20,), torch.uint8, pin=False, memory="hugepages")
    t.fill_(1)
    assert huge_page_bytes(t) >= HUGE_PAGE  # at least one; the kernel falls back to 4 KiB pages where it is short


def test_pinned_memory_is_torchs_allocation():
    t = host_empty((4, 5), torch.float16, pin=False, memory="pinned")
    assert t.shape == (4, 5) and t.dtype == torch.float16


def test_unknown_memory_is_refused_by_name():
    with pytest.raises(ValueError, match="'huge' is not one of: pinned, hugepages"):
        host_empty((4,), torch.float32, pin=False, memory="huge")


def test_host_pool_in_huge_pages_stores_and_reads_back_bit_exact():
    g = KVGeometry(num_kv_heads=2, num_q_heads=4, head_dim=8, block_size=16, dtype=torch.bfloat16)
    pool = HostPool(10, 3, 2, 16, 8, torch.bfloat16, create_scorer("oracle", g), torch.device("cpu"),
                    memory="hugepages")
    assert pool.kv.data_ptr() % HUGE_PAGE == 0
    keys, values = torch.randn(4, 2, 16, 8).bfloat16(), torch.randn(4, 2, 16, 8).bfloat16()
    slots = torch.tensor([7, 2, 5, 0])
    pool.store(1, slots, keys, values)
    k, v = pool.read_blocks(1, slots)
    assert torch.equal(k, keys) and torch.equal(v, values)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_registered_huge_pages_are_pinned_and_read_by_the_device():
    t = host_empty((2**22,), torch.int32, pin=True, memory="hugepages")
    assert t.is_pinned()
    t.copy_(torch.arange(t.numel(), dtype=torch.int32))
    d = t.to("cuda", non_blocking=True)
    torch.cuda.synchronize()
    assert torch.equal(d.cpu(), t)
    # kernels reading it directly (zero-copy): tests/csrc_triton/test_triton_gather.py::test_gather_from_huge_pages
