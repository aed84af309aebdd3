#!/usr/bin/env bash
# session 27, call b: GPU tests of the pool's memory and the gathers; 128K throughput with 55% redrawn,
# the synthetic ranking now one Triton pass (48bc0db)
source .gpu/setup.sh || exit 1
python -m pytest -q -p no:cacheprovider -rE tests/test_host_memory.py tests/test_host_pool.py tests/csrc_triton/test_triton_gather.py \
  tests/csrc_triton/test_triton_synthetic_ranks.py > $OUT/pytest.log 2>&1
echo pytest rc=$?; tail -3 $OUT/pytest.log; grep -E "^(E |ERROR|FAILED)" $OUT/pytest.log | head -20
OUT=$OUT python examples/gpu_offload_bench.py throughput --cuda-graphs --context 130000 --stock-requests 3 --offload-requests 8 \
  --steps 16 --scorers qlandmark-scalar --host-kv-dtype fp8 --synthetic-miss-rates ${1:-0.55} > $OUT/bench.log 2>&1
echo rc=$?
grep '^{"budget' $OUT/bench.log; tail -5 $OUT/bench.log
