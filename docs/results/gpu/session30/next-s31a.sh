#!/usr/bin/env bash
# prepared in session 30 for the next GPU session (branch int4-pool; not yet run; about 12 minutes after staging):
# why the 4-bit pool did not shorten the 128K step (call 30j: 1.30x against fp8's 1.34x at 46% hits)
source .gpu/setup.sh || exit 1
# (1) the row size alone: the in-place gather of rows of 64, 68 (a 4-bit row with its scale) and 128 bytes over the
# same pool layout; if 68 costs near 128, the rows' straddling of 32-byte sectors is the suspect to remove
for d in 64 68 128; do
  OUT=$OUT/gather-d$d python examples/gpu_gather.py --layers 8 --layouts head-major --hit-rates 0.9 0.7 0.45 --tiles 32 \
    --warps 4 --reps 15 --contiguous-slots --head-dim $d > $OUT/gather-d$d.log 2>&1
  echo "D=$d rc=$?"; sed -n '/per layer (us)/,$p' $OUT/gather-d$d.log
done
# (2) the 4-bit engine's kernels at 46% hits (fill, attention), against profile 30k's fp8 figures
python examples/gpu_offload_bench.py profile --cuda-graphs --context 130000 --offload-requests 8 --steps 8 \
  --scorers qlandmark-scalar --host-kv-dtype int4 --synthetic-miss-rates 0.55 --no-stock > $OUT/profile.log 2>&1
echo profile rc=$?
grep -E "_inplace|_summary_logits|_topk_rows|_sparse_decode|_redraw|_score_mass" $OUT/profile-*-gpu.txt | \
  awk '{print $1, $(NF-3), $(NF-1), $NF}'
# (3) the 4-bit pool's greedy tokens against stock on the trained model
SKIP_TESTS=1 VARIANTS="full_budget_int4 budget_3pct_int4" bash docs/results/gpu/session29/s29c.sh
