#!/usr/bin/env bash
# For session 34 (not run yet; bare H100, torch only, about 5 min): does --deterministic make two runs of one
# command end with the same weights, and what does it cost a step? Runs a/b: run 24's command compiled and
# deterministic, 150 steps each; runs c/d: the same without --deterministic (they should differ, or the
# check proves nothing). Then the compiled step's time per phase with and without deterministic algorithms.
set -uo pipefail
nvidia-smi --query-gpu=name --format=csv,noheader
T="--steps 16000 --session-steps 150 --batch-tokens 65536 --lr 2e-3 --prompt-weight 0.02 \
  --mix text2json=0.6,needle=0.3,copy=0.1 --decision-weight 3 --drill 0.4 --seed 0 --eval-samples 0 --log-every 10 --compile"
for run in a b; do python -m vllm_kvoffload.training.train --out /root/det-$run $T --deterministic > $OUT/det-$run.log 2>&1; done
for run in c d; do python -m vllm_kvoffload.training.train --out /root/det-$run $T > $OUT/det-$run.log 2>&1; done
python - <<'PY' 2>&1 | tee $OUT/compare.log
import torch
w = {r: torch.load(f"/root/det-{r}/state.pt", map_location="cpu")["model"] for r in "abcd"}
def same(x, y): return all(torch.equal(w[x][k], w[y][k]) for k in w[x])
def diff(x, y): return max((w[x][k] - w[y][k]).abs().max().item() for k in w[x])
print(f"deterministic runs a, b after 150 steps: identical weights {same('a', 'b')} (largest difference {diff('a', 'b'):.3g})")
print(f"default runs c, d after 150 steps: identical weights {same('c', 'd')} (largest difference {diff('c', 'd'):.3g})")
PY
python -m vllm_kvoffload.training.step_time --variants compile --batches 12 --warm 3 2>&1 | grep "^|" | tee $OUT/step_time.log
python -m vllm_kvoffload.training.step_time --variants compile --batches 12 --warm 3 --deterministic 2>&1 | grep "^|" | tee $OUT/step_time_det.log
