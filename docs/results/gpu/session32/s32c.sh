#!/usr/bin/env bash
# session 32, calls c1-c3: greedy tokens against stock vLLM on the newly shipped model (run 24), 4 held-out
# 8K Text2JSON prompts, 256 tokens each, as session 29's s29c.sh did for run 19a.
# PART=main (c1): stock again; exact-topk, exact-topk-fp8 and qlandmark-scalar at full budget, at 3%, and at
# 3% with the LRU device cache (factor 4). PART=rest (c2, PAR=2): the other seven scorers at full budget. PART=fp8
# (c3, PAR=1): the two exact-topk-fp8 runs of c1 that failed at start-up (vLLM's memory profiling raced with a
# parallel engine).
source .gpu/setup.sh || exit 1
export PART=${PART:-main}
if [ "${PART:-main}" = main ]; then
  ARGS="--variants stock_again full_budget budget_3pct budget_3pct_lru --scorers exact-topk exact-topk-fp8 qlandmark-scalar"
elif [ "$PART" = rest ]; then
  ARGS="--variants full_budget --scorers oracle qlandmark shadowkv quest arkvale infinigen lrqk"
else  # PART=fp8
  ARGS="--variants full_budget budget_3pct_lru --scorers exact-topk-fp8"
fi
t0=$SECONDS
python examples/gpu_offload_bench.py correctness --model vllm_kvoffload/models/kvoffload-tiny --archs \
  $ARGS --parallel ${PAR:-3} > $OUT/correctness.log 2>&1
echo correctness rc=$? wall $((SECONDS-t0)) s
python - <<'PY'
import json, os
r = json.load(open(os.environ["OUT"] + "/correctness.json"))
os.rename(os.environ["OUT"] + "/correctness.json", os.environ["OUT"] + "/correctness-" + os.environ.get("PART", "main") + ".json")
for arch, e in r.items():
    print(arch, "stock_error", e.get("stock_error"))
    for k, v in e.items():
        if isinstance(v, dict):
            f = v.get("fetch") or {}
            print(f"{k:36s} prefix={v.get('identical_prefix')} maxdiff={v.get('max_logprob_diff_on_prefix')} "
                  f"gathered={f.get('tokens_gathered')} hits={f.get('cache_hit_rate')} wall={v.get('wall_s')} "
                  f"err={(v.get('error') or '')[:300]}")
PY
