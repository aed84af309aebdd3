#!/usr/bin/env bash
# session 32, calls e1-e2: run 24 through vLLM on 64 held-out samples per task at 8,192 tokens (seed 0).
# The models are exported on the CPU machine from the returned checkpoints and carried in .gpu/ (ignored):
#   python -m vllm_kvoffload.training.export run24/checkpoint.pt .gpu/m24 --run-json run24/run.json
#   python -m vllm_kvoffload.training.export run24/checkpoint-13120.pt .gpu/m24b --run-json run24/run.json
# PART=table (e1): the accuracy table's command (every scorer at 1.5/3/6%) on run 24's final model.
# PART=compare (e2): full attention and exact-topk 3% on run 24 at step 13,120 and on the shipped run 19a.
# Results accumulate in /root/ev (--append), so a call cut off by the time limit can be continued.
source .gpu/setup.sh || exit 1
mkdir -p /root/ev
A="python -m vllm_kvoffload.evaluation.accuracy --samples 64"
if [ "${PART:-table}" = table ]; then
  t0=$SECONDS; $A --model .gpu/m24 --parallel 14 --gpu-memory-utilization 0.06 \
    --timeout 500 --append --out /root/ev/acc24.json > $OUT/e-table.log 2>&1
  echo table rc=$? wall $((SECONDS-t0)) s
else
  for m in m24b:.gpu/m24b m19a:vllm_kvoffload/models/kvoffload-tiny; do
    t0=$SECONDS; $A --model ${m#*:} --scorers exact-topk --budgets 0.03 --parallel 2 \
      --gpu-memory-utilization 0.3 --timeout 160 --append --out /root/ev/acc-${m%%:*}.json > $OUT/e-${m%%:*}.log 2>&1
    echo ${m%%:*} rc=$? wall $((SECONDS-t0)) s
  done
fi
cp /root/ev/*.json /root/ev/*.md /root/ev/*.png $OUT/ 2>/dev/null
tail -2 $OUT/e-*.log; cat /root/ev/*.md
