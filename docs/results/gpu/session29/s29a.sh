#!/usr/bin/env bash
# session 29, call a: the CUDA tests of session 28's fixes (per-request path, batched selection of blocks
# and top-p, device cache fallbacks), then greedy correctness against stock on the tiny random-weight Llama
source .gpu/setup.sh || exit 1
python -m pytest -q -rs tests/test_runtime.py tests/test_host_pool.py tests/ops/test_select_batched.py \
  tests/test_device_cache.py > $OUT/pytest.log 2>&1
echo pytest rc=$?; tail -4 $OUT/pytest.log
python examples/gpu_offload_bench.py correctness --archs llama \
  --variants ${VARIANTS:-full_budget full_budget_no_cache_room full_budget_scratch} --scorers exact-topk --parallel 1 \
  > $OUT/correctness.log 2>&1
echo correctness rc=$?
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
                  f"wall={v.get('wall_s')} err={(v.get('error') or '')[:300]}")
PY
