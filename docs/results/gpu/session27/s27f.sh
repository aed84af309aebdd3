#!/usr/bin/env bash
# session 27: 128K throughput, stock and offload at budget $1 with 55% redrawn per step
source .gpu/setup.sh || exit 1
OUT=$OUT python examples/gpu_offload_bench.py throughput --cuda-graphs --context 130000 --stock-requests 3 --offload-requests 8 \
  --steps 16 --scorers qlandmark-scalar --host-kv-dtype fp8 --synthetic-miss-rates 0.55 --budgets $1 > $OUT/bench.log 2>&1
echo rc=$?
grep '^{"budget' $OUT/bench.log
