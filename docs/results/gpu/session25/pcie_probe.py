"""Probe: zero-copy reads of scattered 128-byte rows from pinned host memory.
What limits the gather's misses: rows per program (dense lists vs masked sparse tiles), or the
spread of the rows over the pool (GPU TLB reach for host memory)?"""
import json, os, sys, torch, triton, triton.language as tl

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from probe_kernels import timed as _timed  # noqa: E402


def timed(fn, reps=15):
    return _timed(fn, reps)

@triton.jit
def _read_rows(pool, addr_ptr, n_ptr, out, ROWS: tl.constexpr, W: tl.constexpr, STRIDE_ACTIVE: tl.constexpr):
    pid = tl.program_id(0)
    n = tl.load(n_ptr)
    r = pid * ROWS + tl.arange(0, ROWS)
    m = (r < n) & ((r % STRIDE_ACTIVE) == 0)
    a = tl.load(addr_ptr + r, mask=m, other=0).to(tl.int64)
    w = tl.arange(0, W)
    x = tl.load(pool + a[:, None] * W + w[None, :], mask=m[:, None], other=0)
    tl.store(out + r[:, None] * W + w[None, :], x, mask=m[:, None])

dev = "cuda"
print(torch.cuda.get_device_name(), flush=True)
GB = 2**30
pool_gb = int(os.environ.get("POOL_GB", "8"))
import mmap, ctypes
def thp_pinned(nbytes):
    """Anonymous memory advised to transparent huge pages, touched, then page-locked with cudaHostRegister."""
    align = 2 * 2**20
    mm = mmap.mmap(-1, nbytes + align, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    mm.madvise(mmap.MADV_HUGEPAGE)
    base = torch.frombuffer(mm, dtype=torch.uint8)
    off = (-base.data_ptr()) % align
    t = base[off: off + nbytes].view(torch.int32)
    t.fill_(1)
    rc = torch.cuda.cudart().cudaHostRegister(t.data_ptr(), nbytes, 0)
    print("cudaHostRegister rc", rc, "is_pinned", t.is_pinned(), flush=True)
    return t, mm
print(open("/sys/kernel/mm/transparent_hugepage/enabled").read().strip(), flush=True)
pools = {"cudaHostAlloc": torch.empty(pool_gb * GB // 4, dtype=torch.int32, pin_memory=True)}
pools["cudaHostAlloc"].fill_(1)
rows = []
pool = pools["cudaHostAlloc"]
nrows_pool = pool.numel() // 32
for spread_mb in (256, 1024, 4096, 8192):
    span = min(nrows_pool, spread_mb * 2**20 // 128)
    for total in (1_000, 5_000, 25_000, 100_000, 400_000):
        for ordered in (False, True):
            addr = torch.randint(0, span, (total,), device=dev, dtype=torch.int32)
            if ordered:
                addr = addr.sort().values  # programs in flight read neighbouring addresses
            out = torch.empty(total, 32, dtype=torch.int32, device=dev)
            n_t = torch.tensor([total], device=dev, dtype=torch.int32)
            grid = (triton.cdiv(total, 32),)
            t = timed(lambda: _read_rows[grid](pool, addr, n_t, out, ROWS=32, W=32, STRIDE_ACTIVE=1, num_warps=4))
            rows.append(dict(total=total, spread_mb=spread_mb, sorted=ordered, us=t, gb_s=total * 128 / t / 1e3))
            print(f"spread {spread_mb:>5} MB rows {total:>7} {'sorted' if ordered else 'random'}: {t:8.1f} us "
                  f"{total * 128 / t / 1e3:6.1f} GB/s  {t * 1e3 / total:7.1f} ns/row", flush=True)
import subprocess
print(subprocess.run("ls /sys/class/iommu; cat /proc/cmdline; nvidia-smi -q | grep -i -E 'ATS|Addressing|Bus Id|Link Width|PCIe Generation' ; nvidia-smi topo -m | head -5; dmesg 2>/dev/null | grep -i -E 'iommu|DMAR' | head -5", shell=True, capture_output=True, text=True).stdout)
pool = pools["cudaHostAlloc"]
# the copy engine's ceiling in the same call
src = pool[: 256 * 2**20 // 4]; dst = torch.empty_like(src, device=dev)
t = timed(lambda: dst.copy_(src, non_blocking=True))
print(f"H2D copy 256 MB: {t:.1f} us {src.numel() * 4 / t / 1e3:.1f} GB/s")
rows.append(dict(kind="h2d copy 256MB", us=t, gb_s=src.numel() * 4 / t / 1e3))
if os.environ.get("OUT"):
    json.dump(dict(device=torch.cuda.get_device_name(), rows=rows), open(os.environ["OUT"] + "/pcie_probe.json", "w"), indent=1)
