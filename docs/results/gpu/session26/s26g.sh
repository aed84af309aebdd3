#!/usr/bin/env bash
# session 26: greedy correctness on the trained model (kv-inner host pool)
source .gpu/setup.sh || exit 1
python examples/gpu_offload_bench.py correctness --model vllm_kvoffload/models/kvoffload-tiny --archs \
  --variants stock_again full_budget budget_3pct --scorers exact-topk qlandmark-scalar --parallel 2 > $OUT/correctness.log 2>&1
echo rc=$?
tail -30 $OUT/correctness.log
