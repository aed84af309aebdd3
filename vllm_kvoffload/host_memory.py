"""Host memory for the host pool: pinned 4 KiB pages (torch's ``pin_memory``, i.e. cudaHostAlloc)
or anonymous memory in transparent 2 MiB huge pages, page-locked with cudaHostRegister.

Why huge pages: the device cache's misses are single 256-byte rows read by the GPU straight from
the pool (zero-copy). Where few of a selection miss, each read costs about one address translation
(13-16 ns on an H100 in a microVM, docs/performance.md, session 26), not its bytes. A 2 MiB page
holds 512 times the rows of a 4 KiB one, so one translation could serve many misses. Measured on
that machine (session 27), it does not: 2-4% faster, so the translations that cost are below the
guest's page tables (the hypervisor's). Pinned 4 KiB pages stay the default.

``host_empty`` returns a tensor whose mapping lives as long as any tensor viewing it (numpy keeps
the owner below alive), then it is unregistered and unmapped. The kernel gives huge pages only where
transparent huge pages are enabled (``always`` or ``madvise``) and 2 MiB of contiguous memory is
free; otherwise the same memory comes in 4 KiB pages. ``huge_page_bytes`` says how much of a buffer
the kernel backed with huge pages.
"""

from __future__ import annotations

import ctypes
import math
import mmap
import os
from typing import Literal

import numpy as np
import torch

HostMemory = Literal["pinned", "hugepages"]
HUGE_PAGE = 2 * 2**20
_MADV_HUGEPAGE = 14  # <linux/mman.h>; not in Python's mmap module before 3.12 (madvise needs a mmap object)

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long)
_libc.munmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t)
_libc.madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
_MAP_FAILED = ctypes.c_void_p(-1).value


class _HugePageMapping:
    """An anonymous mapping aligned to 2 MiB and advised MADV_HUGEPAGE, registered with CUDA when
    ``register``. numpy reads it through ``__array_interface__`` and keeps this object alive while
    any array (and so any tensor made from one) views it; ``__del__`` then unregisters and unmaps."""

    def __init__(self, nbytes: int, register: bool):
        self.raw, self.registered = None, False  # what __del__ undoes, set before anything can fail
        self.size = -(-max(nbytes, 1) // HUGE_PAGE) * HUGE_PAGE
        self.mapped = self.size + HUGE_PAGE  # room to align the start
        raw = _libc.mmap(None, self.mapped, mmap.PROT_READ | mmap.PROT_WRITE,
                         mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS, -1, 0)
        if raw in (None, _MAP_FAILED):
            raise MemoryError(f"mmap of {self.mapped} bytes failed: {os.strerror(ctypes.get_errno())}")
        self.raw = raw
        self.start = -(-raw // HUGE_PAGE) * HUGE_PAGE
        # advice only: refused (EINVAL) where the kernel has no transparent huge pages; then 4 KiB pages
        _libc.madvise(self.start, self.size, _MADV_HUGEPAGE)
        if register:
            # pins (and so faults in) every page now: a pool the host cannot lock fails here
            err = torch.cuda.cudart().cudaHostRegister(self.start, self.size, 0)
            if int(err) != 0:
                self._unmap()
                raise RuntimeError(f"cudaHostRegister of {self.size} bytes failed: {err}")
            self.registered = True
        self.__array_interface__ = dict(shape=(nbytes,), typestr="|u1", data=(self.start, False), version=3)

    def _unmap(self) -> None:
        if self.raw is not None:
            _libc.munmap(self.raw, self.mapped)
            self.raw = None

    def __del__(self):
        if self.registered:
            try:
                torch.cuda.cudart().cudaHostUnregister(self.start)
            except Exception:  # interpreter shutdown: CUDA may be gone, and the process with it
                pass
        self._unmap()


def host_empty(shape: tuple | list, dtype: torch.dtype, pin: bool, memory: HostMemory = "pinned") -> torch.Tensor:
    """An uninitialized host tensor of ``shape`` in 4 KiB pages (``memory="pinned"``: torch's
    allocation) or in 2 MiB huge pages (``"hugepages"``), page-locked for CUDA where ``pin``."""
    if memory not in ("pinned", "hugepages"):
        raise ValueError(f"host memory {memory!r} is not one of: pinned, hugepages")
    if memory == "pinned":
        return torch.empty(shape, dtype=dtype, pin_memory=pin)
    nbytes = math.prod(shape) * dtype.itemsize
    owner = _HugePageMapping(nbytes, register=pin)
    return torch.from_numpy(np.asarray(owner)).view(dtype).view(shape)


def huge_page_bytes(t: torch.Tensor) -> int:
    """Bytes of the mapping holding ``t`` that the kernel backs with transparent huge pages
    (``AnonHugePages`` of its entry in /proc/self/smaps; 0 where that is not readable)."""
    addr = t.data_ptr()
    try:
        with open("/proc/self/smaps") as f:
            inside = False
            for line in f:
                head = line.split()[0]
                if "-" in head and not head.endswith(":"):  # a mapping's first line: "start-end perms ..."
                    lo, hi = (int(x, 16) for x in head.split("-"))
                    inside = lo <= addr < hi
                elif inside and head == "AnonHugePages:":
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0
