#!/usr/bin/env bash
# session 25: 128K throughput (8 requests), the session-22/23 command
source .gpu/setup.sh || exit 1
python examples/gpu_offload_bench.py throughput --cuda-graphs --context 130000 --stock-requests 3 --offload-requests 8 \
  --steps 16 --scorers qlandmark-scalar --host-kv-dtype fp8 > $OUT/bench.log 2>&1
echo rc=$?
tail -30 $OUT/bench.log
