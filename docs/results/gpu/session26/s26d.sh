#!/usr/bin/env bash
# session 26: 32K throughput (32 requests), the session-25 command (s25c.sh) with a share redrawn per step
source .gpu/setup.sh || exit 1
python examples/gpu_offload_bench.py throughput --cuda-graphs --scorers qlandmark-scalar --host-kv-dtype fp8 \
  --offload-requests 32 --offload-gpu-util 0.35 --synthetic-miss-rates ${1:-0.55} > $OUT/bench.log 2>&1
echo rc=$?
grep '^{"budget' $OUT/bench.log; tail -5 $OUT/bench.log
