"""The README's demo picture: `make demo`'s edit beside the toon world's own rendering of that face laughing.

examples/toon.png is `pedit.toon.world.render(1000007)` (a held-out identity: training used
0–23,999, the evaluation 1,000,000–1,000,199), so the truth of its "laughing" edit is known: the
world renders the same face laughing. One row per model, each scored against that truth like
`pedit eval` scores a pair (PSNR inside and outside the true edit region, mask IoU).

    python scripts/demo_figure.py -o docs/img/demo-laughing.png                      # the bundled model
    python scripts/demo_figure.py -m old-model -m runs/toon-cpu/model -o before-after.png
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np
from PIL import Image

from pedit import Editor
from pedit.eval.ceiling import mask_iou
from pedit.toon import world
from pedit.viz import image_grid, overlay_mask

ROOT = Path(__file__).resolve().parents[1]
IDENTITY = 1000007
DIRECTION = "laughing"


def psnr(out: np.ndarray, target: np.ndarray, where: np.ndarray) -> float:
    err = (out.astype(np.float64) - target.astype(np.float64))[where] ** 2
    mse = err.mean()
    return float("inf") if mse == 0 else 10 * math.log10(255.0**2 / mse)


def edit_row(model: str | None, source: np.ndarray, truth: np.ndarray, true_mask: np.ndarray, scale: int):
    result = Editor.from_pretrained(model).edit(Image.fromarray(source), DIRECTION, seed=0)
    out = np.asarray(result.image.convert("RGB"))
    latent = result.mask_latent[0, 0].cpu().numpy()
    pred = np.kron(latent, np.ones((out.shape[0] // latent.shape[0],) * 2)) > 0.5
    iou = mask_iou(pred, true_mask)
    scores = (f"in {psnr(out, truth, true_mask):.1f} dB, out {psnr(out, truth, ~true_mask):.1f} dB, "
              f"IoU {iou:.2f}")
    big = lambda a: Image.fromarray(a).resize((a.shape[1] * scale, a.shape[0] * scale), Image.Resampling.NEAREST)
    shown = big(source)
    panels = [shown, overlay_mask(shown, result.mask.resize(shown.size, Image.Resampling.NEAREST)), big(out),
              big(truth), overlay_mask(shown, Image.fromarray(true_mask.astype(np.uint8) * 255).resize(shown.size))]
    return panels, scores


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-m", "--model", action="append", help="model folder (repeat for rows; default: bundled)")
    ap.add_argument("--label", action="append", help="row label per -m (default: the folder name)")
    ap.add_argument("-o", "--out", type=Path, default=ROOT / "docs" / "img" / "demo-laughing.png")
    ap.add_argument("--scale", type=int, default=2, help="pixel zoom (nearest) of each 128 px panel")
    args = ap.parse_args()

    source = np.asarray(Image.open(ROOT / "examples" / "toon.png").convert("RGB"))
    if not np.array_equal(source, world.render(IDENTITY)):
        raise SystemExit(f"Error: examples/toon.png is no longer toon identity {IDENTITY}; update IDENTITY")
    truth = world.render(IDENTITY, DIRECTION)
    true_mask = np.any(source != truth, axis=-1)

    models = args.model or [None]
    labels = args.label or [Path(m).name if m else "bundled" for m in models]
    if len(labels) != len(models):
        raise SystemExit(f"Error: {len(models)} model(s) but {len(labels)} --label(s): give one per -m")
    rows, names = [], []
    for model, label in zip(models, labels):
        panels, scores = edit_row(model, source, truth, true_mask, args.scale)
        rows.append(panels)
        names.append(label)
        print(f"{label}: {scores}")
    columns = ["input", "pedit's mask", "pedit's edit", "toon world laughing", "true edit region"]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    image_grid(rows, col_labels=columns, row_labels=names if len(rows) > 1 else None).save(args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
