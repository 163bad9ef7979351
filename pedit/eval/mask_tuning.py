"""Choosing a model's editing-mask settings by measurement, on training identities only.

Two stages, each a grid search scored against the exact ground truth of toon pairs:
1. the latent mask (strength, ratio, threshold), per task: mean IoU of the binary mask with the
   true mask; one difference map per strength serves every (ratio, threshold);
2. the pixel blend (dilate, feather, keep_below), per task, with the stage-1 masks: one edit per
   pair, then each blend scored by PSNR pooled over all pairs' pixels, on the whole image (the criterion), inside
   and outside the true mask (reported).
Evaluation identities (seeds 1,000,000 and up, docs/results.md) are refused: settings chosen on
them would flatter the held-out numbers. The result goes into pedit.json as "mask_by_task"
(pedit.model.mask_settings).
"""

from __future__ import annotations

import dataclasses
import itertools
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from pedit.errors import ConfigError
from pedit.eval.pixel_tuning import psnr

EVAL_SEEDS_FROM = 1_000_000
BLEND = ("dilate", "feather", "keep_below")  # the stage-2 MaskConfig fields


@dataclass(frozen=True)
class TuneConfig:
    pairs: str
    model: str | None = None
    strengths: tuple[float, ...] = (0.5, 0.6, 0.7, 0.8, 0.9)
    ratios: tuple[float, ...] = (2.0, 3.0, 4.0, 6.0, 8.0)
    thresholds: tuple[float, ...] = (0.4, 0.5, 0.6, 0.7, 0.8)
    dilates: tuple[float, ...] = (0.0, 0.5, 1.0)
    feathers: tuple[float, ...] = (0.0, 0.5)
    keeps: tuple[float, ...] = (0.0, 16.0, 32.0, 48.0, 64.0)  # MaskConfig.keep_below, in levels of 255
    n_noise: int = 10
    steps: int = 20
    batch_size: int = 16
    seed: int = 0
    scales: tuple[float, float, float] = (1.5, 1.0, 4.0)

    def __post_init__(self):
        if not all(0 < s <= 1 for s in self.strengths):
            raise ConfigError("strengths must be in (0, 1]")
        if not all(r > 0 for r in self.ratios) or not all(0 <= t < 1 for t in self.thresholds):
            raise ConfigError("ratios must be > 0 and thresholds in [0, 1)")
        if not all(d >= 0 for d in self.dilates) or not all(f >= 0 for f in self.feathers):
            raise ConfigError("dilates and feathers must be >= 0")
        if not all(0 <= k <= 255 for k in self.keeps):
            raise ConfigError("keeps must be in [0, 255]")
        if self.n_noise < 1 or self.steps < 1 or self.batch_size < 1:
            raise ConfigError("n_noise, steps and batch_size must be at least 1")




def tune_masks(cfg: TuneConfig, progress: Callable[[str, int, int], None] | None = None) -> dict:
    """Grid results and the chosen settings per task: {"mask_by_task": {...}, "tables": {...}, ...}."""
    from diffusers import DDPMScheduler
    from PIL import Image

    from pedit.data.pairs import load_rgb, read_pairs
    from pedit.edit.editor import Editor, keep_outside, tensor_to_uint8, uint8_to_tensor
    from pedit.edit.guidance import GuidanceScales
    from pedit.edit.mask import MaskConfig, binarize, difference_map
    from pedit.eval.ground_truth import run_method
    from pedit.eval.ceiling import mask_iou

    pairs = read_pairs(cfg.pairs)
    held_out = [p.id for p in pairs if p.seed >= EVAL_SEEDS_FROM]
    if held_out:
        raise ConfigError(f"{len(held_out)} pair(s) of evaluation identities (seed >= {EVAL_SEEDS_FROM:,}), e.g. "
                          f"{held_out[0]!r}: tune on training identities only (gen-pairs --exact --seed 0).")
    editor = Editor.from_pretrained(cfg.model, device="cpu")
    size, f = editor.resolution, editor.resolution // editor.model.parts.latent_factor
    scales = GuidanceScales(*cfg.scales)
    task_of = {p.id: editor.direction(p.direction).task for p in pairs}
    tasks = sorted(set(task_of.values()))
    ddpm = DDPMScheduler.from_config(editor.model.parts.scheduler_config)

    batches = []  # (pairs, src, tgt, true masks, conditions)
    for start in range(0, len(pairs), cfg.batch_size):
        batch = pairs[start: start + cfg.batch_size]
        src = [load_rgb(p.x_A, size) for p in batch]
        tgt = [load_rgb(p.x_B, size) for p in batch]
        true = [np.asarray(Image.open(p.mask).convert("L").resize((size, size), Image.NEAREST)) > 127
                if p.mask is not None else np.any(s != t, axis=2) for p, s, t in zip(batch, src, tgt)]
        conds = [editor.conditions(uint8_to_tensor(s), editor.direction(p.direction)) for s, p in zip(src, batch)]
        cond = type(conds[0])(*(torch.cat([getattr(c, fl.name) for c in conds]) for fl in dataclasses.fields(conds[0])))
        batches.append((batch, src, tgt, true, cond))

    # Stage 1: mask IoU per (strength, ratio, threshold), summed per task.
    iou = {t: {} for t in tasks}
    count = {t: sum(task_of[p.id] == t for p in pairs) for t in tasks}
    for si, strength in enumerate(cfg.strengths):
        mcfg = MaskConfig(n_noise=cfg.n_noise, strength=strength)
        for bi, (batch, _, _, true, cond) in enumerate(batches):
            g = torch.Generator().manual_seed(cfg.seed + bi)
            diff = difference_map(editor.denoise, ddpm, cond, scales, mcfg, g, builder=editor.rows)  # (B, h, w)
            for ratio, threshold in itertools.product(cfg.ratios, cfg.thresholds):
                masks = binarize(diff, ratio, threshold)[:, 0].numpy()  # (B, h, w)
                for p, m, t in zip(batch, masks, true):
                    pred = np.kron(m, np.ones((size // f, size // f))) > 0.5
                    key = (strength, ratio, threshold)
                    iou[task_of[p.id]][key] = iou[task_of[p.id]].get(key, 0.0) + mask_iou(pred, t)
        if progress:
            progress("mask", si + 1, len(cfg.strengths))
    chosen = {}
    for t in tasks:
        (strength, ratio, threshold), total = max(iou[t].items(), key=lambda kv: kv[1])
        default = iou[t].get((0.5, 3.0, 0.5))
        chosen[t] = {"strength": strength, "ratio": ratio, "threshold": threshold,
                     "iou": total / count[t], "iou_library_default": None if default is None else default / count[t]}

    # Stage 2: one edit per pair with its task's mask, then every (dilate, feather, keep_below) blend scored.
    sums = {t: {} for t in tasks}  # task → (dilate, feather, keep) → [sq_all, px_all, sq_in, px_in, sq_out, px_out]
    for bi, (batch, src, tgt, true, cond) in enumerate(batches):
        mask_cfgs = [MaskConfig(n_noise=cfg.n_noise, **{k: chosen[task_of[p.id]][k] for k in ("strength", "ratio", "threshold")})
                     for p in batch]
        decoded, mask = run_method(editor, "ours", cond, cfg.steps, scales, cfg.seed + bi, mask_cfgs)
        for i, p in enumerate(batch):
            raw = tensor_to_uint8(decoded[i: i + 1])
            for blend in itertools.product(cfg.dilates, cfg.feathers, cfg.keeps):
                out, _ = keep_outside(src[i], raw, mask[i: i + 1].cpu(), MaskConfig(**dict(zip(BLEND, blend))))
                err = (out.astype(np.float64) - tgt[i].astype(np.float64)) ** 2
                acc = sums[task_of[p.id]].setdefault(blend, [0.0, 0, 0.0, 0, 0.0, 0])
                for j, region in enumerate((np.ones_like(true[i]), true[i], ~true[i])):
                    acc[2 * j] += err[region].sum()
                    acc[2 * j + 1] += err[region].size
        if progress:
            progress("blend", bi + 1, len(batches))
    blends = {t: {f"dilate {d}, feather {fe}, keep_below {k}": {
        "psnr": psnr(*a[0:2]), "psnr_in_mask": psnr(*a[2:4]), "psnr_outside_mask": psnr(*a[4:6])}
        for (d, fe, k), a in sums[t].items()} for t in tasks}
    for t in tasks:
        best, _ = max(sums[t].items(), key=lambda kv: psnr(*kv[1][0:2]))
        chosen[t].update(zip(BLEND, best))
    mask_by_task = {t: {k: chosen[t][k] for k in ("strength", "ratio", "threshold", *BLEND)} for t in tasks}
    tables = {t: {f"strength {k[0]}, ratio {k[1]}, threshold {k[2]}": v / count[t] for k, v in iou[t].items()} for t in tasks}
    return {"pairs": len(pairs), "seeds": [min(p.seed for p in pairs), max(p.seed for p in pairs)],
            "per_task_pairs": count, "chosen": chosen, "mask_by_task": mask_by_task, "mask_iou": tables, "blend": blends,
            "config": dataclasses.asdict(cfg)}
