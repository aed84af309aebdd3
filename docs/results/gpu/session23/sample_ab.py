"""Top-k with the sample in registers (working tree) against HEAD 478359b, paired (experiment)."""
import sys, json, os, itertools
from pathlib import Path
sys.path.insert(0, "examples")
import torch
from gpu_kernels import sweep_setup, timeit_pair
from gpu_topk import SHAPES, masses
from vllm_kvoffload.ops.triton_kernels import load, load_from
gen, flush = sweep_setup("x", "x")
new = load("topk")
head = load_from(Path(".gpu/exp/trees/head"), "topk")
rows = []
summary = []
for name, B, H, n, share in SHAPES:
    kind = name.rsplit(", ", 1)[-1]
    mass, lens = masses(B, H, n, gen, kind if kind in ("ties", "equal") else "softmax")
    k = int(share * n)
    ref = new.topk_select(mass, lens, k, segments=1, sample_stride=0)
    run_h = lambda: head.topk_select(mass, lens, k)
    hd = head.topk_select(mass, lens, k)
    assert torch.equal(hd[0], ref[0]) and torch.equal(hd[1], ref[1])
    cells = [(None, None, None)] + [(S, b, w) for S, (b, w) in itertools.product([1, 2, 4], [(2048, 4), (4096, 8), (4096, 4)])]
    best = None
    for S, b, w in cells:
        run_n = lambda: new.topk_select(mass, lens, k, segments=S, block=b, num_warps=w)
        out = run_n()
        exact = torch.equal(out[0], ref[0]) and torch.equal(out[1], ref[1])
        tn, th = timeit_pair(run_n, run_h, 30, flush)
        r = dict(shape=name, segments=S, block=b, warps=w, us=tn * 1e6, head_default_us=th * 1e6, exact=exact)
        rows.append(r)
        if S is None:
            default = r
        if best is None or r["us"] < best["us"]:
            best = r
        print(f"  {name:<28} S={S} tile=({b},{w}) {tn*1e6:8.1f} us  head default {th*1e6:8.1f}  {th/tn:5.2f}x  exact={exact}", flush=True)
    summary.append((name, default, best))
print(f"\n{torch.cuda.get_device_name()}: top-k per layer (us), working tree vs HEAD 478359b, both at their defaults, paired")
print(f"{'shape':<28}{'head':>9}{'new':>9}{'ratio':>7}   best new cell")
for name, d, b in summary:
    print(f"{name:<28}{d['head_default_us']:9.1f}{d['us']:9.1f}{d['head_default_us']/d['us']:6.2f}x   {b['us']:.1f} (S={b['segments']}, {b['block']}, {b['warps']}) exact all={all(r['exact'] for r in rows if r['shape']==name)}")
if os.environ.get("OUT"):
    Path(os.environ["OUT"], "sample_ab.json").write_text(json.dumps(dict(device=torch.cuda.get_device_name(), rows=rows), indent=1))
