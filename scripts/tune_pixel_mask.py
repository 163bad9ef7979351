"""Choose a model's pixel-resolution mask per task on training identities, and write it into its pedit.json.

    python scripts/tune_pixel_mask.py -m pedit/assets/toon-model -n 64 -o runs/pixel-tune --write

Makes `n` exact toon pairs of training identities (seeds 0..n-1, the pairs scripts/tune_masks.py
uses; evaluation uses 1,000,000+), edits each once with the folder's own settings, then scores the
latent mask as the folder sets it and every pixel setting of pedit.eval.pixel_tuning.PixelGrid
(pedit.eval.pixel_tuning.choose: the best PSNR outside the true region among those no worse inside
it than the latent mask). Saves everything measured to OUT/pixel-tuning.json; with --write the
chosen settings go into the folder's "mask_by_task" (refine and its fields; the latent mask's
strength, ratio and threshold are kept) with the measurement as "pixel_mask_tuning".
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
    ap.add_argument("-o", "--out", default="runs/pixel-tune")
    ap.add_argument("--change-from", default="input,reconstruction",
                    help="what the edit's change is measured against, comma-separated (\"reconstruction\" costs one VAE "
                         "decode an image: docs/results.md, \"Cost\")")
    ap.add_argument("--write", action="store_true", help="write the chosen settings into the model's pedit.json")
    args = ap.parse_args()

    from pedit.data.gen_pairs import GenPairsConfig, generate_pairs
    from pedit.eval.pixel_tuning import PixelGrid, choose, edit_training_pairs, score_settings, setting_of
    from pedit.model.loading import model_path

    model = model_path(args.model)
    meta = json.loads((model / "pedit.json").read_text())
    out = Path(args.out)
    pairs = out / "pairs"
    if not (pairs / "metadata.jsonl").exists():
        generate_pairs(GenPairsConfig(str(pairs), n=args.n, resolution=int(meta["resolution"]), seed=0, exact=True))
    t0 = time.perf_counter()
    tell = lambda stage, i, n: print(f"{stage} {i}/{n} ({time.perf_counter() - t0:.0f} s)", flush=True)  # noqa: E731
    rows, _ = edit_training_pairs(str(model), str(pairs), progress=tell)
    grid = PixelGrid(change_froms=tuple(args.change_from.split(",")))
    scores = score_settings(rows, grid, progress=lambda s, i, n: i % 16 == 0 and tell(s, i, n))
    chosen = {t: choose(s, "latent") for t, s in scores.items()}
    result = {"pairs": len(rows), "seconds": time.perf_counter() - t0, "chosen": chosen,
              "chosen_scores": {t: {"chosen": scores[t][k], "latent": scores[t]["latent"]} for t, k in chosen.items()},
              "scores": scores}
    out.mkdir(parents=True, exist_ok=True)
    (out / "pixel-tuning.json").write_text(json.dumps(result, indent=2))
    for t, k in chosen.items():
        print(f"{t}: {k}\n  chosen {scores[t][k]}\n  latent {scores[t]['latent']}")
    if args.write:
        by_task = meta.setdefault("mask_by_task", {})
        for t, k in chosen.items():
            by_task[t] = {**by_task.get(t, {}), **setting_of(k)}
        fmt = lambda s: (f"PSNR {s['psnr']:.2f}, in {s['psnr_in_mask']:.2f}, out {s['psnr_outside_mask']:.2f}, "  # noqa: E731
                         f"edge band {s['psnr_edge_band']:.2f}, IoU {s['mask_iou']:.3f}")
        meta["pixel_mask_tuning"] = (
            f"Chosen per task on {len(rows)} exact pairs of training identities (seeds 0-{len(rows) - 1}), never on "
            f"held-out ones (scripts/tune_pixel_mask.py, pedit.eval.pixel_tuning): of the latent mask as set and "
            f"{sum(1 for _ in grid.settings())} pixel settings (change from {' or '.join(grid.change_froms)}), the best PSNR outside the true region among "
            f"those no worse inside it than the latent mask. "
            + "; ".join(f"{t}: {setting_of(k)['refine']} ({fmt(scores[t][k])}; latent {fmt(scores[t]['latent'])})"
                        for t, k in chosen.items()))
        (model / "pedit.json").write_text(json.dumps(meta, indent=2))
        print(f"wrote the chosen refinement into {model / 'pedit.json'}")


if __name__ == "__main__":
    main()
