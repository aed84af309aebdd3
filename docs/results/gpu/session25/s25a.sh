#!/usr/bin/env bash
# session 25: [stage last part] then the GPU tests of the runtime, graphs and kernels touched, then
# greedy correctness on the trained model (in-place device cache)
[ -n "$1" ] && bash .gpu/s14stage.sh $1
source .gpu/setup.sh || exit 1
(timeout 300 python -m pytest tests/test_runtime.py tests/test_decode_graphs.py tests/test_device_cache.py \
  tests/csrc_triton/test_triton_gather.py tests/csrc_triton/test_triton_offload.py tests/test_host_pool.py -q -p no:cacheprovider 2>&1 | tail -6) | tee $OUT/pytest.log
python examples/gpu_offload_bench.py correctness --model vllm_kvoffload/models/kvoffload-tiny --archs \
  --variants stock_again full_budget budget_3pct --scorers exact-topk qlandmark-scalar --parallel 2 > $OUT/correctness.log 2>&1
echo rc=$?
tail -30 $OUT/correctness.log
