"""qlandmark-scalar scoring (both passes): chunk per program at the engine's 128K and 32K shapes,
paired against the default plan (experiment)."""
import sys, json, os
from pathlib import Path
sys.path.insert(0, "examples")
import torch
import gpu_score
from gpu_kernels import sweep_setup, timeit_pair, rel_err
from vllm_kvoffload.scorers.qlandmark import UNIFORM_STEP
from vllm_kvoffload.ops.triton_kernels import qscalar_mass, load
score = load("score")
gen, flush = sweep_setup("x", "x")
rows = []
SH = [(int(x.split(':')[0]), int(x.split(':')[1])) for x in sys.argv[1].split(',')]
SPL = [int(x) for x in sys.argv[2].split(',')]
for B, cold in SH:
    gpu_score.COLD = cold
    q, kinds, slots, lens = gpu_score.inputs(B, gen)
    scorer, summ = kinds["2bit"]
    del kinds
    torch.cuda.empty_cache()
    q_rot = scorer.rotated(q)
    scale = 128 ** -0.5
    n_max = slots.shape[1] * 16
    d_chunk = score.plan(B, 8, n_max, q.device, 128)
    base = lambda: qscalar_mass(q_rot, summ, UNIFORM_STEP, slots, lens, scale)
    ref = base()
    print(f"B={B} cold={cold}: default chunk {d_chunk} ({-(-n_max // d_chunk)} per row, {B * 8 * -(-n_max // d_chunk)} programs)", flush=True)
    for splits in SPL:
        chunk = -(-(-(-n_max // splits)) // 128) * 128
        if -(-n_max // chunk) > 256:
            continue
        for warps in (4,):
            run = lambda: qscalar_mass(q_rot, summ, UNIFORM_STEP, slots, lens, scale, chunk=chunk, num_warps=warps)
            err = rel_err(run(), ref)
            t, tb = timeit_pair(run, base, 20, flush)
            r = dict(B=B, cold=cold, chunk=chunk, splits=-(-n_max // chunk), warps=warps, us=t * 1e6, default_us=tb * 1e6, rel_err=float(err))
            rows.append(r)
            print(f"  splits={r['splits']:<4} chunk={chunk:<7} warps={warps} {t*1e6:8.1f} us  default {tb*1e6:8.1f}  {tb/t:5.2f}x  err {float(err):.1e}", flush=True)
    del summ, slots, q
    torch.cuda.empty_cache()
if os.environ.get("OUT"):
    Path(os.environ["OUT"], "chunk_sweep.json").write_text(json.dumps(dict(device=torch.cuda.get_device_name(), rows=rows), indent=1))
