#!/usr/bin/env bash
# session 26: [stage last part] GPU tests (host pool, gathers, stores, runtime, device cache, graphs); the gather
# kernel at the new pool layout against session 25's; 128K throughput with 20% redrawn per step
[ -n "$1" ] && bash .gpu/s14stage.sh $1
source .gpu/setup.sh || exit 1
(timeout 240 python -m pytest tests/test_host_pool.py tests/csrc_triton/test_triton_gather.py tests/csrc_triton/test_triton_offload.py \
  tests/test_runtime.py tests/test_device_cache.py tests/test_decode_graphs.py -q -p no:cacheprovider 2>&1 | tail -4) | tee $OUT/pytest.log
OUT=$OUT timeout 150 python examples/gpu_gather.py --layers 8 --layouts head-major head-major-kv-outer --hit-rates 1.0 0.8 0.45 \
  --tiles 32 --warps 4 --reps 15 > $OUT/gather.log 2>&1
tail -9 $OUT/gather.log
OUT=$OUT python examples/gpu_offload_bench.py throughput --cuda-graphs --context 130000 --stock-requests 3 --offload-requests 8 \
  --steps 16 --scorers qlandmark-scalar --host-kv-dtype fp8 --synthetic-miss-rates 0.2 > $OUT/bench.log 2>&1
echo rc=$?
grep '^{"budget' $OUT/bench.log; tail -3 $OUT/bench.log
