#!/usr/bin/env bash
# Second lent-GPU run: continue training the bundled toon model (pedit/assets) on fresh pairs, reusing
# its base (the VAE is not retrained). See docs/toon-model.md for both runs.
set -uo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name --format=csv,noheader | tee "$OUT/gpu.txt"
start=$(date +%s)
for i in $(seq 0 15); do python3 -m pedit gen-pairs -o /tmp/r/pairs -n 24000 --seed 0 --shard "$i/16" -q & done; wait
echo "pairs: $(( $(date +%s) - start )) s" | tee "$OUT/log.txt"
python3 -m pedit train --data /tmp/r/pairs -o /tmp/r/model --base pedit/assets/toon-base --init scratch \
  --init-from pedit/assets/toon-model --max-steps 20000 --max-minutes "${MINUTES:-3.7}" --batch-size 128 \
  --learning-rate 3e-4 --warmup-steps 100 --mixed-precision bf16 --num-workers 8 --checkpoint-every 100000 \
  --validate-every 100000 --ema-decay 0.999 --seed 1 -q 2>&1 | grep -v "Loading weights\|Writing model\|AutoencoderKL" | tee -a "$OUT/log.txt"
python3 -m pedit.toon.recipe bundle --model /tmp/r/model --base pedit/assets/toon-base --dest /tmp/assets
echo "total: $(( $(date +%s) - start )) s" | tee -a "$OUT/log.txt"
tar cf - -C /tmp assets/toon-model | gzip -9 | split -b 15000000 - "$OUT/model.tgz.part-"
tar czf "$OUT/run.tgz" -C /tmp/r model/loss.csv model/config.json model/validation
ls -la "$OUT"
