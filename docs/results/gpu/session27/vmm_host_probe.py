"""Probe (session 27): do sparse zero-copy reads of host memory run faster when the memory comes from
the CUDA driver's virtual memory management (VMM) API than when it comes from cudaHostAlloc?
Hypothesis: the driver maps a host allocation made with cuMemCreate (location HOST_NUMA, id 0) into
the GPU's address space with 2 MiB pages, while pinned memory (torch pin_memory, i.e. cudaHostAlloc)
gets 4 KiB GPU pages. Sparse reads of pinned memory on this machine cost about one address translation
(~10 ns) per 4 KiB page touched, so the VMM pool should read the same rows faster, mostly at low miss
rates, where each 4 KiB page touched holds few rows.
Both pools (POOL_GB GiB each) use session 26's "kv-inner" layout [layer, head, slot, K|V, token, D],
with 8 layers, 8 requests that hold contiguous slot ranges, 8 KV heads, 16-token blocks and 128-byte
rows. Each (request, head) has 3,900 sorted selected tokens out of 130K, and a share of them miss. One
launch per layer reads the missing tokens' K and V rows, for every layer in turn, using session 26's
masked kernel.
  pinned    torch.empty(..., pin_memory=True), passed to Triton as a CPU pinned tensor
  vmm-host  cuMemCreate(HOST_NUMA NUMA; location HOST if that is refused) + cuMemAddressReserve +
            cuMemMap + cuMemSetAccess(device 0), wrapped as a CUDA tensor without a copy
            (__cuda_array_interface__; DLPack as a fallback)
Prints us per layer, GB/s of the misses' bytes, the 4 KiB and 2 MiB pages touched, and a 256 MiB
dense copy's rate; the rows go to $OUT/vmm_host_probe.json when OUT is set. At the end it tries to
grant the CPU access to the VMM mapping as well (CPU_PROBE=0 skips that) and reports the result.
  python docs/results/gpu/session27/vmm_host_probe.py          (optionally POOL_GB=16 OUT=dir NUMA=0)
Without CUDA (TRITON_INTERPRET=1 python ...) it only checks the kernel's reads on a small CPU pool."""
import ctypes, gc, json, os, struct, torch, triton
import sys
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from probe_kernels import read_masked as _read_misses, timed  # noqa: E402
from ctypes import POINTER as P, byref, c_char_p, c_int, c_size_t, c_ubyte, c_ulonglong, c_ushort, c_void_p

D_WORDS = 32  # 128-byte rows (fp8, head size 128) as int32 words
# cuda.h enums (CUmemAllocationType, CUmemLocationType, CUmemAccess_flags, CUmemAllocationGranularity_flags)
ALLOC_PINNED, LOC_DEVICE, LOC_HOST, LOC_HOST_NUMA, PROT_RW, GRAN_MIN, GRAN_REC = 1, 1, 2, 3, 3, 0, 1
ATTRS = {"vmm_supported": 102, "host_numa_id": 134, "host_numa_vmm_supported": 141, "host_vmm_supported": 145}


# the structs as cuda.h declares them (x86-64: CUmemAllocationProp 32 bytes, CUmemAccessDesc 12)
class CUmemLocation(ctypes.Structure): _fields_ = [("type", c_int), ("id", c_int)]
class CUmemAllocFlags(ctypes.Structure): _fields_ = [("compressionType", c_ubyte), ("gpuDirectRDMACapable", c_ubyte),
                                                     ("usage", c_ushort), ("reserved", c_ubyte * 4)]
class CUmemAllocationProp(ctypes.Structure): _fields_ = [("type", c_int), ("requestedHandleTypes", c_int), ("location", CUmemLocation),
                                                         ("win32HandleMetaData", c_void_p), ("allocFlags", CUmemAllocFlags)]
class CUmemAccessDesc(ctypes.Structure): _fields_ = [("location", CUmemLocation), ("flags", c_int)]
assert ctypes.sizeof(CUmemAllocationProp) == 32 and ctypes.sizeof(CUmemAccessDesc) == 12
class CudaError(RuntimeError): pass
_cu = None  # libcuda.so.1, loaded once torch has made its context current
SIGS = {"cuGetErrorString": [c_int, P(c_char_p)], "cuDriverGetVersion": [P(c_int)], "cuCtxGetCurrent": [P(c_void_p)],
        "cuDeviceGet": [P(c_int), c_int], "cuDeviceGetAttribute": [P(c_int), c_int, c_int],
        "cuMemGetAllocationGranularity": [P(c_size_t), P(CUmemAllocationProp), c_int],
        "cuMemCreate": [P(c_ulonglong), c_size_t, P(CUmemAllocationProp), c_ulonglong],
        "cuMemAddressReserve": [P(c_ulonglong), c_size_t, c_size_t, c_ulonglong, c_ulonglong],
        "cuMemMap": [c_ulonglong, c_size_t, c_size_t, c_ulonglong, c_ulonglong],
        "cuMemSetAccess": [c_ulonglong, c_size_t, P(CUmemAccessDesc), c_size_t],
        "cuMemUnmap": [c_ulonglong, c_size_t], "cuMemAddressFree": [c_ulonglong, c_size_t], "cuMemRelease": [c_ulonglong],
        "cuPointerGetAttribute": [c_void_p, c_int, c_ulonglong]}  # (none of these has a _v2 #define in cuda.h)

def cu(name, *args):
    """Call a driver function; raise CudaError naming it, its CUresult and cuGetErrorString's text unless it succeeds."""
    r = getattr(_cu, name)(*args)
    if r != 0:
        s = c_char_p()
        _cu.cuGetErrorString(r, byref(s))
        raise CudaError(f"{name} failed: CUresult {r} ({(s.value or b'?').decode()})")

def host_prop(typ, numa):
    p = CUmemAllocationProp()  # zeroed: no handle types, no flags
    p.type, p.location.type, p.location.id = ALLOC_PINNED, typ, numa if typ == LOC_HOST_NUMA else 0
    return p

def query(name, *args):
    """One int that a driver query returns through its first argument, or the error's text."""
    v = c_int(-1) if name != "cuMemGetAllocationGranularity" else c_size_t(0)
    try:
        cu(name, byref(v), *args); return v.value
    except CudaError as e:
        return str(e)

def ptr_attrs(ptr):  # CU_POINTER_ATTRIBUTE_MEMORY_TYPE (2; 1 host, 2 device, 4 unified) and _DEVICE_ORDINAL (9)
    return dict(memory_type=query("cuPointerGetAttribute", 2, ptr), device_ordinal=query("cuPointerGetAttribute", 9, ptr))

def vmm_free(st):
    if st.get("mapped"): cu("cuMemUnmap", st["va"], st["size"])
    if st.get("va"): cu("cuMemAddressFree", st["va"], st["size"])
    if st.get("handle"): cu("cuMemRelease", st["handle"])

def vmm_alloc(nbytes, typ, numa, gran):
    """Host memory from cuMemCreate(location typ), mapped at a fresh VA with read/write access for device 0."""
    st = dict(size=-(-nbytes // gran) * gran)
    h, va = c_ulonglong(), c_ulonglong()
    try:
        cu("cuMemCreate", byref(h), st["size"], byref(host_prop(typ, numa)), 0); st["handle"] = h.value
        cu("cuMemAddressReserve", byref(va), st["size"], gran, 0, 0); st["va"] = va.value
        cu("cuMemMap", va, st["size"], 0, h, 0); st["mapped"] = True
        acc = CUmemAccessDesc(CUmemLocation(LOC_DEVICE, 0), PROT_RW)
        cu("cuMemSetAccess", va, st["size"], byref(acc), 1)
    except CudaError:
        vmm_free(st); raise
    return st


class _CAI:  # a bare __cuda_array_interface__ over the mapped VA
    def __init__(self, ptr, n):
        self.__cuda_array_interface__ = dict(shape=(n,), typestr="<i4", data=(ptr, False), version=3, strides=None)

_keep = []  # ctypes objects that the DLPack fallback's tensor points into
DELETER = ctypes.CFUNCTYPE(None, c_void_p)
class DLManagedTensor(ctypes.Structure):  # DLTensor {data, device {type, id}, ndim, dtype {code, bits, lanes}, shape, strides,
    _fields_ = [("data", c_void_p), ("device_type", c_int), ("device_id", c_int), ("ndim", c_int),  # byte_offset}, ctx, deleter
                ("code", c_ubyte), ("bits", c_ubyte), ("lanes", c_ushort), ("shape", P(ctypes.c_int64)), ("strides", c_void_p),
                ("byte_offset", c_ulonglong), ("manager_ctx", c_void_p), ("deleter", DELETER)]

def dlpack_tensor(ptr, n):
    """Fallback wrap: a legacy DLPack capsule naming (kDLCUDA=2, 0), so torch does not query the pointer."""
    shape, deleter = (ctypes.c_int64 * 1)(n), DELETER(lambda p: None)
    mt = DLManagedTensor(ptr, 2, 0, 1, 0, 32, 1, shape, None, 0, None, deleter)
    _keep.extend([shape, deleter, mt])
    new = ctypes.pythonapi.PyCapsule_New
    new.restype, new.argtypes = ctypes.py_object, [c_void_p, c_char_p, c_void_p]
    return torch.utils.dlpack.from_dlpack(new(ctypes.addressof(mt), b"dltensor", None))

def wrap(x):  # the pattern: word i of the pool holds i as a two's-complement int32
    return (x + 2 ** 31) % 2 ** 32 - 2 ** 31

def fill(pool, device):
    """Word i := wrap(i), in 256 MiB chunks computed on `device`; chunks start at multiples of 2**26, so none wraps inside."""
    ch = 2 ** 26
    ar = torch.arange(min(ch, pool.numel()), dtype=torch.int32, device=device)
    for s in range(0, pool.numel(), ch):
        n = min(ch, pool.numel() - s)
        torch.add(ar[:n], wrap(s), out=pool[s: s + n])

SMOKE = not torch.cuda.is_available()
dev = "cpu" if SMOKE else "cuda"
GB = 2 ** 20 if SMOKE else 2 ** 30
POOL_GB = int(os.environ.get("POOL_GB", "128" if SMOKE else "16"))
NUMA = int(os.environ.get("NUMA", "0"))
B, H, BS, CTX, K = (8, 8, 16, 130_000, 3_900) if not SMOKE else (8, 8, 16, 1000, 50)
L = 8
slots = POOL_GB * GB // (2 * H * BS * 128 * L)
rows_per_region = slots * BS  # rows of one (layer, head, K|V)
blocks = CTX // BS
assert B * blocks <= slots, (B * blocks, slots)
g = torch.Generator().manual_seed(0)
tok = torch.stack([torch.randperm(CTX, generator=g)[:K].sort().values for _ in range(B * H)]).view(B, H, K)
# kv-inner [layer, head, slot, K|V, token, D]: request b holds slots [b * blocks, (b + 1) * blocks); a block's 16 K rows
# and 16 V rows fill one 4 KiB page. Row (within a layer) of (b, h, token): base[b, h] + tok_off; its V row is s_kv words on.
base = torch.tensor([[2 * (h * rows_per_region + b * blocks * BS) for h in range(H)] for b in range(B)], dtype=torch.int64)
tok_off = (tok // BS) * 2 * BS + tok % BS
rows = base[:, :, None] + tok_off  # [B, H, K]
s_kv, s_layer = BS * D_WORDS, 2 * H * rows_per_region * D_WORDS
MISS_RATES = (0.05, 0.1, 0.2, 0.55, 1.0)
misses = {r: (torch.rand(B, H, K, generator=g) < r).to(torch.int32) for r in MISS_RATES}  # the same draws for both pools
info = dict(device="cpu" if SMOKE else torch.cuda.get_device_name(), pool_gb=POOL_GB, numa=NUMA)
results = []

def save():
    if os.environ.get("OUT") and not SMOKE:
        json.dump(dict(info, rows=results), open(os.path.join(os.environ["OUT"], "vmm_host_probe.json"), "w"), indent=1)

def bench(name, pool):
    """Read every miss rate's rows from `pool` (an int32 tensor holding the pattern), check the last layer, time it."""
    out = torch.empty(2 * B * H * K * D_WORDS, dtype=torch.int32, device=dev)
    tok_d, base_d, rows_d = tok_off.to(dev, torch.int32).contiguous(), base.to(dev), rows.to(dev)
    w = torch.arange(D_WORDS, device=dev)
    for rate in MISS_RATES:
        miss_d = misses[rate].to(dev)

        def run():
            for layer in range(L):
                _read_misses[(triton.cdiv(K, 32), B, H)](pool, tok_d, miss_d, base_d, out, layer * s_layer, s_kv, K, H,
                                                         B * H * K * D_WORDS, BLOCK=32, W=D_WORDS, num_warps=4)
        out.zero_(); run()  # after this, out holds the last layer's K and V rows at the misses, zeros elsewhere
        exp_k = (L - 1) * s_layer + rows_d[..., None] * D_WORDS + w  # [B, H, K, W] word indices of the K rows
        m = miss_d.bool()[..., None]
        bad = sum(int((out.view(2, B, H, K, D_WORDS)[i] != torch.where(m, wrap(exp_k + o).to(torch.int32), 0)).sum())
                  for i, o in enumerate((0, s_kv)))
        sel = rows[misses[rate].bool()]
        n, p4k, p2m = sel.numel(), torch.unique(sel // 32).numel(), torch.unique(sel // 16384).numel()  # 32 rows per 4 KiB
        if SMOKE:
            print(name, rate, n, "misses", "ok" if bad == 0 else f"{bad} WRONG WORDS"); assert bad == 0; continue
        us = timed(run) / L
        row = dict(pool=name, miss_rate=rate, misses=n, pages_4k=p4k, pages_2m=p2m, us_per_layer=us,
                   gb_s=n * 2 * 128 / us / 1e3, ns_per_4k_page=us * 1e3 / p4k, wrong_words=bad)
        results.append(row); save()
        print(f"{name:<8} miss {rate:4.2f} {n:>7} misses {p4k:>7} 4K pages {p2m:>5} 2M pages {us:8.1f} us/layer "
              f"{row['gb_s']:6.1f} GB/s {row['ns_per_4k_page']:5.1f} ns/4K page  {'ok' if bad == 0 else f'{bad} WRONG WORDS'}", flush=True)
    if SMOKE: return
    src = pool[: 256 * 2 ** 20 // 4]
    dst = torch.empty(src.shape, dtype=src.dtype, device=dev)
    t = timed(lambda: dst.copy_(src, non_blocking=True))
    ok = dst[0].item() == 0 and dst[-1].item() == src.numel() - 1
    results.append(dict(pool=name, kind="dense copy 256 MiB", us=t, gb_s=src.numel() * 4 / t / 1e3, ok=ok)); save()
    print(f"{name:<8} dense copy 256 MiB: {t:.1f} us {src.numel() * 4 / t / 1e3:.1f} GB/s {'ok' if ok else 'WRONG'}", flush=True)

def table():
    print(f"\n{'miss':>5} {'misses':>7} {'4K pages':>8} {'pinned us':>10} {'vmm us':>9} {'pinned GB/s':>11} {'vmm GB/s':>9} {'speedup':>7}")
    for rate in MISS_RATES:
        r = {x["pool"]: x for x in results if x.get("miss_rate") == rate}
        p, v = r.get("pinned"), r.get("vmm-host")
        print(f"{rate:5.2f} {p['misses']:>7} {p['pages_4k']:>8} {p['us_per_layer']:10.1f} " + (
            f"{v['us_per_layer']:9.1f} {p['gb_s']:11.1f} {v['gb_s']:9.1f} {p['us_per_layer'] / v['us_per_layer']:6.2f}x" if v else
            f"{'-':>9} {p['gb_s']:11.1f} {'-':>9} {'-':>7}"))
    for x in results:
        if "kind" in x: print(f"{x['pool']:<8} {x['kind']}: {x['gb_s']:.1f} GB/s")

if SMOKE:
    pool = torch.empty(POOL_GB * GB // 4, dtype=torch.int32)
    fill(pool, "cpu"); bench("cpu", pool)
    raise SystemExit
torch.cuda.init(); torch.empty(1, device="cuda"); torch.cuda.synchronize()  # the primary context is now current
_cu = ctypes.CDLL("libcuda.so.1")
for fname, argtypes in SIGS.items():
    getattr(_cu, fname).argtypes, getattr(_cu, fname).restype = argtypes, c_int
ctx = c_void_p()
cu("cuCtxGetCurrent", byref(ctx))
assert ctx.value, "no current CUDA context after torch's initialisation"
ver, cudev = query("cuDriverGetVersion"), query("cuDeviceGet", 0)
info.update(driver_version=ver, context=hex(ctx.value), **{k: query("cuDeviceGetAttribute", a, cudev) for k, a in ATTRS.items()})
for tname, typ in (("host_numa", LOC_HOST_NUMA), ("host", LOC_HOST)):  # CU_MEM_ALLOC_GRANULARITY_MINIMUM and _RECOMMENDED
    for gname, flag in (("min", GRAN_MIN), ("recommended", GRAN_REC)):
        info[f"gran_{tname}_{gname}"] = query("cuMemGetAllocationGranularity", byref(host_prop(typ, NUMA)), flag)
print(info["device"], f"driver {ver // 1000}.{ver % 1000 // 10}", {k: v for k, v in info.items() if k != "device"}, flush=True)
print(f"pool {POOL_GB} GiB, {L} layers, {slots} slots; {B} requests x {H} heads x {K} of {CTX}", flush=True)

# pinned: cudaHostAlloc through torch's host allocator, filled on the CPU, read through the CPU tensor
pool = torch.empty(POOL_GB * GB // 4, dtype=torch.int32, pin_memory=True)
fill(pool, "cpu")
info["pinned_ptr_attrs"] = ptr_attrs(pool.data_ptr())
bench("pinned", pool)
del pool; gc.collect()
getattr(torch._C, "_host_emptyCache", lambda: None)()  # hand the cached pinned block back before the next pool

# vmm-host: cuMemCreate on the host (HOST_NUMA NUMA; if refused, HOST) mapped for device 0, filled from the GPU,
# read through a CUDA tensor on the VA
st, errors = None, []
for tname, typ in (("host_numa", LOC_HOST_NUMA), ("host", LOC_HOST)):
    try:
        gran = info[f"gran_{tname}_recommended"]
        if isinstance(gran, str): raise CudaError(gran)
        st = vmm_alloc(POOL_GB * GB, typ, NUMA, gran)
        info.update(vmm_location=tname, vmm_va=hex(st["va"]), vmm_ptr_attrs=ptr_attrs(st["va"])); break
    except CudaError as e:
        errors.append(f"{tname}: {e}")
        print(f"VMM allocation with location {tname} FAILED: {e}", flush=True)
info["vmm_errors"] = errors
pool = None
if st is not None:
    try:  # wrap the VA as a tensor, fill it from the GPU, read it; on any failure record it and keep the pinned rows
        try:
            pool = torch.as_tensor(_CAI(st["va"], POOL_GB * GB // 4), device="cuda"); info["wrap"] = "cuda_array_interface"
        except Exception as e:
            print("torch.as_tensor(__cuda_array_interface__) failed:", repr(e), "- trying DLPack", flush=True)
            pool = dlpack_tensor(st["va"], POOL_GB * GB // 4); info["wrap"] = "dlpack"
        assert pool.data_ptr() == st["va"] and pool.is_cuda, (hex(pool.data_ptr()), hex(st["va"]), pool.device)
        s, e = torch.cuda.Event(True), torch.cuda.Event(True)
        s.record(); fill(pool, "cuda"); e.record(); e.synchronize()
        info["vmm_fill_gb_s"] = POOL_GB * GB / (s.elapsed_time(e) * 1e6)
        print(f"vmm-host pool ({info['vmm_location']}) at {hex(st['va'])} as a tensor by {info['wrap']}, "
              f"filled from the GPU at {info['vmm_fill_gb_s']:.1f} GB/s", flush=True)
        bench("vmm-host", pool)
    except Exception as e:
        errors.append(f"measurement: {e!r}"); print("vmm-host measurement FAILED:", repr(e), flush=True); pool = None
table()
if pool is not None:
    if os.environ.get("CPU_PROBE", "1") == "1":  # last: a CPU access that faults would end the run
        # Can the CPU use the mapping too? Grant host access (HOST_NUMA, then HOST), read what the GPU wrote, write words
        for typ, tid in ((LOC_HOST_NUMA, NUMA), (LOC_HOST, 0)):
            try:
                cu("cuMemSetAccess", st["va"], st["size"], byref(CUmemAccessDesc(CUmemLocation(typ, tid), PROT_RW)), 1)
                info["cpu_access"] = f"granted with location type {typ}"; break
            except CudaError as e:
                info["cpu_access"] = f"refused: {e}"
                print(f"CPU access with location type {typ}:", e, flush=True)
        if info["cpu_access"].startswith("granted"):
            torch.cuda.synchronize()
            info["cpu_read_ok"] = list(struct.unpack("<4i", ctypes.string_at(st["va"] + 4096 * 4, 16))) == [4096, 4097, 4098, 4099]
            ctypes.memmove(st["va"] + 8192 * 4, struct.pack("<4i", -7, 7, -77, 77), 16)
            info["gpu_sees_cpu_write"] = pool[8192:8196].tolist() == [-7, 7, -77, 77]
        print("CPU access:", info["cpu_access"], {k: info.get(k) for k in ("cpu_read_ok", "gpu_sees_cpu_write")}, flush=True)
        save()
    del pool; gc.collect(); torch.cuda.synchronize()
try:
    if st is not None: vmm_free(st)  # cuMemUnmap, cuMemAddressFree, cuMemRelease
except CudaError as e:
    errors.append(f"free: {e}")
if errors:
    print("VMM host pool:", "; ".join(errors), flush=True)
save()
print(json.dumps(info))
