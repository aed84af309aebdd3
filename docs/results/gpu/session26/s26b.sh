#!/usr/bin/env bash
# session 26: 128K profile at 55% of the selection redrawn per step (no stock)
source .gpu/setup.sh || exit 1
OUT=$OUT python examples/gpu_offload_bench.py profile --cuda-graphs --context 130000 --offload-requests 8 --no-stock \
  --steps 8 --scorers qlandmark-scalar --host-kv-dtype fp8 --synthetic-miss-rates 0.55 > $OUT/profile.log 2>&1
echo rc=$?
tail -40 $OUT/profile.log
