"""Choose a model's editing-mask settings per task on training identities, and write them into its pedit.json.

    python scripts/tune_masks.py -m pedit/assets/toon-model -n 64 -o runs/mask-tune --write

Makes `n` exact toon pairs of training identities (seeds 0..n-1; evaluation uses 1,000,000+), runs
pedit.eval.mask_tuning.tune_masks (a grid over strength, ratio, threshold by mask IoU, then over the
blend's dilate, feather and keep_below by pooled PSNR) and saves everything measured to OUT/tuning.json. With
--write, the chosen settings become the model's "mask_by_task" and the measurement is recorded
beside them ("mask_tuning").
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-m", "--model", default=None, help="model folder (default: the bundled toon model)")
    ap.add_argument("-n", type=int, default=64, help="exact pairs of training identities (seeds 0..n-1)")
    ap.add_argument("-o", "--out", default="runs/mask-tune")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--write", action="store_true", help="write the chosen settings into the model's pedit.json")
    args = ap.parse_args()

    from pedit.data.gen_pairs import GenPairsConfig, generate_pairs
    from pedit.eval.mask_tuning import TuneConfig, tune_masks
    from pedit.model.loading import bundled_model_path

    model = Path(args.model) if args.model else bundled_model_path()
    meta = json.loads((model / "pedit.json").read_text())
    out = Path(args.out)
    pairs = generate_pairs(GenPairsConfig(str(out / "pairs"), n=args.n, resolution=int(meta["resolution"]), seed=0,
                                          exact=True))
    t0 = time.perf_counter()
    result = tune_masks(TuneConfig(pairs=str(pairs), model=str(model), steps=args.steps),
                        progress=lambda stage, i, n: print(f"{stage} {i}/{n} ({time.perf_counter() - t0:.0f} s)", flush=True))
    result["seconds"] = time.perf_counter() - t0
    (out / "tuning.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result["chosen"], indent=2))
    if args.write:
        meta["mask_by_task"] = result["mask_by_task"]
        meta["mask_tuning"] = (
            f"Chosen per task on {result['pairs']} exact pairs of training identities (seeds {result['seeds'][0]}-"
            f"{result['seeds'][1]}), never on held-out ones (scripts/tune_masks.py): strength, ratio, threshold by mean "
            f"mask IoU; the blend's dilate, feather and keep_below by pooled whole-image PSNR. "
            + "; ".join(f"{t}: IoU {c['iou']:.3f} (library defaults {c['iou_library_default']:.3f})"
                        for t, c in result["chosen"].items()))
        (model / "pedit.json").write_text(json.dumps(meta, indent=2))
        print(f"wrote mask_by_task into {model / 'pedit.json'}")


if __name__ == "__main__":
    main()
