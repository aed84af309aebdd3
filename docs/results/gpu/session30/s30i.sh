#!/usr/bin/env bash
# session 30, call i (branch int4-pool): the 4-bit pool's kernels on the GPU against their references, then
# greedy tokens through vLLM on the trained model with fp8 and 4-bit pools beside stock
source .gpu/setup.sh || exit 1
python -m pytest -q -p no:cacheprovider -rE tests/csrc_triton/test_triton_offload.py tests/csrc_triton/test_triton_gather.py \
  tests/csrc_triton/test_triton_sparse_decode.py tests/test_runtime.py tests/test_host_pool.py tests/ops/test_int4_ref.py \
  > $OUT/pytest.log 2>&1
echo pytest rc=$?; tail -1 $OUT/pytest.log; grep -E "^(E |ERROR|FAILED)" $OUT/pytest.log | head -20
SKIP_TESTS=1 VARIANTS="full_budget full_budget_fp8 full_budget_int4 budget_3pct budget_3pct_int4" \
  bash docs/results/gpu/session29/s29c.sh
