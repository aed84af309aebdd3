#!/usr/bin/env bash
# session 26: [stage last part] GPU tests of gather/device cache/runtime; gather kernel at 100%/45% hits;
# 128K throughput, stock and offload with 55% of the selection redrawn per step (the trained model's
# replayed last-selection cache misses ~55%: docs/results/cache)
[ -n "$1" ] && bash .gpu/s14stage.sh $1
source .gpu/setup.sh || exit 1
(timeout 200 python -m pytest tests/test_device_cache.py tests/csrc_triton/test_triton_gather.py tests/test_runtime.py -q -p no:cacheprovider 2>&1 | tail -4) | tee $OUT/pytest.log
OUT=$OUT timeout 120 python examples/gpu_gather.py --layers 8 --layouts head-major --hit-rates 1.0 0.45 --tiles 32 --warps 4 --reps 15 > $OUT/gather.log 2>&1
tail -8 $OUT/gather.log
OUT=$OUT python examples/gpu_offload_bench.py throughput --cuda-graphs --context 130000 --stock-requests 3 --offload-requests 8 \
  --steps 16 --scorers qlandmark-scalar --host-kv-dtype fp8 --synthetic-miss-rates 0.55 > $OUT/bench.log 2>&1
echo rc=$?
grep '^{"budget' $OUT/bench.log; tail -5 $OUT/bench.log
