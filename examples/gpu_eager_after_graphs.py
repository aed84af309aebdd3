#!/usr/bin/env python
"""GPU diagnostic: the 32K offload engine of ``gpu_offload_bench.py throughput`` (qlandmark-scalar,
3%, fp8 pool, 32 requests, in-process engine) decodes with decode graphs, then with them turned off
mid-run; the eager steps are timed, then profiled (torch.profiler: kernel time per step against the
step), then timed again. Prints one JSON line; OUT=dir also receives the profiler's tables
(diag-gpu.txt, diag-cpu.txt). Needs vLLM on a CUDA GPU (../shared/gpu/README.md):

    OUT=/tmp/out python examples/gpu_eager_after_graphs.py
"""
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"  # the engine core in this process, so its runtime can be reached
import gpu_offload_bench as g  # noqa: E402
import torch  # noqa: E402

cfg = json.dumps({"scorer": "qlandmark-scalar", "budget": 0.03, "window_tokens": 256, "sink_tokens": 16, "host_gb": 64,
                  "device_cache": True, "host_kv_dtype": "fp8"})
eng = g.SteadyEngine(str(g.dummy_llama()), 32, 32768, cfg, 0.35, out_tokens=512, graphs=True)
out = {"graphs": eng.timed(16)["step_s"] * 1e3}
g.set_decode_graphs(eng, False)
out["eager_after_graphs"] = eng.timed(16)["step_s"] * 1e3
step_s, ka, out["kernel_ms_per_step"] = g.timed_under_profiler(eng, 4)
out["eager_after_graphs_profiled"] = step_s * 1e3
out["torch_cuda_memory_gb"] = torch.cuda.memory_reserved() / 2**30
out["free_gb"] = torch.cuda.mem_get_info()[0] / 2**30
(g.OUT / "diag-gpu.txt").write_text(ka.table(sort_by="self_device_time_total", row_limit=25))
(g.OUT / "diag-cpu.txt").write_text(ka.table(sort_by="self_cpu_time_total", row_limit=25))
out["eager_again"] = eng.timed(16)["step_s"] * 1e3
print(json.dumps(out))
