#!/usr/bin/env bash
# session 34, call d (bare H100, torch only): does --deterministic make two runs of one command end with the
# same weights, and what does it cost a step? Runs a/b: run 24's command compiled and deterministic, 150 steps
# each; runs c/d: the same without --deterministic (they should differ, or the check proves nothing).
# The cost per step comes from the runs' own logs (steps 50-150, after compilation), not a separate timer.
# Leaves /root/det-extra holding "--deterministic" when a and b match and c and d do not, for run 28 (s33t.sh).
set -uo pipefail
nvidia-smi --query-gpu=name --format=csv,noheader
T="--steps 16000 --session-steps 150 --batch-tokens 65536 --lr 2e-3 --prompt-weight 0.02 \
  --mix text2json=0.6,needle=0.3,copy=0.1 --decision-weight 3 --drill 0.4 --seed 0 --eval-samples 0 --log-every 10 --compile"
for run in a b; do python -m vllm_kvoffload.training.train --out /root/det-$run $T --deterministic > $OUT/det-$run.log 2>&1; done
for run in c d; do python -m vllm_kvoffload.training.train --out /root/det-$run $T > $OUT/det-$run.log 2>&1; done
for run in a b c d; do cp /root/det-$run/log.jsonl $OUT/det-$run-log.jsonl; done
python - <<'PY' 2>&1 | tee $OUT/compare.log
import json, torch
w = {r: torch.load(f"/root/det-{r}/state.pt", map_location="cpu")["model"] for r in "abcd"}
def same(x, y): return all(torch.equal(w[x][k], w[y][k]) for k in w[x])
def diff(x, y): return max((w[x][k] - w[y][k]).abs().max().item() for k in w[x])
def ms_per_step(r):  # step 50 -> the last logged step: past the compilation
    t = {rec["step"]: rec["elapsed_s"] for rec in map(json.loads, open(f"/root/det-{r}/log.jsonl"))}
    last = max(t)
    return 1000 * (t[last] - t[50]) / (last - 50)
det, default = same("a", "b"), same("c", "d")
print(f"deterministic runs a, b after 150 steps: identical weights {det} (largest difference {diff('a', 'b'):.3g})")
print(f"default runs c, d after 150 steps: identical weights {default} (largest difference {diff('c', 'd'):.3g})")
print("ms per step, step 50 to the last logged: " + ", ".join(f"{r} {ms_per_step(r):.1f}" for r in "abcd"))
open("/root/det-extra", "w").write("--deterministic" if det and not default else "")
print(f"run 28 flags: '{open('/root/det-extra').read()}'")
PY
