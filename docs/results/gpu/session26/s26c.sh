#!/usr/bin/env bash
# session 26: 128K throughput, stock and offload with 20% redrawn per step
source .gpu/setup.sh || exit 1
OUT=$OUT python examples/gpu_offload_bench.py throughput --cuda-graphs --context 130000 --stock-requests 3 --offload-requests 8 \
  --steps 16 --scorers qlandmark-scalar --host-kv-dtype fp8 --synthetic-miss-rates ${1:-0.2} > $OUT/bench.log 2>&1
echo rc=$?
grep '^{"budget' $OUT/bench.log; tail -5 $OUT/bench.log
