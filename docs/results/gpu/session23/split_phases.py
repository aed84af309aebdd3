"""Per-launch timing of the two-launch split shortlist (experiment)."""
import sys, json, os
from pathlib import Path
sys.path.insert(0, "examples")
import torch
from gpu_kernels import sweep_setup, timeit_pair
from gpu_topk import masses
from vllm_kvoffload.ops.triton_kernels import load_from
gen, flush = sweep_setup("x", "x")
T = Path(".gpu/exp/trees")
head = load_from(T / "head", "topk")
mods = {n: load_from(T / n, "topk") for n in ["new", "new_sample_only", "new_skipempty", "new_noappend"]}
class Nop:
    def __getitem__(self, grid):
        return lambda *a, **k: None
rows = []
for name, B, H, n, kind in [("128K 8 req softmax", 8, 8, 130000 - 288, "softmax"), ("32K 32 req softmax", 32, 8, 32768 - 288, "softmax")]:
    mass, lens = masses(B, H, n, gen, kind)
    k = int(0.03 * n)
    run_h = lambda: head.topk_select(mass, lens, k)
    for S in ([2, 4, 8] if n > 100000 else [2, 4]):
        for (blk, w, sb) in [(2048, 4, 1024), (4096, 8, 4096), (4096, 4, 2048)]:
            for vn, mod in mods.items():
                mod.SPLIT_TILE, mod.SPLIT_SAMPLE_BLOCK = (blk, w), sb
                for only1 in (False, True):
                    if only1 and vn != "new" and vn != "new_sample_only":
                        pass
                    saved = mod._select_segments
                    if only1:
                        mod._select_segments = Nop()
                    run_n = lambda: mod.topk_select(mass, lens, k, segments=S)
                    run_n()
                    tn, th = timeit_pair(run_n, run_h, 20, flush)
                    mod._select_segments = saved
                    rows.append(dict(shape=name, S=S, tile=blk, warps=w, sample=sb, variant=vn, launch1_only=only1, us=tn * 1e6, head_us=th * 1e6))
                    print(f"{name:<20} S={S} ({blk},{w},{sb}) {vn:<16} {'launch 1 ' if only1 else 'both     '} {tn*1e6:8.1f} us  head {th*1e6:7.1f}", flush=True)
if os.environ.get("OUT"):
    Path(os.environ["OUT"], "split_phases.json").write_text(json.dumps(dict(device=torch.cuda.get_device_name(), rows=rows), indent=1))
