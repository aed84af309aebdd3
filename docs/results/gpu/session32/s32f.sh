#!/usr/bin/env bash
# session 32, call f: the fp8 host pool's accuracy table on the shipped model (run 24), session 11's command
# (docs/accuracy.md, "With the fp8 host pool") with the shipped folder as the model.
source .gpu/setup.sh || exit 1
t0=$SECONDS
python -m vllm_kvoffload.evaluation.accuracy --samples 64 --host-kv-dtype fp8 --no-full \
  --scorers exact-topk exact-topk-fp8 --parallel 6 --gpu-memory-utilization 0.14 \
  --out $OUT/accuracy-fp8-pool.json > $OUT/acc-fp8.log 2>&1
echo fp8-pool rc=$? wall $((SECONDS-t0)) s
cat $OUT/accuracy-fp8-pool.md
