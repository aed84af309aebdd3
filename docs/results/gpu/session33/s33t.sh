#!/usr/bin/env bash
# session 33, calls t*: run 26 (RUN=26) and run 27 (RUN=27, after the workers became single-threaded), run 24's seeded command with two changes: the training forward compiled
# (--compile; call 33p: 45-89 ms a step against eager's 73-114 at 65,536 tokens) and half the tokens per
# step (--batch-tokens 32768; 25-50 ms compiled), same 16,000 steps. Predicted 8.7 min. Torch only.
# A call trains for at most LIMIT seconds; the next call on the same warm machine resumes from state.pt.
# The checkpoint comes back in parts of 15 MiB (join: cat run26-ckpt.part-* > checkpoint.pt).
# For session 34 (not run yet): RUN=28 BATCH=65536 is run 24's command compiled (about 15.5 min predicted, in two
# calls); EXTRA=--deterministic adds the flag (the defaults are the commands as run). Session 34 ran RUN=28 BATCH=65536
# LIMIT=540 (call 34t1; lost before its resume). STEPS (16,000 as run) sets a shorter schedule (for a run 29).
RUN=${RUN:-26}; SEED=${SEED:-0}; BATCH=${BATCH:-32768}; STEPS=${STEPS:-16000}; EXTRA=${EXTRA:-}; D=/root/t$RUN
T="--out $D --steps $STEPS --batch-tokens $BATCH --lr 2e-3 --prompt-weight 0.02 \
  --mix text2json=0.6,needle=0.3,copy=0.1 --decision-weight 3 --drill 0.4 --seed $SEED --eval-samples 0 \
  --log-every 10 --compile $EXTRA"
R=""; [ -f $D/state.pt ] && R="--resume $D/state.pt"
nvidia-smi --query-gpu=name --format=csv,noheader
python -m vllm_kvoffload.training.train $T --session-limit ${LIMIT:-550} $R > $OUT/train.log 2>&1
echo train rc=$?; grep -v recompil $OUT/train.log | tail -3
cp $D/log.jsonl $OUT/run$RUN-log.jsonl 2>/dev/null
if [ -f $D/checkpoint.pt ]; then
  cp $D/run.json $OUT/run$RUN-run.json
  split -b 15M $D/checkpoint.pt $OUT/run$RUN-ckpt.part-
  sha256sum $D/checkpoint.pt | tee $OUT/run$RUN-ckpt.sha256
fi
tail -1 $D/log.jsonl
