#!/usr/bin/env bash
# Retrain the bundled toon model on a lent GPU (docs/toon-model.md, "Retraining"), everything in one
# command so the short device time goes to training. Results land in $OUT (assets.tgz, logs, reports).
#
# The device image has torch 2.11 and no diffusers: carry the wheels in .whl/ (git-ignored), made here with
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 -d .whl \
#     diffusers==0.42.1 transformers==5.24.0 accelerate==1.15.0 huggingface_hub safetensors tokenizers \
#     scikit-image click rich ...   (what KINDS.md's package list lacks)
# and run with carry [".whl"]:   MINUTES=6 bash scripts/device_toon_retrain.sh
# The SD-size training table (scripts/bench_train_sd15.py, about 5 minutes) is its own device call:
#   SD_ONLY=1 bash scripts/device_toon_retrain.sh
#
# What it does, by measurement (docs/toon-model.md): on the 16x16 latent grid the best IoU any mask
# can reach on expression edits is 0.41-0.50, so the IoU target (>= 0.6 overall, each expression
# >= 80 % of its ceiling) cannot be met there; SPEC=toon32 (default) builds a base whose VAE has
# factor 4 (32x32 latents at 128 px, ceiling 0.58-0.69) and trains the MCDM from scratch. SPEC=toon
# continues the bundled 16x16 model instead (no new VAE). Either way >= SAMPLES samples (10x the
# 245k of today's model) unless MINUTES runs out first; the model is then tuned (masks, on training
# identities), evaluated on the 200 held-out pairs, and bundled.
#
# Tiny CPU check of the same path (seconds): TINY=1 OUT=/tmp/out bash scripts/device_toon_retrain.sh
set -uo pipefail
PY=${PY:-python3}
OUT=${OUT:?set OUT to a folder for the results}
RUN=${RUN:-/tmp/retrain}
SPEC=${SPEC:-toon32}
DEVICE=${DEVICE:-cuda}
PAIRS=${PAIRS:-48000}
BATCH=${BATCH:-256}
SAMPLES=${SAMPLES:-2500000}
LR=${LR:-5e-4}
MINUTES=${MINUTES:-6}
PRECISION=${PRECISION:-bf16}
VAE_STEPS=${VAE_STEPS:-2000}
POOL=${POOL:-8192}
WORKERS=${WORKERS:-$(nproc)}
TUNE_PAIRS=${TUNE_PAIRS:-64}
EVAL_PAIRS=${EVAL_PAIRS:-200}
RES=128
if [ -n "${TINY:-}" ]; then
  SPEC=${SPEC_TINY:-tiny} DEVICE=cpu PAIRS=16 BATCH=2 SAMPLES=6 MINUTES=2 PRECISION=no VAE_STEPS=2 POOL=64 WORKERS=2
  TUNE_PAIRS=8 EVAL_PAIRS=8 RES=32
fi
STEPS=$(( (SAMPLES + BATCH - 1) / BATCH ))
if ls .whl/*.whl >/dev/null 2>&1; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=${PYTHONPATH:-}:$PWD
fi
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
mkdir -p "$OUT" "$RUN"
log() { echo "[$(( $(date +%s) - start )) s] $*" | tee -a "$OUT/log.txt"; }
start=$(date +%s)
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "no GPU"; \
  $PY -c "import torch, diffusers, transformers, accelerate; print('torch', torch.__version__, 'diffusers', diffusers.__version__, 'transformers', transformers.__version__, 'accelerate', accelerate.__version__)"; } | tee "$OUT/device.txt"

# SD_ONLY: what training costs at Stable Diffusion 1.5 size (docs/toon-model.md, "SD size"), nothing else.
if [ -n "${SD_ONLY:-}" ]; then
  sd_args=""; [ -n "${TINY:-}" ] && sd_args="--spec tiny --precision no --steps 4"
  $PY scripts/bench_train_sd15.py -o "$OUT/train_sd15.json" --timeout 120 $sd_args 2>&1 \
      | grep -v "Loading weights\|Writing model" | tee -a "$OUT/log.txt"
  exit "${PIPESTATUS[0]}"
fi

# 1. Pairs render on the CPU cores (sharded) while the base (if new) trains its VAE on the GPU.
pids=()
for i in $(seq 0 $((WORKERS - 1))); do
  $PY -m pedit gen-pairs -o "$RUN/pairs" -n "$PAIRS" --resolution "$RES" --seed 0 --shard "$i/$WORKERS" -q & pids+=($!)
done
if [ "$SPEC" = toon ]; then
  base=pedit/assets/toon-base; init="--init-from pedit/assets/toon-model"
else
  base="$RUN/base"; init=""
  $PY -m pedit.toon.recipe base --out "$base" --spec "$SPEC" --vae-steps "$VAE_STEPS" --batch-size 64 --pool-size "$POOL" \
      --device "$DEVICE" --workers "$WORKERS" 2>&1 | tee -a "$OUT/log.txt" || exit 1
fi
for pid in "${pids[@]}"; do wait "$pid" || exit 1; done
log "pairs and base ready ($SPEC)"

# 2. Train: the latent cache is built once (on the GPU), then every step reads tensors.
$PY -m pedit train --data "$RUN/pairs" -o "$RUN/model" --base "$base" --init scratch $init \
    --max-steps "$STEPS" --max-minutes "$MINUTES" --batch-size "$BATCH" --learning-rate "$LR" --warmup-steps 200 \
    --mixed-precision "$PRECISION" --num-workers "$(( WORKERS > 8 ? 8 : WORKERS ))" --checkpoint-every 1000000 --validate-every 0 --log-every 200 \
    --ema-decay 0.999 --seed 3 -q 2>&1 | grep -v "Loading weights\|Writing model" | tee -a "$OUT/log.txt"
test -f "$RUN/model/pedit.json" || { log "training wrote no model"; exit 1; }
$PY - "$RUN/model" "$BATCH" <<'PYEOF' | tee -a "$OUT/log.txt"
import json, sys
meta = json.load(open(f"{sys.argv[1]}/pedit.json"))
rows = open(f"{sys.argv[1]}/loss.csv").read().splitlines()[1:]
steps, secs = int(rows[-1].split(",")[0]), float(rows[-1].split(",")[3])
print(f"trained {meta['steps_trained']} steps x {sys.argv[2]} = {meta['steps_trained'] * int(sys.argv[2]):,} samples; "
      f"{steps / secs:.1f} steps/s over the run; last loss {rows[-1].split(',')[1]}")
PYEOF

# 3. Mask settings on training identities, 4. the held-out evaluation, 5. the package.
$PY scripts/tune_masks.py -m "$RUN/model" -n "$TUNE_PAIRS" -o "$RUN/mask-tune" --write 2>&1 | tail -n 30 | tee -a "$OUT/log.txt"
$PY -m pedit gen-pairs --source toon --exact -n "$EVAL_PAIRS" --resolution "$RES" --seed 1000000 -o "$RUN/eval-pairs" -q
$PY -m pedit eval -m "$RUN/model" --pairs "$RUN/eval-pairs" -o "$RUN/eval" --batch-size 25 --grid 6 \
    --device "$DEVICE" -q > "$OUT/eval.md" 2>>"$OUT/log.txt"
$PY -m pedit.toon.recipe bundle --model "$RUN/model" --base "$base" --dest "$RUN/assets"
cp "$RUN/model/loss.csv" "$OUT/loss.csv"; cp "$RUN/mask-tune/tuning.json" "$OUT/tuning.json"
cp "$RUN/eval/report.json" "$OUT/eval-report.json"
tar czf "$OUT/assets.tgz" -C "$RUN" assets
log "done"
ls -la "$OUT"
