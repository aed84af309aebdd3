#!/usr/bin/env bash
# session 34, call e: the 4-bit host pool's accuracy table on the shipped model (run 24), as call 32f's for
# the fp8 pool (docs/results/gpu/session32/s32f.sh), plus qlandmark-scalar (the throughput path's scorer).
source .gpu/setup.sh || exit 1
t0=$SECONDS
python -m vllm_kvoffload.evaluation.accuracy --samples 64 --host-kv-dtype int4 --no-full \
  --scorers exact-topk exact-topk-fp8 qlandmark-scalar --parallel 6 --gpu-memory-utilization 0.14 \
  --out $OUT/accuracy-int4-pool.json > $OUT/acc-int4.log 2>&1
echo int4-pool rc=$? wall $((SECONDS-t0)) s
cat $OUT/accuracy-int4-pool.md
