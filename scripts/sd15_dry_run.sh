#!/usr/bin/env bash
# The SD 1.5 dry run (docs/deployment.md, "SD 1.5 dry run"): every card command of the README against
# folders of Stable Diffusion 1.5 size laid out like the hub repositories (random weights, built by
# pedit.toon.hub_folders), at a small resolution and few steps. Per stage it records the exit code,
# wall time, peak resident memory (/usr/bin/time) and the files written, into OUT/dry_run.md and
# OUT/dry_run.json (rewritten after every stage, so a run cut short keeps what it had). A failing
# stage is recorded and the run goes on; a stage whose input is missing is recorded as skipped.
#
#   scripts/sd15_dry_run.sh OUT                                     # CPU, 128 px, 2 steps (about an hour on 2 cores)
#   DEVICE=cuda RESOLUTION=512 PRECISION=fp16 scripts/sd15_dry_run.sh OUT    # a GPU (scripts/gpu_check.sh)
#
# Settings (environment): SIZE (sd15; tiny: test-size folders, same commands), DEVICE (cpu), RESOLUTION (128), STEPS (2), PRECISION (fp32 on the CPU, fp16 on
# CUDA), TRAIN_STEPS (2), TRAIN_FLAGS (the CPU's: Adafactor, no EMA copy, batch 1, gradient checkpointing),
# CACHE (runs/sd15-cache: the built folders, reused by a rerun), STAGES (all; or a space-separated subset),
# MIN_FREE_GB (16: memory a stage waits for, up to WAIT_S=900 s, before it starts anyway), STAGE_TIMEOUT
# (3600 s), PYTHON (the venv's python), EXPORT_FP16_FLAGS (how `pedit export` is asked for fp16 ONNX),
# EDIT_FLAGS (extra `pedit edit` flags; none by default: an SD-size model is never traced into the
# TorchScript cache, pedit.model.traced.worth_tracing).
set -u
OUT=${1:?usage: scripts/sd15_dry_run.sh OUT_FOLDER}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PY=${PYTHON:-$ROOT/.venv/bin/python}
[ -x "$PY" ] || PY=python3
DEVICE=${DEVICE:-cpu}
SIZE=${SIZE:-sd15}  # or tiny: the same layout and commands at test size (a path check in minutes)
if [ "$SIZE" = tiny ]; then RES=${RESOLUTION:-32}; else RES=${RESOLUTION:-128}; fi
STEPS=${STEPS:-2}
if [ "$DEVICE" = cpu ]; then PREC=${PRECISION:-fp32}; else PREC=${PRECISION:-fp16}; fi
TRAIN_STEPS=${TRAIN_STEPS:-2}
if [ "$DEVICE" = cpu ]; then
  # 860M fp32 weights + grads are 6.9 GB; AdamW's moments (6.9 GB) and the EMA copy (3.4 GB) do not fit 24 GB.
  TRAIN_FLAGS=${TRAIN_FLAGS:---batch-size 1 --gradient-checkpointing --optimizer adafactor --ema-decay 0}
else
  TRAIN_FLAGS=${TRAIN_FLAGS:---batch-size 4 --gradient-checkpointing --mixed-precision fp16}
fi
CACHE=${CACHE:-$ROOT/runs/$SIZE-cache}
STAGES=${STAGES:-build toon-pairs gen-pairs-full-face gen-pairs-plus-face train eval edit-torch export-fp32 export-fp16 edit-onnx bench sticker-pack}
MIN_FREE_GB=${MIN_FREE_GB:-16}
WAIT_S=${WAIT_S:-900}
STAGE_TIMEOUT=${STAGE_TIMEOUT:-3600}
EXPORT_FP16_FLAGS=${EXPORT_FP16_FLAGS:---fp16}
export PYTHONPATH=$ROOT${PYTHONPATH:+:$PYTHONPATH} HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PEDIT_CACHE=${PEDIT_CACHE:-$CACHE/pedit-cache}
mkdir -p "$OUT/stages" "$CACHE"
OUT=$(cd "$OUT" && pwd)
for s in $STAGES; do rm -rf "${OUT:?}/stages/$s"; done  # this run's table shows only this run's results
mkdir -p "$OUT/edit-torch" "$OUT/edit-onnx"

BASE=$CACHE/sd15 CLIP=$CACHE/clip-vit-large-patch14 CNET=$CACHE/controlnet-openpose IPA=$CACHE/ip-adapter
IDS=$CACHE/identities PHOTO=$CACHE/identities/astronaut.png MODEL=$OUT/model
cat > "$OUT/settings.json" <<EOF
{"size": "$SIZE", "device": "$DEVICE", "resolution": $RES, "steps": $STEPS, "precision": "$PREC", "train_steps": $TRAIN_STEPS,
 "train_flags": "$TRAIN_FLAGS", "cache": "$CACHE", "host": "$(hostname)", "cpus": $(nproc),
 "memory_gib": $(awk '/MemTotal/ {printf "%.1f", $2 / 2^20}' /proc/meminfo), "started": "$(date -u +%FT%TZ)",
 "commit": "$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)"}
EOF

free_gb() { awk '/MemAvailable/ {printf "%d", $2 / 2^20}' /proc/meminfo; }

# stage NAME OUTPUT_PATH CMD...: wait for memory, run CMD under /usr/bin/time, record what it did.
stage() {
  local name=$1 target=$2; shift 2
  case " $STAGES " in *" $name "*) ;; *) return 0 ;; esac
  local dir=$OUT/stages/$name waited=0
  rm -rf "$dir"; mkdir -p "$dir"
  while [ "$(free_gb)" -lt "$MIN_FREE_GB" ] && [ "$waited" -lt "$WAIT_S" ]; do sleep 15; waited=$((waited + 15)); done
  printf '%q ' "$@" > "$dir/cmd"; echo >> "$dir/cmd"
  echo "$target" > "$dir/target"; echo "$waited" > "$dir/waited_s"; free_gb > "$dir/free_gb_at_start"
  cut -d' ' -f1 /proc/loadavg > "$dir/load_at_start"  # other work on the machine slows a stage: say how much
  echo "[$(date +%T)] $name (free ${waited:+after ${waited} s: }$(free_gb) GiB): $*" >&2
  /usr/bin/time -f '%e %M' -o "$dir/time" timeout "$STAGE_TIMEOUT" "$@" > "$dir/log" 2>&1
  echo $? > "$dir/rc"
  cut -d' ' -f1 /proc/loadavg > "$dir/load_at_end"
  echo "[$(date +%T)] $name: exit $(cat "$dir/rc"), $(cat "$dir/time" | tail -1) (s, KB)" >&2
  "$PY" "$ROOT/scripts/sd15_dry_run_table.py" "$OUT"
}

# skip NAME REASON: a stage that cannot run because an earlier one left nothing to run on.
skip() {
  case " $STAGES " in *" $1 "*) ;; *) return 0 ;; esac
  rm -rf "$OUT/stages/$1"; mkdir -p "$OUT/stages/$1"; echo "$2" > "$OUT/stages/$1/skipped"
  echo "[$(date +%T)] $1: skipped ($2)" >&2
  "$PY" "$ROOT/scripts/sd15_dry_run_table.py" "$OUT"
}

PEDIT=("$PY" -m pedit)  # an array, not a function: timeout runs it
ok() { [ -f "$OUT/stages/$1/rc" ] && [ "$(cat "$OUT/stages/$1/rc")" = 0 ]; }

stage build "$CACHE" "$PY" -c "
from pathlib import Path
from PIL import Image
from skimage.data import astronaut
from pedit.toon.hub_folders import build_hub_folders
from pedit.toon.hub_folders import TINY_VIT
from pedit.toon.parts import TINY
build_hub_folders('$CACHE', **(dict(spec=TINY, ip_vision=TINY_VIT) if '$SIZE' == 'tiny' else {}))
Path('$IDS').mkdir(exist_ok=True)
Image.fromarray(astronaut()).save('$PHOTO')  # a real portrait (public domain): identity, edit and selfie input
"
# Exact toon pairs (with ground-truth masks) at the dry run's resolution: eval's input, and train's when
# gen-pairs fails.
stage toon-pairs "$OUT/toon-pairs" "${PEDIT[@]}" gen-pairs --source toon --exact -n 4 --resolution "$RES" -o "$OUT/toon-pairs" -q
SD_ARGS=(--source sd --base "$BASE" --controlnet "$CNET" --identity-dir "$IDS" --resolution "$RES" --steps "$STEPS"
         --device "$DEVICE" --precision "$PREC" --directions laughing,angry,shocked --contact-sheet 2 -q)
# Three expressions, one pair each: the trained model then knows the three that sticker-pack edits toward
# (a pack holds at least 3 stickers).
stage gen-pairs-full-face "$OUT/pairs-sd" "${PEDIT[@]}" gen-pairs "${SD_ARGS[@]}" -n 3 -o "$OUT/pairs-sd" \
  --ip-adapter "$IPA/models/ip-adapter-full-face_sd15.safetensors"
stage gen-pairs-plus-face "$OUT/pairs-sd-plus" "${PEDIT[@]}" gen-pairs "${SD_ARGS[@]}" -n 1 -o "$OUT/pairs-sd-plus" \
  --ip-adapter "$IPA/models/ip-adapter-plus-face_sd15.safetensors"

PAIRS=$OUT/pairs-sd
ok gen-pairs-full-face || PAIRS=$OUT/toon-pairs  # train still runs at SD size when gen-pairs fails
echo "$PAIRS" > "$OUT/train_pairs"
# shellcheck disable=SC2086  # TRAIN_FLAGS is a list of flags
stage train "$MODEL" "${PEDIT[@]}" train --data "$PAIRS" --base "$BASE" --image-encoder "$CLIP" -o "$MODEL" --resolution "$RES" \
  --max-steps "$TRAIN_STEPS" --validate-every 0 --checkpoint-every 1000 --log-every 1 --overwrite -q $TRAIN_FLAGS

if ok train; then
  stage eval "$OUT/eval" "${PEDIT[@]}" eval -m "$MODEL" --pairs "$OUT/toon-pairs" --limit 1 --steps "$STEPS" --batch-size 1 \
    --methods ours --grid 1 --device "$DEVICE" --precision "$PREC" -o "$OUT/eval" --overwrite -q
  EDIT=("${PEDIT[@]}" edit "$PHOTO" -d laughing -m "$MODEL" --steps "$STEPS" --mask-noises 2 --device "$DEVICE" --precision "$PREC"
        --save-mask --overwrite -q ${EDIT_FLAGS-})
  stage edit-torch "$OUT/edit-torch" "${EDIT[@]}" --backend torch -o "$OUT/edit-torch/astronaut.png"
  stage export-fp32 "$OUT/engines-fp32" "${PEDIT[@]}" export -m "$MODEL" -o "$OUT/engines-fp32" --mask-noises 2 -q
  # shellcheck disable=SC2086
  stage export-fp16 "$OUT/engines-fp16" "${PEDIT[@]}" export -m "$MODEL" -o "$OUT/engines-fp16" --mask-noises 2 -q $EXPORT_FP16_FLAGS
  if ok export-fp32; then
    stage edit-onnx "$OUT/edit-onnx" "${EDIT[@]}" --backend onnx --engines "$OUT/engines-fp32" -o "$OUT/edit-onnx/astronaut.png"
  else
    skip edit-onnx "export-fp32 failed: no ONNX folder"
  fi
  stage bench "$OUT/bench.json" "${PEDIT[@]}" bench -m "$MODEL" --backend torch --steps "$STEPS" --repeats 1 --warmup 0 \
    --device "$DEVICE" --precision "$PREC" -o "$OUT/bench.json" --overwrite -q
  stage sticker-pack "$OUT/stickers" "${PEDIT[@]}" sticker-pack "$PHOTO" -o "$OUT/stickers" -m "$MODEL" --base "$BASE" \
    --expressions laughing,angry,shocked --candidates 1 --cartoon-steps "$STEPS" --train-steps "$STEPS" --views 2 --steps "$STEPS" \
    --device "$DEVICE" --overwrite -q
else
  for s in eval edit-torch export-fp32 export-fp16 edit-onnx bench sticker-pack; do skip "$s" "train failed: no model folder"; done
fi
echo "table: $OUT/dry_run.md" >&2
