#!/usr/bin/env bash
# Host-side profile of the offload decode path on a GPU (engine in-process, cProfile).
# Usage (GPU machine, vLLM available): bash examples/gpu_profile_host.sh [requests] [context]
set -euo pipefail
OUT=${OUT:-gpu-results}; mkdir -p "$OUT/llama-3.1-8b-dummy"
python -c "import json,sys; sys.path.insert(0,'examples'); import gpu_offload_bench as b; json.dump(b.LLAMA_31_8B, open('$OUT/llama-3.1-8b-dummy/config.json','w'))"
cfg='{"scorer": "exact-topk", "budget": 0.03, "window_tokens": 256, "sink_tokens": 16, "host_gb": 24}'
VLLM_ENABLE_V1_MULTIPROCESSING=0 python -m cProfile -o "$OUT/host.prof" examples/gpu_offload_bench.py \
  _throughput "$OUT/llama-3.1-8b-dummy" "${1:-8}" "${2:-16384}" 64 "$cfg" 0.45 | tail -1
python -c "import pstats; pstats.Stats('$OUT/host.prof').sort_stats('tottime').print_stats(25)" | tail -40
