#!/usr/bin/env bash
# The run on a lent GPU that made the bundled toon model (see docs/toon-model.md). The device's image
# has torch but no diffusers: its wheel travels in .whl/ (git-ignored). Results are written to $OUT.
set -uo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch, diffusers, transformers, accelerate; print('torch', torch.__version__, 'diffusers', diffusers.__version__, 'transformers', transformers.__version__, 'accelerate', accelerate.__version__)" | tee -a "$OUT/gpu.txt"
start=$(date +%s)
PY=python3 RUN=/tmp/toon DEVICE=cuda WORKERS=16 DEST=/tmp/assets \
  VAE_STEPS=${VAE_STEPS:-2000} STEPS=${STEPS:-20000} MINUTES=${MINUTES:-3} BATCH=${BATCH:-128} VALIDATE=${VALIDATE:-1000000} \
  scripts/make_toon_model.sh 2>&1 | grep -v "Loading weights\|Writing model shards" | tee "$OUT/log.txt"
echo "total seconds: $(( $(date +%s) - start ))" | tee -a "$OUT/log.txt"
tar czf "$OUT/assets.tgz" -C /tmp assets
tar czf "$OUT/run.tgz" -C /tmp/toon model/loss.csv model/config.json model/validation base/vae_training.json pairs/config.json
ls -la "$OUT"
