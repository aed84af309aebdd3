#!/usr/bin/env bash
# prepared in session 29, run in session 30 as call 30a: (1) what the misses' fixed cost is: the
# in-place gather at miss rates from 0.1% to 55%, with the requests' slots contiguous and scattered, and
# programs of 8 to 128 tokens with 1 to 8 warps (is the fill bound by its programs' latency?);
# (2) the device cache's fallbacks against stock on the trained model (random weights cannot tell)
source .gpu/setup.sh || exit 1
for slots in --contiguous-slots ""; do
  mkdir -p $OUT/gather$slots
  OUT=$OUT/gather$slots python examples/gpu_gather.py --layers 8 --layouts head-major \
    --hit-rates 1.0 0.999 0.99 0.9 0.7 0.45 --tiles 8 32 128 --warps 1 4 8 --reps 15 $slots > $OUT/gather$slots.log 2>&1
  echo "gather $slots rc=$?"; grep -E "misses alone" $OUT/gather$slots.log; sed -n '/per layer (us)/,$p' $OUT/gather$slots.log
done
# the fallbacks on the trained model, through call 29c's script (its correctness part and printer)
SKIP_TESTS=1 VARIANTS="full_budget full_budget_no_cache_room full_budget_scratch full_budget_blocks" \
  bash docs/results/gpu/session29/s29c.sh
