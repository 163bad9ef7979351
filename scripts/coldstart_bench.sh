#!/usr/bin/env bash
# CPU cold start of `pedit edit examples/toon.png -d laughing`: wall time of whole processes (/usr/bin/time),
# modes interleaved run by run so that a busy machine slows them alike. docs/deployment.md, "CPU cold start".
#
#   scripts/coldstart_bench.sh                 # this checkout: TorchScript cache vs --no-cache, 7 runs each
#   BEFORE=/path/to/old/checkout N=9 scripts/coldstart_bench.sh   # also an older checkout of pedit
#
# PYTHON picks the interpreter (default: python). The cache goes to a fresh temp folder and is written
# by one untimed run first. Prints median, min-max and the runs of each mode, and whether every mode
# wrote the same bytes.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
N=${N:-7}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
export PEDIT_CACHE_DIR="$work/cache" HF_HUB_OFFLINE=1
edit=(-m pedit edit examples/toon.png -d laughing --overwrite -q)

PYTHONPATH=$PWD "$PY" "${edit[@]}" -o "$work/warm.png" >/dev/null 2>&1  # writes the cache; not timed
modes=(cached no-cache)
[ -n "${BEFORE:-}" ] && modes+=(before)
for i in $(seq "$N"); do
  for mode in "${modes[@]}"; do
    case $mode in
      cached) path=$PWD; extra=() ;;
      no-cache) path=$PWD; extra=(--no-cache) ;;
      before) path=$BEFORE; extra=() ;;
    esac
    # each run edits in its own checkout, so `before` runs the old code and finds the old bundled model
    (cd "$path" && PYTHONPATH=$path /usr/bin/time -f "$mode %e" -a -o "$work/times" \
        "$PY" "${edit[@]}" -o "$work/$mode.png" "${extra[@]}" >/dev/null 2>"$work/err") || { cat "$work/err"; exit 1; }
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
base = statistics.median(runs.get("before", runs["no-cache"]))
print(f"{'mode':10} {'median s':>9} {'min-max s':>12} {'vs ' + ('before' if 'before' in runs else 'no-cache'):>10}  runs")
for mode, t in runs.items():
    print(f"{mode:10} {statistics.median(t):9.2f} {min(t):5.2f}-{max(t):<6.2f} {statistics.median(t) / base:9.2f}x  {' '.join(f'{x:.2f}' for x in t)}")
outs = {m: (work / f"{m}.png").read_bytes() for m in runs}
print("same bytes in every mode:", len(set(outs.values())) == 1)
PY
