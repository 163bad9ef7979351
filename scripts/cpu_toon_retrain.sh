#!/usr/bin/env bash
# Continue training the bundled toon model on the CPU, in the background, resumable (docs/toon-model.md,
# "Retraining"). The same command starts and resumes: with a checkpoint in $RUN/model it adds --resume.
#
#   MAX_MINUTES=120 bash scripts/cpu_toon_retrain.sh # train for 2 h, end cleanly with a model; rerun to resume
#   bash scripts/cpu_toon_retrain.sh                 # train to the end (killed, it resumes from its last checkpoint)
#   STAGE=finish bash scripts/cpu_toon_retrain.sh    # after it stops: tune masks, evaluate, print what to bundle
#   TINY=1 RUN=/tmp/t bash scripts/cpu_toon_retrain.sh   # a seconds-long check of the whole path
#
# Same 16x16-latent base as the bundled model (it continues from its weights: --init-from), the
# latent cache (each step reads tensors), batch 32. SAMPLES is the issue's >= 10x today's 245k.
set -euo pipefail
PY=${PY:-python}
RUN=${RUN:-runs/toon-cpu}
STAGE=${STAGE:-train}
PAIRS=${PAIRS:-24000}
BATCH=${BATCH:-32}
SAMPLES=${SAMPLES:-2450000}
LR=${LR:-1e-4}
CHECKPOINT=${CHECKPOINT:-500}
VALIDATE=${VALIDATE:-5000}
TUNE_PAIRS=${TUNE_PAIRS:-64}
EVAL_PAIRS=${EVAL_PAIRS:-200}
if [ -n "${TINY:-}" ]; then PAIRS=16 BATCH=2 SAMPLES=${SAMPLES_TINY:-4} CHECKPOINT=2 VALIDATE=0 TUNE_PAIRS=8 EVAL_PAIRS=8; fi
STEPS=$(( (SAMPLES + BATCH - 1) / BATCH ))
export HF_HUB_OFFLINE=1 OMP_NUM_THREADS=${OMP_NUM_THREADS:-$(nproc)}

if [ "$STAGE" = train ]; then
  # gen-pairs is resumable and deterministic: a rerun only fills in what is missing.
  $PY -m pedit gen-pairs -o "$RUN/pairs" -n "$PAIRS" --resolution 128 --seed 0 -q
  resume=""
  if ls "$RUN"/model/checkpoints/step-* >/dev/null 2>&1; then resume="--resume"
  elif [ -e "$RUN/model/config.json" ]; then resume="--overwrite"; fi  # stopped before its first checkpoint
  $PY -m pedit train --data "$RUN/pairs" -o "$RUN/model" --base pedit/assets/toon-base --init scratch \
      --init-from pedit/assets/toon-model --max-steps "$STEPS" --batch-size "$BATCH" --learning-rate "$LR" \
      --warmup-steps 100 --checkpoint-every "$CHECKPOINT" --validate-every "$VALIDATE" --log-every 50 \
      --ema-decay 0.999 --seed 2 ${MAX_MINUTES:+--max-minutes "$MAX_MINUTES"} $resume -q
elif [ "$STAGE" = finish ]; then
  # The newest checkpoint becomes a model folder only when training ends (max steps or --max-minutes);
  # to stop early and keep the model, rerun the train stage with MAX_MINUTES set instead of killing it.
  test -f "$RUN/model/pedit.json" || { echo "no finished model in $RUN/model (let training end first)"; exit 1; }
  $PY scripts/tune_masks.py -m "$RUN/model" -n "$TUNE_PAIRS" -o "$RUN/mask-tune" --write
  $PY -m pedit gen-pairs --source toon --exact -n "$EVAL_PAIRS" --seed 1000000 -o "$RUN/eval-pairs" -q
  $PY -m pedit eval -m "$RUN/model" --pairs "$RUN/eval-pairs" -o "$RUN/eval" --batch-size 25 --grid 6 -q
  echo "to ship it: $PY -m pedit.toon.recipe bundle --model $RUN/model --base pedit/assets/toon-base"
else
  echo "STAGE must be train or finish"; exit 2
fi
