#!/usr/bin/env bash
# session 32, call s: run 25, run 24's command with a schedule of 6,400 steps instead of 16,000 (about 9 minutes
# of training), to see whether "a few minutes of an H100" reaches the targets. One call; the checkpoint comes back
# in parts under the device's 16 MiB file limit (join with `cat run25-ckpt.part-* > checkpoint.pt`).
python -m vllm_kvoffload.training.train --out /root/t25 --steps 6400 --batch-tokens 65536 --lr 2e-3 --prompt-weight 0.02 \
  --mix text2json=0.6,needle=0.3,copy=0.1 --decision-weight 3 --drill 0.4 --seed 0 --eval-samples 0 --log-every 10 \
  --session-limit ${LIMIT:-530} > $OUT/train.log 2>&1
echo train rc=$?; tail -3 $OUT/train.log
cp /root/t25/log.jsonl $OUT/run25-log.jsonl
cp /root/t25/run.json $OUT/run25-run.json 2>/dev/null
split -b 15M /root/t25/checkpoint.pt $OUT/run25-ckpt.part-
sha256sum /root/t25/checkpoint.pt | tee $OUT/run25-ckpt.sha256
tail -1 /root/t25/log.jsonl
