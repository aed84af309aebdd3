#!/usr/bin/env bash
# Call 33p (bare H100): the training step's time, eager against compiled, across the curriculum's phases;
# which attention kernels a compiled step runs. Writes $OUT/step_time*.log and $OUT/kernels.log.
set -uo pipefail
nvidia-smi --query-gpu=name --format=csv,noheader
export TORCH_LOGS=recompiles
python -m vllm_kvoffload.training.step_time --variants eager,compile 2>&1 | tee $OUT/step_time.log
python -m vllm_kvoffload.training.step_time --variants eager,compile --batch-tokens 32768 2>&1 | tee $OUT/step_time_32k.log
python - <<'PY' 2>&1 | tee $OUT/kernels.log
import torch
from torch.profiler import profile, ProfilerActivity
from vllm_kvoffload.training import data
from vllm_kvoffload.training.model import LlamaLM, ModelConfig
from vllm_kvoffload.training.train import compiled, optimizer_step
b = data.make_batch(0, 1, 0.9, 65536, 0.02, data.parse_mix("text2json=0.6,needle=0.3,copy=0.1"), 3.0, 0.0)
model = LlamaLM(ModelConfig(vocab_size=data.VOCAB_SIZE)).cuda()
opt = torch.optim.AdamW(model.parameters(), fused=True)
for name, fwd in (("eager", model), ("compile", compiled(model))):
    args = (b.ids.cuda(), b.targets.cuda(), b.weights.cuda())
    for _ in range(2):
        optimizer_step(fwd, model, opt, *args)
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as p:
        optimizer_step(fwd, model, opt, *args)
        torch.cuda.synchronize()
    print(f"== {name}: batch {tuple(b.ids.shape)}, peak memory {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB")
    print(p.key_averages().table(sort_by="cuda_time_total", row_limit=15))
PY
