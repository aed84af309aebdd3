#!/usr/bin/env bash
# session 26: 32K throughput (32 requests), the session-25 command (s25c.sh) with a share redrawn per step
# (DTYPE: the host pool's element type, fp8 as run; for session 35: DTYPE=int4 bash ... 0.55, against call 27e's 1.34x)
source .gpu/setup.sh || exit 1
python examples/gpu_offload_bench.py throughput --cuda-graphs --scorers qlandmark-scalar --host-kv-dtype ${DTYPE:-fp8} \
  --offload-requests 32 --offload-gpu-util 0.35 --synthetic-miss-rates ${1:-0.55} > $OUT/bench.log 2>&1
echo rc=$?
grep '^{"budget' $OUT/bench.log; tail -5 $OUT/bench.log
