#!/usr/bin/env bash
# for session 33 (branch int4-pool, not run yet): the 4-bit pool with its scales in device memory (session 32's
# commits dd9833b..), on the GPU. (1) its kernels against their references; (2) the engine's kernels at 46% hits
# against call 31a/31b's (4-bit rows of 68 bytes: _inplace_fill 719 us per layer; fp8: 805); the row-layout probe
# predicted about 520 us (call 31e); (3) greedy tokens against stock on the shipped model (run 24).
source .gpu/setup.sh || exit 1
python -m pytest -q -p no:cacheprovider tests/csrc_triton/test_triton_gather.py tests/csrc_triton/test_triton_offload.py \
  tests/csrc_triton/test_triton_sparse_decode.py -k "int4 or store or inplace or lru" > $OUT/pytest.log 2>&1
echo pytest rc=$?; tail -2 $OUT/pytest.log; grep -E "^(FAILED|ERROR)" $OUT/pytest.log | head
python examples/gpu_offload_bench.py profile --cuda-graphs --context 130000 --offload-requests 8 --steps 8 \
  --scorers qlandmark-scalar --host-kv-dtype ${DTYPE:-int4} --synthetic-miss-rates 0.55 --no-stock > $OUT/profile.log 2>&1
echo profile rc=$?
grep -E "_inplace|_summary_logits|_topk_rows|_sparse_decode|_redraw|_score_mass" $OUT/profile-*-gpu.txt | \
  awk '{print $1, $(NF-3), $(NF-1), $NF}'
tail -5 $OUT/profile.log
SKIP_TESTS=1 VARIANTS="full_budget_int4 budget_3pct_int4" bash docs/results/gpu/session29/s29c.sh
