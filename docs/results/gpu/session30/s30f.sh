#!/usr/bin/env bash
# session 30, call f: the steep end of the miss-cost model. 128K decode with 5% of each selection redrawn
# (about 95% device-cache hits), against stock in the same call; the model (miss_cost_model.py) puts the
# fill at about 250-300 us per layer there, against 726-803 at 46-70% hits
source .gpu/setup.sh || exit 1
python examples/gpu_offload_bench.py throughput --cuda-graphs --context 130000 --stock-requests 3 \
  --offload-requests 8 --steps 16 --scorers qlandmark-scalar --host-kv-dtype fp8 --synthetic-miss-rates ${RATE:-0.05} \
  ${EXTRA} > $OUT/bench.log 2>&1
echo rc=$?
python - <<'PY'
import json, os
r = json.load(open(os.environ["OUT"] + "/throughput.json"))
print(r["device"])
for x in r["results"]:
    f = x.get("fetch") or {}
    print(f"{x.get('config'):18s} n={x.get('n_requests')} tok/s={x.get('decode_tok_s')} step_ms={x.get('step_ms')} "
          f"x_stock={x.get('speedup_vs_stock')} hits={f.get('cache_hit_rate')} err={(x.get('error') or '')[:200]}")
PY
