#!/usr/bin/env bash
# session 30, call g: the profile at 128K with ${RATE:-0.01} of each selection redrawn (about 99% hits): the fill
# kernel's time per layer against the miss-cost model's (no stock engine: call f measured it)
source .gpu/setup.sh || exit 1
python examples/gpu_offload_bench.py profile --cuda-graphs --context 130000 --offload-requests 8 --steps 8 \
  --scorers qlandmark-scalar --host-kv-dtype fp8 --synthetic-miss-rates ${RATE:-0.01} --no-stock > $OUT/profile.log 2>&1
echo rc=$?
python -c "
import json,os
r=json.load(open(os.environ['OUT']+'/profile.json'))
for x in r['results']:
    print({k:x.get(k) for k in ('tag','n_requests','step_ms','decode_tok_s','fetch','kernel_ms_per_step','error')})
"
grep -E "_inplace|_summary_logits|_topk_rows|_sparse_decode|_redraw|_score_mass" $OUT/profile-*-gpu.txt | \
  awk '{print $1, $(NF-3), $(NF-1), $NF}'
