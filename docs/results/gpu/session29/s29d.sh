#!/usr/bin/env bash
# session 29, call d: 128K decode throughput with selections that leave and come back (rate 0.2, jitter
# 0.09: the trained model's replay), the device cache at 1 and 4 selections wide, against stock
# (DTYPE: the host pool's element type, fp8 as run in session 29; session 34's call c: DTYPE=int4 FACTORS=1)
source .gpu/setup.sh || exit 1
python examples/gpu_offload_bench.py throughput --cuda-graphs --context 130000 --stock-requests 3 \
  --offload-requests 8 --steps 16 --scorers qlandmark-scalar --host-kv-dtype ${DTYPE:-fp8} --synthetic-miss-rates 0.2 \
  --synthetic-jitter 0.09 --device-cache-factors ${FACTORS:-1 4} ${EXTRA} > $OUT/bench.log 2>&1
echo rc=$?
grep '^{"budget' $OUT/bench.log
python - <<'PY'
import json, os
r = json.load(open(os.environ["OUT"] + "/throughput.json"))
print(r["device"])
for x in r["results"]:
    f = x.get("fetch") or {}
    print(f"{x.get('config'):18s} factor={x.get('device_cache_factor')} n={x.get('n_requests')} "
          f"tok/s={x.get('decode_tok_s')} step_ms={x.get('step_ms')} x_stock={x.get('speedup_vs_stock')} "
          f"hits={f.get('cache_hit_rate')} mem={x.get('gpu_mem_gb')} err={(x.get('error') or '')[:200]}")
PY
