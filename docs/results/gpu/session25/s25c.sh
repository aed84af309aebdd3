#!/usr/bin/env bash
# session 25: 32K throughput (32 requests), the session-22/23 command
source .gpu/setup.sh || exit 1
python examples/gpu_offload_bench.py throughput --cuda-graphs --scorers qlandmark-scalar --host-kv-dtype fp8 \
  --offload-requests 32 --offload-gpu-util 0.35 > $OUT/bench.log 2>&1
echo rc=$?
tail -30 $OUT/bench.log
