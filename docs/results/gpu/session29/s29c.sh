#!/usr/bin/env bash
# session 29, call c: the LRU device cache's kernels on the GPU against their references, then greedy
# correctness through vLLM on the trained model: the LRU cache against the in-place one (the same tokens)
# and against stock, with its hit rate beside the in-place cache's
# (SKIP_TESTS=1: the correctness part alone; VARIANTS: other correctness variants)
source .gpu/setup.sh || exit 1
if [ -z "$SKIP_TESTS" ]; then
python -m pytest -q -p no:cacheprovider -rE tests/csrc_triton/test_triton_gather.py -k "lru or inplace" \
  tests/csrc_triton/test_triton_sparse_decode.py tests/csrc_triton/test_triton_synthetic_ranks.py \
  tests/test_runtime.py tests/ops/test_gather_lru_ref.py > $OUT/pytest.log 2>&1
echo pytest rc=$?; tail -2 $OUT/pytest.log; grep -E "^(E |ERROR|FAILED)" $OUT/pytest.log | head -20
fi
python examples/gpu_offload_bench.py correctness --model vllm_kvoffload/models/kvoffload-tiny --archs \
  --variants ${VARIANTS:-full_budget_lru budget_3pct budget_3pct_lru} --scorers exact-topk --parallel 1 \
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
            twin = {a: b for a, b in v.items() if a.startswith("against_")}
            print(f"{k:26s} prefix={v.get('identical_prefix')} maxdiff={v.get('max_logprob_diff_on_prefix')} "
                  f"gathered={f.get('tokens_gathered')} hits={f.get('cache_hit_rate')} "
                  f"uncached={f.get('steps_without_device_cache')} wall={v.get('wall_s')} {twin} "
                  f"err={(v.get('error') or '')[:300]}")
PY
