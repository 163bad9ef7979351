#!/usr/bin/env bash
# One run on a machine with an NVIDIA GPU (at most ~9 min on an H100/H200; BUDGET=540 s), each result
# written into OUT as soon as it exists, so a run cut short keeps what it had (docs/deployment.md, "GPU check"):
#   1. the suite on CUDA:           PEDIT_TEST_DEVICE=cuda pytest        -> OUT/suite.log, OUT/suite.xml
#   2. latency at SD 1.5 size:      pedit bench --arch sd15 --vs ip2p --backend torch,compile -> OUT/bench_sd15.json
#   3. gen-pairs throughput:        scripts/bench_gen_pairs.py (pairs/s, 512 x 1024, batch 4) -> OUT/gen_pairs.json
#   4. the SD 1.5 dry run on CUDA:  scripts/sd15_dry_run.sh at 512 px, fp16 -> OUT/dry-run/dry_run.md
#   5. serving on Triton:           scripts/bench_serving.py (batching on vs off, 1 and 16 clients) -> OUT/serving.json
#      when a serving environment is there (.venv-serve or $PEDIT_TRITON_VENV; SERVE_MODEL picks the model)
# and OUT/gpu_check.md, the summary (rewritten after every part). Without CUDA it says, part by part,
# what it skips, and exits 0 (try it on a CPU first: `scripts/gpu_check.sh /tmp/gpu-check`).
#
# A machine whose Python lacks diffusers (the stack's other packages present) installs the wheels
# carried in .whl/ (git-ignored), prepared beforehand on a machine with a registry:
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux2014_x86_64 -d .whl diffusers==0.42.1 importlib_metadata==10.2.0
# Settings (environment): PY (python3), BUDGET (540 s), SUITE_S (170), BENCH_S (100), PAIRS_S (60),
# CACHE (/tmp/pedit-sd15-cache: the dry run's SD 1.5 folders, ~10 GB, built on the CPU while the suite runs).
set -u
OUT=${1:?usage: scripts/gpu_check.sh OUT_FOLDER}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PY=${PY:-python3}
BUDGET=${BUDGET:-540}
START=$(date +%s)
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
SUMMARY=$OUT/gpu_check.md
cd "$ROOT" || exit 1

if compgen -G ".whl/*.whl" > /dev/null && ! "$PY" -c "import diffusers" 2> /dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/pedit-site .whl/*.whl \
    > "$OUT/install.log" 2>&1 || { echo "wheel install failed: $OUT/install.log" >&2; exit 1; }
  export PYTHONPATH=/tmp/pedit-site
fi
export PYTHONPATH=$ROOT${PYTHONPATH:+:$PYTHONPATH} HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1
export PEDIT_CACHE=$OUT/pedit-cache
CACHE=${CACHE:-/tmp/pedit-sd15-cache}

left() { echo $((BUDGET - ($(date +%s) - START))); }
note() { echo "$*" | tee -a "$SUMMARY" >&2; }
# part NAME SECONDS CMD...: run with a time limit (never past the budget), log to OUT/NAME.log, note the result.
part() {
  local name=$1 limit=$2; shift 2
  [ "$(left)" -lt "$limit" ] && limit=$(left)
  if [ "$limit" -lt 20 ]; then note "- $name: skipped, the ${BUDGET} s budget is spent"; return 1; fi
  local t0; t0=$(date +%s)
  timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  note "- $name: exit $rc in $(( $(date +%s) - t0 )) s (limit $limit s)$([ $rc = 124 ] && echo ', cut at the limit')"
  return $rc
}

{
  echo "# GPU check, $(date -u +%FT%TZ), commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
  echo
  "$PY" - <<'EOF'
import platform, torch
print(f"- python {platform.python_version()}, torch {torch.__version__}, CUDA available: {torch.cuda.is_available()}")
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print(f"- GPU: {p.name}, {p.total_memory / 2**30:.0f} GiB, {p.multi_processor_count} SMs")
for name in ("diffusers", "transformers", "accelerate", "peft", "onnxruntime", "tensorrt"):
    try:
        print(f"- {name} {__import__(name).__version__}")
    except ImportError:
        print(f"- {name}: not installed")
EOF
  echo
} > "$SUMMARY" 2>&1
cat "$SUMMARY" >&2

if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  note "No CUDA device: skipping all five parts (nothing here would measure a GPU):"
  note "- suite on CUDA (PEDIT_TEST_DEVICE=cuda): skipped, no CUDA"
  note "- pedit bench --arch sd15 --vs ip2p (torch, compile): skipped, no CUDA"
  note "- gen-pairs pairs/s (scripts/bench_gen_pairs.py): skipped, no CUDA"
  note "- SD 1.5 dry run at 512 px, fp16 (scripts/sd15_dry_run.sh): skipped, no CUDA (on a CPU run it alone: scripts/sd15_dry_run.sh OUT)"
  note "- serving on Triton (scripts/bench_serving.py): skipped, no CUDA (on a CPU run it alone: docs/serving.md, Numbers)"
  exit 0
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/gpu.txt" 2>&1

# The dry run's folders (random weights, written with save_pretrained) are built on the CPU cores meanwhile.
nice "$PY" -c "from pedit.toon.hub_folders import build_hub_folders; build_hub_folders('$CACHE')" > "$OUT/build.log" 2>&1 &
BUILD_PID=$!
note "## Parts"
# 1. The suite with its tiny models on the GPU; xdist spreads it over the CPU cores when the machine has it.
XDIST=()
"$PY" -c "import xdist" 2> /dev/null && XDIST=(-n 8)
PEDIT_TEST_DEVICE=cuda part suite "${SUITE_S:-170}" "$PY" -m pytest -p no:cacheprovider -q -rs "${XDIST[@]}" \
  --junitxml="$OUT/suite.xml" tests
tail -n 3 "$OUT/suite.log" | sed 's/^/  /' | tee -a "$SUMMARY" >&2

# 2. Latency of one edit at SD 1.5 size (random weights), eager and compiled, against diffusers' InstructPix2Pix.
part bench_sd15 "${BENCH_S:-100}" "$PY" -m pedit bench --arch sd15 --vs ip2p --backend torch,compile --steps 20 \
  --repeats 3 --device cuda -o "$OUT/bench_sd15.json" --overwrite
tail -n 12 "$OUT/bench_sd15.log" | sed 's/^/  /' >> "$SUMMARY"

# 3. gen-pairs throughput at the paper's size.
part gen_pairs "${PAIRS_S:-60}" "$PY" scripts/bench_gen_pairs.py --device cuda --resolution 512 --steps 30 --batch-size 4 \
  --repeats 2 --json "$OUT/gen_pairs.json"
tail -n 4 "$OUT/gen_pairs.log" | sed 's/^/  /' >> "$SUMMARY"

# 4. Every card command at SD 1.5 size on the GPU, the rest of the budget (its table grows stage by stage)
# less part 5's share when a serving environment is there (else the dry run would leave it nothing).
SERVE_RESERVE=0
[ -d "${PEDIT_TRITON_VENV:-.venv-serve}" ] && SERVE_RESERVE=${SERVE_S:-150}
wait "$BUILD_PID"; note "- folders for the dry run: exit $? ($(tail -n 1 "$OUT/build.log"))"
DEVICE=cuda RESOLUTION=512 PRECISION=fp16 MIN_FREE_GB=0 STAGE_TIMEOUT=150 PYTHON="$PY" CACHE=$CACHE \
  part dry_run "$(( $(left) - SERVE_RESERVE ))" bash scripts/sd15_dry_run.sh "$OUT/dry-run"
[ -f "$OUT/dry-run/dry_run.md" ] && { echo; cat "$OUT/dry-run/dry_run.md"; } >> "$SUMMARY"

# 5. Step-level batching on Triton against batching off (docs/serving.md). The U-Net model and the pedit
# model's runtime use ONNX Runtime's CUDA provider where onnxruntime-gpu is installed in the serving environment.
if [ -d "${PEDIT_TRITON_VENV:-.venv-serve}" ]; then
  part serving "${SERVE_S:-150}" "$PY" scripts/bench_serving.py ${SERVE_MODEL:+-m "$SERVE_MODEL"} \
    --instances 16 --levels "${SERVE_LEVELS:-1,16}" --repeats 2 --soak 0 -o "$OUT/serving.json"
  tail -n 6 "$OUT/serving.log" | sed 's/^/  /' >> "$SUMMARY"
else
  note "- serving (scripts/bench_serving.py): skipped, no serving environment (make setup builds .venv-serve)"
fi
note "done in $(( $(date +%s) - START )) s"
