"""The editing masks alone, scored on a pair folder: IoU, precision, recall and the latent-grid ceiling per direction.

    python scripts/mask_report.py --pairs runs/toon-eval [-m MODEL] [--settings '{"strength": 0.7}'] [--batch-size 25]

The masks are exactly those `pedit eval` draws for "ours" (same batches, same generator seeds:
the mask is the first thing drawn from each batch's generator), without the sampling, so a mask
setting can be checked in minutes. --settings replaces the model's own settings for every
direction (to score an older setting); by default each direction gets what its pedit.json says.
"""

from __future__ import annotations

import argparse
import dataclasses
import json

import numpy as np
import torch
from PIL import Image


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairs", required=True)
    ap.add_argument("-m", "--model", default=None)
    ap.add_argument("--settings", default=None, help="JSON MaskConfig fields used for every direction")
    ap.add_argument("--batch-size", type=int, default=25)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    from diffusers import DDPMScheduler

    from pedit.data.pairs import load_rgb, read_pairs
    from pedit.edit.editor import Editor, uint8_to_tensor
    from pedit.edit.guidance import GuidanceScales
    from pedit.edit.mask import MaskConfig
    from pedit.eval.ground_truth import batch_masks
    from pedit.eval.ceiling import iou_ceiling, mask_iou

    pairs = read_pairs(args.pairs)
    editor = Editor.from_pretrained(args.model, device="cpu")
    size = editor.resolution
    cells = size // editor.model.parts.latent_factor
    ddpm = DDPMScheduler.from_config(editor.model.parts.scheduler_config)
    scales = GuidanceScales(1.5, 1.0, 4.0)
    fixed = None if args.settings is None else MaskConfig(**json.loads(args.settings))
    stats: dict[str, list] = {}
    for start in range(0, len(pairs), args.batch_size):
        batch = pairs[start: start + args.batch_size]
        src = [load_rgb(p.x_A, size) for p in batch]
        true = [np.asarray(Image.open(p.mask).convert("L").resize((size, size), Image.NEAREST)) > 127 for p in batch]
        conds = [editor.conditions(uint8_to_tensor(s), editor.direction(p.direction)) for s, p in zip(src, batch)]
        cond = type(conds[0])(*(torch.cat([getattr(c, f.name) for c in conds]) for f in dataclasses.fields(conds[0])))
        cfgs = [fixed or editor.default_options(p.direction).mask for p in batch]
        g = torch.Generator().manual_seed(args.seed + start)
        masks = batch_masks(editor.denoise, ddpm, cond, scales, cfgs, g, cond.c_s)[:, 0].numpy()
        for p, m, t in zip(batch, masks, true):
            pred = np.kron(m, np.ones((size // cells, size // cells))) > 0.5
            inter = np.logical_and(pred, t).sum()
            stats.setdefault(p.direction, []).append((mask_iou(pred, t), inter / pred.sum() if pred.any() else 1.0,
                                                      inter / t.sum() if t.any() else 1.0, iou_ceiling(t, cells)))
        print(f"{start + len(batch)}/{len(pairs)}", flush=True)
    print("| direction | pairs | IoU | precision | recall | ceiling | IoU / ceiling |\n|---|---|---|---|---|---|---|")
    rows = []
    for d in sorted(stats):
        iou, prec, rec, ceil = np.mean(stats[d], axis=0)
        rows += stats[d]
        print(f"| {d} | {len(stats[d])} | {iou:.3f} | {prec:.3f} | {rec:.3f} | {ceil:.3f} | {100 * iou / ceil:.0f} % |")
    iou, prec, rec, ceil = np.mean(rows, axis=0)
    print(f"| all | {len(rows)} | {iou:.3f} | {prec:.3f} | {rec:.3f} | {ceil:.3f} | {100 * iou / ceil:.0f} % |")


if __name__ == "__main__":
    main()
