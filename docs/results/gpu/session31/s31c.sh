#!/usr/bin/env bash
# session 31, call c (branch int4-pool): the 4-bit pool's greedy tokens against stock on the trained model,
# at full budget and at 3% (part 3 of session 30's next-s31a.sh)
SKIP_TESTS=1 VARIANTS="full_budget_int4 budget_3pct_int4" bash docs/results/gpu/session29/s29c.sh
