"""Phase timing of the top-k: variant trees (make_variants.py), paired against base in one process."""
import sys, json, os
from pathlib import Path
sys.path.insert(0, "examples")
import torch
from gpu_kernels import sweep_setup, timeit, timeit_pair
from gpu_topk import masses
from vllm_kvoffload.ops.triton_kernels import load_from
gen, flush = sweep_setup("x", "x")
trees = Path(".gpu/exp/trees")
names = sys.argv[1].split(",")
mods = {n: load_from(trees / n, "topk") for n in names}
base = mods["base"]
shapes = [("128K 8 req softmax", 8, 8, 130000 - 288, "softmax"), ("128K 8 req equal", 8, 8, 130000 - 288, "equal"),
          ("32K 32 req softmax", 32, 8, 32768 - 288, "softmax"), ("32K 32 req ties", 32, 8, 32768 - 288, "ties"),
          ("128K 8 req ties", 8, 8, 130000 - 288, "ties")]
rows = []
for name, B, H, n, kind in shapes:
    mass, lens = masses(B, H, n, gen, kind)
    k = int(0.03 * n)
    ref = base.topk_select(mass, lens, k)
    for v in names:
        run_b = lambda: base.topk_select(mass, lens, k)
        run_v = lambda: mods[v].topk_select(mass, lens, k)
        out = run_v()
        exact = torch.equal(out[0], ref[0]) and torch.equal(out[1], ref[1])
        tv, tb = timeit_pair(run_v, run_b, 30, flush)
        rows.append(dict(shape=name, variant=v, us=tv * 1e6, base_us=tb * 1e6, exact=exact))
        print(f"{name:<22} {v:<20} {tv*1e6:8.1f} us  base {tb*1e6:8.1f}  ratio {tb/tv:5.2f}  exact={exact}", flush=True)
if os.environ.get("OUT"):
    Path(os.environ["OUT"], "topk_phases.json").write_text(json.dumps(dict(device=torch.cuda.get_device_name(), rows=rows), indent=1))
