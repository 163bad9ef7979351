"""Cache what the editor has at blend time for a set of exact pairs (prototype of a learned mask refiner).

    python scripts/cache_mask_inputs.py -m toon-fast --pairs runs/refine-train/pairs -o runs/refine-cache/student-train.npz

One edit per pair with the model folder's own settings (pedit.eval.pixel_tuning.edit_training_pairs,
batch 25 as `pedit eval --batch-size 25`), saving per pair: the input, the target, the true region,
the decoded edit, the decoded reconstruction, the difference map before binarisation and the
binary latent mask. --held-out allows evaluation identities: for scoring only, never for choosing.
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-m", "--model", default="toon-fast")
    ap.add_argument("--pairs", required=True)
    ap.add_argument("-o", "--out", required=True)
    ap.add_argument("--held-out", action="store_true", help="allow evaluation identities (scoring only)")
    args = ap.parse_args()

    from pedit.eval import pixel_tuning
    from pedit.model.loading import model_path

    if args.held_out:
        pixel_tuning.EVAL_SEEDS_FROM = 10**12
    t0 = time.perf_counter()
    rows, _ = pixel_tuning.edit_training_pairs(str(model_path(args.model)), args.pairs, batch_size=25,
                                               progress=lambda s, i, n: print(f"{s} {i}/{n} "
                                                                              f"({time.perf_counter() - t0:.0f} s)", flush=True))
    np.savez_compressed(
        args.out,
        direction=np.array([r["direction"] for r in rows]), task=np.array([r["task"] for r in rows]),
        x_A=np.stack([r["x_A"] for r in rows]), x_B=np.stack([r["x_B"].astype(np.uint8) for r in rows]),
        true=np.stack([r["true"] for r in rows]), raw=np.stack([r["raw"] for r in rows]),
        reconstruction=np.stack([r["reconstruction"] for r in rows]), diff=np.stack([r["diff"] for r in rows]),
        mask=np.stack([r["mask"].numpy()[0, 0] for r in rows]),
        ratio=np.array([r["cfg"].ratio for r in rows]), held_out=np.array(bool(args.held_out)))
    print(f"saved {len(rows)} pairs to {args.out} ({time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
