#!/usr/bin/env bash
# session 32, calls t1-t3: run 24, run 21's one seeded command (as s31t.sh, run 23) trained to the end of its
# 16,000-step schedule. Each call trains for at most LIMIT seconds; the next call on the same warm machine
# resumes from state.pt. Torch only. New against s31t.sh: the finished checkpoint comes back in parts under
# the device's 16 MiB file limit (join them with `cat run24-ckpt.part-* > checkpoint.pt`).
T="--out /root/t24 --steps 16000 --batch-tokens 65536 --lr 2e-3 --prompt-weight 0.02 \
  --mix text2json=0.6,needle=0.3,copy=0.1 --decision-weight 3 --drill 0.4 --seed 0 --eval-samples 0 --log-every 10"
R=""; [ -f /root/t24/state.pt ] && R="--resume /root/t24/state.pt"
python -m vllm_kvoffload.training.train $T --session-limit ${LIMIT:-540} $R > $OUT/train.log 2>&1
echo train rc=$?; tail -3 $OUT/train.log
cp /root/t24/log.jsonl $OUT/run24-log.jsonl 2>/dev/null
if [ -f /root/t24/checkpoint.pt ]; then
  cp /root/t24/run.json $OUT/run24-run.json
  split -b 15M /root/t24/checkpoint.pt $OUT/run24-ckpt.part-
  sha256sum /root/t24/checkpoint.pt | tee $OUT/run24-ckpt.sha256
fi
tail -1 /root/t24/log.jsonl
