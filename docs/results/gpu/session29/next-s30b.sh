#!/usr/bin/env bash
# prepared in session 29 for the next GPU session (not yet run): the 128K profile with selections that come
# back (rate 0.2, jitter 0.09) at device cache factor ${1:-1}, the same mode as call 29e's factor 4, so the
# two factors' kernels compare directly; run once with 1 (about 5 minutes per call)
source .gpu/setup.sh || exit 1
python examples/gpu_offload_bench.py profile --cuda-graphs --context 130000 --offload-requests 8 --steps 8 \
  --scorers qlandmark-scalar --host-kv-dtype fp8 --synthetic-miss-rates 0.2 --synthetic-jitter 0.09 \
  --device-cache-factors ${1:-1} --no-stock > $OUT/profile.log 2>&1
echo rc=$?
python -c "
import json,os
r=json.load(open(os.environ['OUT']+'/profile.json'))
for x in r['results']:
    print({k:x.get(k) for k in ('tag','n_requests','step_ms','decode_tok_s','fetch','gpu_mem_gb','kernel_ms_per_step','error')})
"
grep -E "_lru|_inplace|_summary_logits|_topk_rows|_sparse_decode|_redraw|_score_mass" $OUT/profile-*-gpu.txt | \
  awk '{print $1, $(NF-3), $(NF-1), $NF}'
