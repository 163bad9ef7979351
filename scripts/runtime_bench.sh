#!/usr/bin/env bash
# The torch-free runtime's whole-process edit against `python -c "import torch"` (docs/runtime.md):
# wall time of whole processes (/usr/bin/time), the modes alternating run by run so that a busy
# machine slows them alike.
#
#   scripts/runtime_bench.sh                  # 7 runs each: toon and toon-fast through --backend onnx, import torch
#   N=9 MODELS="toon" scripts/runtime_bench.sh
#
# PYTHON picks the interpreter (default: python). The engines cache goes to a fresh temp folder and is
# exported by one untimed run per model first (that run imports torch; the timed ones must not). Prints
# the median, min-max and runs of each mode and its ratio to `import torch`.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
N=${N:-7}
MODELS=${MODELS:-"toon toon-fast"}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
export PEDIT_CACHE="$work/cache" HF_HUB_OFFLINE=1
# Bytecode as an installed package has it (pip compiles it at install time; torch's is there too): the
# untimed run writes pedit's own .pyc files when the environment had turned that off.
unset PYTHONDONTWRITEBYTECODE
edit=(-m pedit edit examples/toon.png -d laughing --backend onnx --overwrite -q)

for model in $MODELS; do  # exports into the cache; not timed
  PYTHONPATH=$PWD "$PY" "${edit[@]}" -m "$model" -o "$work/warm-$model.png" >/dev/null 2>&1
done
for i in $(seq "$N"); do
  for mode in import-torch $MODELS; do
    if [ "$mode" = import-torch ]; then
      /usr/bin/time -f "$mode %e" -a -o "$work/times" "$PY" -c "import torch"
    else
      PYTHONPATH=$PWD /usr/bin/time -f "$mode %e" -a -o "$work/times" \
        "$PY" "${edit[@]}" -m "$mode" -o "$work/$mode.png" >/dev/null 2>"$work/err" || { cat "$work/err"; exit 1; }
    fi
  done
done
"$PY" - "$work" <<'PY'
import statistics, sys
from pathlib import Path
work = Path(sys.argv[1])
runs = {}
for line in (work / "times").read_text().split("\n"):
    if line.strip():
        mode, seconds = line.split()
        runs.setdefault(mode, []).append(float(seconds))
base = statistics.median(runs["import-torch"])
print(f"{'mode':13} {'median s':>9} {'min-max s':>12} {'vs import torch':>16}  runs")
for mode, t in runs.items():
    print(f"{mode:13} {statistics.median(t):9.2f} {min(t):5.2f}-{max(t):<6.2f} {statistics.median(t) / base:15.2f}x  "
          f"{' '.join(f'{x:.2f}' for x in t)}")
for mode in runs:
    if mode != "import-torch":
        same = (work / f"{mode}.png").read_bytes() == (work / f"warm-{mode}.png").read_bytes()
        print(f"{mode}: the timed runs wrote the bytes of the exporting run: {same}")
PY
