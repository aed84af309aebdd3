#!/usr/bin/env bash
# session 25: 128K profile (8 requests), no stock
source .gpu/setup.sh || exit 1
python examples/gpu_offload_bench.py profile --cuda-graphs --context 130000 --offload-requests 8 --scorers qlandmark-scalar \
  --host-kv-dtype fp8 --no-stock > $OUT/profile.log 2>&1
echo rc=$?
tail -40 $OUT/profile.log
