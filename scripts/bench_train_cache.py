"""Training throughput with and without the latent cache, measured in one run (docs/toon-model.md).

    python scripts/bench_train_cache.py --pairs 256 --batch 32 --steps 12 --reps 3 -o runs/bench-cache

Same pair folder, same toon base (`--init scratch`), same seed; the two settings run interleaved
(cache, no cache, cache, no cache, ...), so a machine shared with other work slows both alike.
Each run's steps/s is taken from its loss.csv clock between the second step and the last (the
first step pays one-off costs); reported: every run, the median per setting and their ratio.
Building the cache is timed separately (the first cached run builds it, later ones read it).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import time
from pathlib import Path


def steps_per_s(model: Path) -> float:
    rows = [r.split(",") for r in (model / "loss.csv").read_text().splitlines()[1:]]
    (s0, t0), (s1, t1) = (int(rows[1][0]), float(rows[1][3])), (int(rows[-1][0]), float(rows[-1][3]))
    return (s1 - s0) / (t1 - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-o", "--out", default="runs/bench-cache")
    ap.add_argument("--pairs", type=int, default=256)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--base", default=None, help="default: the bundled toon base")
    ap.add_argument("--device-note", default="CPU")
    args = ap.parse_args()

    from pedit.data.gen_pairs import GenPairsConfig, generate_pairs
    from pedit.train.loop import TrainConfig, train

    out = Path(args.out)
    pairs = generate_pairs(GenPairsConfig(str(out / "pairs"), n=args.pairs, resolution=128))
    shutil.rmtree(out / "cache", ignore_errors=True)
    runs = {"cache": [], "no-cache": []}
    build_seconds = None
    for rep in range(args.reps):
        for setting in ("cache", "no-cache"):
            model = out / f"{setting}-{rep}"
            shutil.rmtree(model, ignore_errors=True)
            cfg = TrainConfig(data=str(pairs), output=str(model), base=args.base, init="scratch", max_steps=args.steps,
                              batch_size=args.batch, learning_rate=3e-4, checkpoint_every=10**9, validate_every=0,
                              log_every=args.steps, cache=setting == "cache", cache_dir=str(out / "cache"))
            t0 = time.perf_counter()
            built = []
            train(cfg, progress=lambda p: built.append(time.perf_counter()) if p.event == "cache" else None)
            if setting == "cache" and rep == 0 and built:
                build_seconds = built[-1] - t0  # load the base + encode every pair once
            runs[setting].append(steps_per_s(model))
            print(f"rep {rep} {setting}: {runs[setting][-1]:.3f} steps/s ({time.perf_counter() - t0:.1f} s wall)", flush=True)
    med = {k: statistics.median(v) for k, v in runs.items()}
    result = {"device": args.device_note, "pairs": args.pairs, "batch": args.batch, "steps": args.steps, "reps": args.reps,
              "steps_per_s": runs, "median": med, "ratio_cache_over_no_cache": med["cache"] / med["no-cache"],
              "cache_build_seconds_incl_model_load": build_seconds}
    (out / "bench.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
