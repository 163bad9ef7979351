#!/usr/bin/env bash
# Reproduces the bundled toon model (pedit/assets/toon-base, pedit/assets/toon-model):
#   scripts/make_toon_model.sh                 # on a GPU (see docs/toon-model.md for the run that made it)
#   DEVICE=cpu STEPS=5000 BATCH=32 scripts/make_toon_model.sh   # on a CPU: hours
# Every stage is the project's own command: a toon base with a trained VAE, imperfect toon pairs,
# `pedit train --init scratch` (the same code path as a Stable Diffusion MCDM), then packaging.
set -euo pipefail
PY=${PY:-python}
RUN=${RUN:-runs/toon}
DEVICE=${DEVICE:-cuda}
SPEC=${SPEC:-toon}
RES=${RES:-128}
VAE_STEPS=${VAE_STEPS:-3000}
VAE_BATCH=${VAE_BATCH:-64}
POOL=${POOL:-8192}
PAIRS=${PAIRS:-24000}
STEPS=${STEPS:-6000}
BATCH=${BATCH:-128}
LR=${LR:-3e-4}
MINUTES=${MINUTES:-}
PRECISION=${PRECISION:-bf16}
WORKERS=${WORKERS:-$(nproc)}
VALIDATE=${VALIDATE:-2000}
DEST=${DEST:-pedit/assets}

# Pairs render on the CPU (sharded) while the VAE trains on the GPU.
pids=()
for i in $(seq 0 $((WORKERS - 1))); do
  $PY -m pedit gen-pairs -o "$RUN/pairs" -n "$PAIRS" --resolution "$RES" --seed 0 --shard "$i/$WORKERS" -q &
  pids+=($!)
done
$PY -m pedit.toon.recipe base --out "$RUN/base" --spec "$SPEC" --vae-steps "$VAE_STEPS" --batch-size "$VAE_BATCH" \
    --pool-size "$POOL" --device "$DEVICE" --workers "$WORKERS"
for pid in "${pids[@]}"; do wait "$pid"; done
$PY -m pedit train --data "$RUN/pairs" -o "$RUN/model" --base "$RUN/base" --init scratch \
    --max-steps "$STEPS" ${MINUTES:+--max-minutes "$MINUTES"} --batch-size "$BATCH" --learning-rate "$LR" \
    --warmup-steps 200 --mixed-precision "$PRECISION" --num-workers "$((WORKERS > 8 ? 8 : WORKERS))" \
    --checkpoint-every 2000 --validate-every "$VALIDATE" --ema-decay 0.999 -q
$PY -m pedit.toon.recipe bundle --model "$RUN/model" --base "$RUN/base" --dest "$DEST"
