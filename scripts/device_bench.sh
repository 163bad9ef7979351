#!/usr/bin/env bash
# Latency of pedit on one NVIDIA GPU (H100/H200): `pedit bench --arch sd15 --vs ip2p` for the torch
# and compile backends, a second process to show the compile cache at work, and the bundled toon
# model on every backend the machine has (torch, compile, onnx; trt when tensorrt is installed).
# Every bench writes its JSON report to $OUT; the log goes to $OUT/log.txt.
#
# On the GPU machine (its image has torch, transformers, onnxruntime but no diffusers; carry the
# wheel in .whl/, made beforehand with:
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux2014_x86_64 -d .whl diffusers==0.42.1 ):
#   bash scripts/device_bench.sh      (at most BUDGET=540 s; run with timeout_s 600)
# Dry run on a CPU, same steps, tiny sizes (what was run before the script went to a GPU):
#   REDUCED=1 OUT=/tmp/bench PY=/work/main/.venv/bin/python bash scripts/device_bench.sh
set -uo pipefail
: "${OUT:?set OUT to a folder for the reports}"
PY=${PY:-python3}
mkdir -p "$OUT"
if compgen -G ".whl/*.whl" > /dev/null; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD
fi
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 PEDIT_CACHE=${PEDIT_CACHE:-/tmp/pedit-cache}
LOG="$OUT/log.txt"
exec > >(tee -a "$LOG") 2>&1

if [ "${REDUCED:-0}" = 1 ]; then
  SD="--resolution 64 --steps 2 --repeats 1 --warmup 1"   # SD1.5 shapes but a 64 px image: minutes on 2 cores
  BUDGET=${BUDGET:-1500}
  TOON="--steps 2 --repeats 1 --warmup 1"
  SD_BACKENDS="torch"                                   # Inductor on a shared CPU takes too long for a dry run
  TOON_BACKENDS="torch,onnx"
  LIMIT=900
else
  SD="--steps 20 --repeats 5 --warmup 2"
  TOON="--steps 20 --repeats 10 --warmup 2"
  SD_BACKENDS="torch,compile"
  TOON_BACKENDS="torch,onnx"                            # onnx: CUDA provider only with onnxruntime-gpu carried
  LIMIT=240
fi
$PY -c "import tensorrt" 2>/dev/null && TOON_BACKENDS="$TOON_BACKENDS,trt"

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || echo "no NVIDIA GPU: CPU run"
$PY -c "import torch, diffusers, transformers, onnxruntime; print('torch', torch.__version__, 'diffusers', diffusers.__version__, 'transformers', transformers.__version__, 'onnxruntime', onnxruntime.__version__)" || exit 1

START=$(date +%s)
BUDGET=${BUDGET:-540}  # seconds for the whole script: a device command may run 600 s at most
bench() {  # name, then pedit bench arguments; each gets min(LIMIT, what is left of BUDGET)
  local name=$1; shift
  local t0=$(date +%s) left=$(( BUDGET - ($(date +%s) - START) ))
  [ "$left" -gt "$LIMIT" ] && left=$LIMIT
  if [ "$left" -lt 30 ]; then echo "== $name: skipped, budget spent"; return; fi
  timeout "$left" $PY -m pedit bench "$@" -o "$OUT/$name.json" > /dev/null
  echo "== $name: exit $? in $(( $(date +%s) - t0 )) s (limit $left s)"
}

# In order of importance, so that a short budget loses the least.
# 1. SD1.5 size, eager vs InstructPix2Pix in the same process (the headline comparison).
bench sd15_torch --arch sd15 --backend torch --vs ip2p $SD
# 2. torch.compile (CUDA graphs on the GPU); its first edit includes compiling (first_edit_s).
[ "$SD_BACKENDS" != torch ] && bench sd15_compile --arch sd15 --backend compile --vs ip2p $SD
# 3. The bundled toon model on the backends at hand.
bench toon --backend "$TOON_BACKENDS" --vs ip2p $TOON
# 4. A new process: the compiled kernels come from the cache in $PEDIT_CACHE (cold start with a cache).
[ "$SD_BACKENDS" != torch ] && bench sd15_compile_cached --arch sd15 --backend compile --steps 20 --repeats 2 --warmup 1
echo "total $(( $(date +%s) - START )) s"
ls -la "$OUT"
