#!/usr/bin/env bash
# session 25: the gather sweep: KV heads per launch on the head-major pool
export PYTHONPATH=.
OUT=$OUT python examples/gpu_gather.py --layers 8 --layouts head-major --hit-rates 1.0 0.9 0.3 \
  --tiles 32 128 256 512 --warps 4 8 16 --heads-per-launch 8 --reps 15 > $OUT/gather.log 2>&1
echo rc=$?
grep -E "gather_uva|tile=" $OUT/gather.log
tail -6 $OUT/gather.log
