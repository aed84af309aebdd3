import sys, torch
sys.path.insert(0, "examples")
from gpu_gather import inputs, B, HKV, K, COUNT, HEAD_DIM as D
from vllm_kvoffload.ops.triton_kernels import load
g = load("gather")
gen = torch.Generator(device="cuda").manual_seed(0)
host, slots, prev_idx, idx, counts, planted = inputs(gen, 1.0)
dev = "cuda"
ref_k, ref_v = g.gather_uva(host, 0, slots, prev_idx, counts)
rows_ = torch.randperm(B, device=dev, generator=gen).int()
cache = [torch.zeros(B, HKV, K, D, dtype=host.dtype, device=dev) for _ in range(2)]
arr = [[torch.zeros(B, HKV, K, dtype=torch.int32, device=dev) for _ in range(2)] for _ in range(2)]
cn = [torch.zeros(B, HKV, dtype=torch.int32, device=dev) for _ in range(2)]
st = torch.zeros(2, dtype=torch.int64, device=dev)
ones = torch.ones(B, dtype=torch.int32, device=dev)
# the same with a device-resident pool: is it the zero-copy reads?
host_dev = host.cuda()
for pool_name, pool in (("pinned", host), ("device", host_dev)):
    for bt, w in ((32, 4), (32, 1), (16, 4), (64, 4), (32, 8)):
        cache[0].zero_()
        g.gather_inplace(pool, 0, slots, prev_idx, counts, rows_, ones, arr[0][1], arr[1][1], cn[1], arr[0][0], arr[1][0], cn[0], *cache, st, block_t=bt, num_warps=w)
        torch.cuda.synchronize()
        got = cache[0].view(torch.uint8)[rows_.long()][:, :, :COUNT]
        bad = (got != ref_k.view(torch.uint8)[:, :, :COUNT]).any(-1)
        print(pool_name, "block_t", bt, "warps", w, "bad rows", int(bad.sum()), flush=True)
# gather_uva into a [B,HKV,K,D] buffer with rows permuted is what gather_inplace(fresh) does; uva with block 32/4:
o = torch.zeros_like(ref_k); o2 = torch.zeros_like(ref_v)
g.gather_uva(host, 0, slots, prev_idx, counts, out_k=o, out_v=o2)
print("uva into zeros equal:", torch.equal(o.view(torch.uint8)[:, :, :COUNT], ref_k.view(torch.uint8)[:, :, :COUNT]))
