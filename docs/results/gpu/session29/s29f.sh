#!/usr/bin/env bash
# session 29, call f: the LRU fill over the misses in rank order (not over every selected token), its GPU
# tests, then the 128K profile of the decode with selections that come back (rate 0.2, jitter 0.09) at
# device cache factor ${1:-4} (no stock engine: call d measured it)
source .gpu/setup.sh || exit 1
if [ -z "$SKIP_TESTS" ]; then
python -m pytest -q -p no:cacheprovider -rE tests/csrc_triton/test_triton_gather.py tests/test_runtime.py -k "lru" \
  > $OUT/pytest.log 2>&1
echo pytest rc=$?; tail -1 $OUT/pytest.log; grep -E "^(E |ERROR|FAILED)" $OUT/pytest.log | head -20
fi
python examples/gpu_offload_bench.py profile --cuda-graphs --context 130000 --offload-requests 8 --steps 8 \
  --scorers qlandmark-scalar --host-kv-dtype fp8 --synthetic-miss-rates 0.2 --synthetic-jitter 0.09 \
  --device-cache-factors ${1:-4} --no-stock > $OUT/profile.log 2>&1
echo rc=$?
python -c "
import json,os
r=json.load(open(os.environ['OUT']+'/profile.json'))
for x in r['results']:
    print({k:x.get(k) for k in ('tag','n_requests','step_ms','decode_tok_s','fetch','gpu_mem_gb','kernel_ms_per_step','error')})
"
grep -E "_lru|_inplace|_summary_logits|_topk_rows|_sparse_decode|_redraw|_score_mass|unified_attention" $OUT/profile-*-gpu.txt | \
  awk '{print $1, $(NF-3), $(NF-1), $NF}'
