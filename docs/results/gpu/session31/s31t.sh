#!/usr/bin/env bash
# session 31, calls t1-t3: run 23, run 21's one seeded command (commit 16bf160's flags), to the end of its
# 16,000-step schedule (runs 21 and 22 each lost their machine at 85%). Each call trains for at most
# LIMIT seconds, then the next call on the same warm machine resumes from state.pt. Torch only.
T="--out /root/t23 --steps 16000 --batch-tokens 65536 --lr 2e-3 --prompt-weight 0.02 \
  --mix text2json=0.6,needle=0.3,copy=0.1 --decision-weight 3 --drill 0.4 --seed 0 --eval-samples 0 --log-every 10"
R=""; [ -f /root/t23/state.pt ] && R="--resume /root/t23/state.pt"
python -m vllm_kvoffload.training.train $T --session-limit ${LIMIT:-540} $R > $OUT/train.log 2>&1
echo train rc=$?; tail -3 $OUT/train.log
cp /root/t23/log.jsonl $OUT/run23-log.jsonl 2>/dev/null
[ -f /root/t23/checkpoint.pt ] && cp /root/t23/checkpoint.pt $OUT/ && cp /root/t23/run.json $OUT/run23-run.json 2>/dev/null
tail -1 /root/t23/log.jsonl
