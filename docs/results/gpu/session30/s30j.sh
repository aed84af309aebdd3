#!/usr/bin/env bash
# session 30, call j (branch int4-pool): 128K decode with the 4-bit pool at the trained model's hit rate (55% of
# each selection redrawn), against stock in the same call; the fp8 pool gave 1.34x there (call 27b), the
# miss-cost model predicts about 1.76x for 4-bit rows
source .gpu/setup.sh || exit 1
python examples/gpu_offload_bench.py throughput --cuda-graphs --context 130000 --stock-requests 3 \
  --offload-requests 8 --steps 16 --scorers qlandmark-scalar --host-kv-dtype int4 --synthetic-miss-rates ${RATE:-0.55} \
  ${EXTRA} > $OUT/bench.log 2>&1
echo rc=$?
python - <<'PY'
import json, os
r = json.load(open(os.environ["OUT"] + "/throughput.json"))
print(r["device"])
for x in r["results"]:
    f = x.get("fetch") or {}
    print(f"{x.get('config'):18s} n={x.get('n_requests')} tok/s={x.get('decode_tok_s')} step_ms={x.get('step_ms')} "
          f"x_stock={x.get('speedup_vs_stock')} hits={f.get('cache_hit_rate')} pcie_gb={f.get('pcie_gb_per_step')} "
          f"err={(x.get('error') or '')[:300]}")
PY
