#!/usr/bin/env bash
# session 28, NOT RUN (no device time left): call 28a again after the HostPool.gather fix, one engine at a time
# (the per-request fallback at full budget must give stock's greedy tokens), on the tiny random-weight model
source .gpu/setup.sh || exit 1
python examples/gpu_offload_bench.py correctness --archs llama \
  --variants full_budget full_budget_no_cache_room --scorers exact-topk --parallel 1 \
  > $OUT/correctness.log 2>&1
echo rc=$?
python - <<'PY'
import json, os
r = json.load(open(os.environ["OUT"] + "/correctness.json"))
for arch, e in r.items():
    print(arch, "stock_error", e.get("stock_error"))
    for k, v in e.items():
        if isinstance(v, dict):
            f = v.get("fetch") or {}
            print(f"{k:28s} prefix={v.get('identical_prefix')} maxdiff={v.get('max_logprob_diff_on_prefix')} "
                  f"gathered={f.get('tokens_gathered')} uncached={f.get('steps_without_device_cache')} "
                  f"wall={v.get('wall_s')} err={v.get('error')}")
PY
