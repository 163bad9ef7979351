#!/usr/bin/env bash
# The gen-pairs --source sd benchmark on a lent GPU (see docs/gen-pairs.md): pairs/s at 512 × 1024,
# 30 steps, SD 1.5-size random weights, batch 1 and 4, with the plain-CFG baseline measured in the
# same run. The device's image has torch but no diffusers: wheels travel in .whl/ (git-ignored;
# carry it). Results go to $OUT. About 3-5 minutes on an H100 including the install.
set -uo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
for b in 4 1; do
  python3 scripts/bench_gen_pairs.py --device cuda --resolution 512 --steps 30 --batch-size "$b" --repeats 3 \
    --json "$OUT/bench_b$b.json" 2>&1 | grep -v "should be kept in float32" | tee -a "$OUT/log.txt"
done
