"""The two-launch split shortlist: segments x pass tile, paired against HEAD's top-k (experiment)."""
import sys, json, os, itertools
from pathlib import Path
sys.path.insert(0, "examples")
import torch
from gpu_kernels import sweep_setup, timeit_pair
from gpu_topk import masses
from vllm_kvoffload.ops.triton_kernels import load, load_from
gen, flush = sweep_setup("x", "x")
new = load("topk")
head = load_from(Path(".gpu/exp/trees/head"), "topk")
shapes = [("128K 8 req softmax", 8, 8, 130000 - 288, "softmax", [2, 4, 8, 16]),
          ("128K 8 req equal", 8, 8, 130000 - 288, "equal", [4, 8, 16]),
          ("128K 8 req ties", 8, 8, 130000 - 288, "ties", [4, 8, 16]),
          ("128K 4 req softmax", 4, 8, 130000 - 288, "softmax", [8, 16]),
          ("32K 32 req softmax", 32, 8, 32768 - 288, "softmax", [1, 2, 3, 4]),
          ("32K 32 req equal", 32, 8, 32768 - 288, "equal", [1, 2, 4]),
          ("32K 32 req ties", 32, 8, 32768 - 288, "ties", [1, 2, 4]),
          ("32K 16 req softmax", 16, 8, 32768 - 288, "softmax", [2, 4])]
tiles = [(2048, 4, 512), (4096, 4, 512), (1024, 4, 512), (2048, 8, 512), (2048, 4, 256), (2048, 4, 1024)]
rows = []
for name, B, H, n, kind, segs in shapes:
    mass, lens = masses(B, H, n, gen, kind)
    k = int(0.03 * n)
    ref = head.topk_select(mass, lens, k)
    run_h = lambda: head.topk_select(mass, lens, k)
    print(f"{name}: new default S={new.segments_for(B * H, n, k, mass.device)}", flush=True)
    for S, (blk, w, sb) in itertools.product(segs, tiles):
        if S == 1 and (blk, w, sb) != tiles[0]:
            continue
        new.SPLIT_TILE, new.SPLIT_SAMPLE_BLOCK = (blk, w), sb
        run_n = lambda: new.topk_select(mass, lens, k, segments=S)
        out = run_n()
        exact = torch.equal(out[0], ref[0]) and torch.equal(out[1], ref[1])
        tn, th = timeit_pair(run_n, run_h, 30, flush)
        rows.append(dict(shape=name, S=S, tile=blk, warps=w, sample_block=sb, us=tn * 1e6, head_us=th * 1e6, exact=exact))
        print(f"  S={S:<3} tile=({blk},{w}) sample={sb:<5} {tn*1e6:8.1f} us  head {th*1e6:8.1f}  {th/tn:5.2f}x  exact={exact}", flush=True)
print("\nbest per shape (head = HEAD 478359b default, paired):")
for name, *_ in shapes:
    rs = [r for r in rows if r["shape"] == name]
    b = min(rs, key=lambda r: r["us"])
    print(f"{name:<22} best {b['us']:7.1f} us (S={b['S']}, tile=({b['tile']},{b['warps']}), sample {b['sample_block']}) "
          f"head {b['head_us']:7.1f}  {b['head_us']/b['us']:.2f}x  all exact={all(r['exact'] for r in rs)}")
if os.environ.get("OUT"):
    Path(os.environ["OUT"], "split_sweep.json").write_text(json.dumps(dict(device=torch.cuda.get_device_name(), rows=rows), indent=1))
