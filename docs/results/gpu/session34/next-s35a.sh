#!/usr/bin/env bash
# For session 35 (not run yet; needs the vLLM bundle staged, about 8 min): (1) the sparse-decode kernel's GPU
# tests after session 34's refactor (_selected_tile, _softmax_step; call 34f passed them on an H200, so this
# is the H100's check); (2) the 4-bit pool with the LRU device cache at 4x (session 29: hits 44% -> 70%) at
# 128K against stock, beside call 34c's 1.60x at factor 1. Session 30's miss-cost model predicts 1.88x at 70%
# hits. (2)'s step beside call 34c's also shows whether the refactor changed the kernel's speed.
source .gpu/setup.sh || exit 1
python -m pytest -q -p no:cacheprovider tests/csrc_triton/test_triton_sparse_decode.py > $OUT/pytest.log 2>&1
echo pytest rc=$?; tail -1 $OUT/pytest.log
DTYPE=int4 FACTORS=4 bash docs/results/gpu/session29/s29d.sh
