"""Call 22e: does the GPU spin in gpu_kernels._timed_once change what topk_probe reads?
The top-k at the engine's shapes, timed with a 1-element flush (as topk_probe does) without the
spin (the session-21 _timed_once) and with it, alternately. Run from the project root:
    python docs/results/gpu/topk-session22e/cover_check.py
(As run in call 22e the spin-less timing was a copy of _timed_once without the spin; it is now
_timed_once(..., cover=False), the same steps.)"""
import sys

import torch

sys.path.insert(0, "examples")
import gpu_kernels  # noqa: E402
from gpu_topk import masses_for  # noqa: E402

from vllm_kvoffload.ops.triton_kernels import topk_select  # noqa: E402

dev = torch.device("cuda")
tiny = torch.empty(1, device=dev)


print(torch.cuda.get_device_name())
for B, n in ((32, 32768 - 288), (8, 130000 - 288)):
    k = int(0.03 * n)
    lens = torch.full((B,), n, dtype=torch.int32, device=dev)
    for kind in ("equal", "softmax"):
        gen = torch.Generator(device=dev).manual_seed(0)
        m = masses_for(lens, 8, n, gen, kind)
        fn = lambda: topk_select(m, lens, k)  # noqa: E731
        gpu_kernels._warm_up(fn)
        a, b = [], []
        for r in range(30):
            a.append(gpu_kernels._timed_once(fn, tiny, cover=False))
            b.append(gpu_kernels._timed_once(fn, tiny))
        med = lambda t: sorted(t)[len(t) // 2] * 1e6  # noqa: E731
        print(f"{B:3d} requests x 8 heads, n={n}, {kind:8s}: without the spin {med(a):7.1f} us, with it {med(b):7.1f} us")
