"""Choosing a model's pixel-resolution mask (MaskConfig.refine "pixel") by measurement, on training identities only.

For each training pair: one edit with the model folder's own settings (its sampler, its latent
mask's strength, ratio, threshold), keeping the difference map before binarisation, the decoded
edit and the decoded reconstruction of the input. Then, per task, the blend each candidate makes is
scored against the exact target, pooled over the task's pairs: PSNR on the whole image, inside and
outside the true region, in the edge band (pedit.eval.ground_truth.edge_band), the mask's IoU and
its error in the edge band. Candidates: the latent mask as the folder sets it now (the paper's
mask, dilated, feathered, keep_below) and every pixel setting of the grid.

The rule (`choose`): of the candidates whose PSNR inside the true region is at least the latent
mask's (no loss of fidelity), the one with the best PSNR outside it (preservation, pedit's promise);
the latent mask itself is a candidate, so a task keeps it unless a pixel setting is better on both.
Evaluation identities (seeds 1,000,000 and up) are refused.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from dataclasses import dataclass
from typing import Callable

import numpy as np

from pedit.errors import ConfigError

EVAL_SEEDS_FROM = 1_000_000


@dataclass(frozen=True)
class PixelGrid:
    """The pixel settings tried (MaskConfig fields)."""

    prior_thresholds: tuple[float, ...] = (0.5, 0.6, 0.7, 0.8)
    prior_bands: tuple[float, ...] = (0.1, 0.2, 0.3)
    change_froms: tuple[str, ...] = ("input", "reconstruction")
    changes: tuple[float, ...] = (25.0, 38.0, 51.0, 64.0, 77.0)  # change_below, levels
    feathers: tuple[float, ...] = (0.0, 1.0, 1.5, 2.5)  # edge_feather, px
    guide_radii: tuple[int, ...] = (0, 4)

    def settings(self):
        for gr, cf, tp, band, cb, fe in itertools.product(self.guide_radii, self.change_froms, self.prior_thresholds,
                                                          self.prior_bands, self.changes, self.feathers):
            yield {"refine": "pixel", "prior_threshold": tp, "prior_band": band, "change_from": cf,
                   "change_below": cb, "edge_feather": fe, "guide_radius": gr}


def psnr(sq: float, n: float) -> float:
    """PSNR (dB) of a summed squared error `sq` over `n` values in 0-255: the pooled figure of every tuning
    (and pedit.eval.joint_choice); a sum that rounding left at or below 0 is a perfect match."""
    return float("inf") if sq <= 0 else 10 * math.log10(255.0**2 * n / sq)


class Tally:
    """Pooled squared errors and mask agreement of one candidate over a task's pairs."""

    def __init__(self):
        self.sq = np.zeros(4)  # whole, inside, outside, edge band
        self.n = np.zeros(4)
        self.iou = 0.0
        self.edge_wrong = 0
        self.edge_n = 0
        self.pairs = 0

    def add(self, out, target, true, band, weight):
        from pedit.eval.ceiling import mask_iou

        err = ((out.astype(np.float64) - target) ** 2).sum(-1)  # (R, R), channels summed
        for k, region in enumerate((None, true, ~true, band)):
            self.sq[k] += err.sum() if region is None else err[region].sum()
            self.n[k] += 3 * (err.size if region is None else int(region.sum()))
        pred = weight >= 0.5
        self.iou += mask_iou(pred, true)
        self.edge_wrong += int((pred[band] != true[band]).sum())
        self.edge_n += int(band.sum())
        self.pairs += 1

    def summary(self) -> dict:
        psnr_of = [psnr(s, n) for s, n in zip(self.sq, self.n)]
        return {"psnr": psnr_of[0], "psnr_in_mask": psnr_of[1], "psnr_outside_mask": psnr_of[2],
                "psnr_edge_band": psnr_of[3],
                "mask_iou": self.iou / self.pairs, "mask_edge_error": self.edge_wrong / max(self.edge_n, 1)}


def choose(scores: dict[str, dict], latent: str) -> str:
    """The key of the best PSNR outside the true region among those no worse inside it than `latent`'s."""
    floor = scores[latent]["psnr_in_mask"]
    ok = {k: s for k, s in scores.items() if s["psnr_in_mask"] >= floor}
    return max(ok, key=lambda k: ok[k]["psnr_outside_mask"])


def edit_training_pairs(model, pairs_dir: str, batch_size: int = 16, progress=None) -> tuple[list[dict], object]:
    """One edit per pair with the folder's own settings: [{direction, task, x_A, x_B, true, band, raw, reconstruction,
    diff, mask, cfg}], and the editor."""
    from pedit.data.pairs import load_rgb, read_pairs
    from pedit.edit.editor import Editor, tensor_to_uint8, uint8_to_tensor
    from pedit.edit.guidance import GuidanceScales
    from pedit.eval.ground_truth import EvalConfig, batch_seed, edge_band, eval_mask_configs, eval_sampling, run_method

    pairs = read_pairs(pairs_dir)
    held_out = [p.id for p in pairs if p.seed >= EVAL_SEEDS_FROM]
    if held_out:
        raise ConfigError(f"{len(held_out)} pair(s) of evaluation identities (seed >= {EVAL_SEEDS_FROM:,}), e.g. "
                          f"{held_out[0]!r}: tune on training identities only (gen-pairs --exact --seed 0).")
    cfg = EvalConfig(pairs=pairs_dir, model=model)
    mask_cfgs = eval_mask_configs(cfg, pairs)
    editor = Editor.from_pretrained(model, device="cpu")
    sampling = eval_sampling(cfg.sampling, editor.model.meta)
    size = editor.resolution
    scales = GuidanceScales(sampling.s_s, sampling.s_im, sampling.s_p)  # the folder's, as eval's ours
    rows = []
    import torch

    for start in range(0, len(pairs), batch_size):
        batch = pairs[start: start + batch_size]
        src = [load_rgb(p.x_A, size) for p in batch]
        tgt = [load_rgb(p.x_B, size) for p in batch]
        conds = [editor.conditions(uint8_to_tensor(s), editor.direction(p.direction)) for s, p in zip(src, batch)]
        cond = type(conds[0])(*(torch.cat([getattr(c, f.name) for c in conds]) for f in dataclasses.fields(conds[0])))
        cfgs = [mask_cfgs[p.direction] for p in batch]
        decoded, mask, diff = run_method(editor, "ours", cond, sampling.steps, scales, batch_seed(cfg.sampling.seed, start),
                                         cfgs, sampling.scheduler, sampling.guidance_interval, with_diff=True)
        recon = editor.model.parts.decode(cond.c_s)
        for i, p in enumerate(batch):
            true = np.any(src[i] != tgt[i], axis=2)
            rows.append({"direction": p.direction, "task": editor.direction(p.direction).task, "x_A": src[i],
                         "x_B": tgt[i].astype(np.float64), "true": true, "band": edge_band(true),
                         "raw": tensor_to_uint8(decoded[i: i + 1]), "reconstruction": tensor_to_uint8(recon[i: i + 1]),
                         "diff": diff[i].float().cpu().numpy(), "mask": mask[i: i + 1].cpu(), "cfg": cfgs[i]})
        if progress:
            progress("edit", min(start + batch_size, len(pairs)), len(pairs))
    return rows, editor


def score_settings(rows: list[dict], grid: PixelGrid, progress: Callable | None = None) -> dict:
    """{task: {key: summary}}: the latent mask as the folder sets it ("latent") and every pixel setting."""
    from pedit.edit.editor import keep_outside
    from pedit.edit.mask import composite
    from pedit.edit.pixel_mask import colour_change, prior_map, weight_from

    tallies: dict[str, dict[str, Tally]] = {}
    settings = list(grid.settings())
    for n, r in enumerate(rows):
        by_task = tallies.setdefault(r["task"], {})
        latent_cfg = dataclasses.replace(r["cfg"], refine="latent")
        out, weight = keep_outside(r["x_A"], r["raw"], r["mask"], latent_cfg)
        by_task.setdefault("latent", Tally()).add(out, r["x_B"], r["true"], r["band"], weight)
        priors = {g: prior_map(r["diff"], r["x_A"], r["cfg"].ratio, g) for g in grid.guide_radii}
        changes = {"input": colour_change(r["raw"], r["x_A"]), "reconstruction": colour_change(r["raw"], r["reconstruction"])}
        for s in settings:
            w = weight_from(priors[s["guide_radius"]], changes[s["change_from"]], s["prior_threshold"], s["prior_band"],
                            s["change_below"], s["edge_feather"])
            by_task.setdefault(key_of(s), Tally()).add(composite(r["x_A"], r["raw"], w), r["x_B"], r["true"], r["band"], w)
        if progress:
            progress("score", n + 1, len(rows))
    return {t: {k: v.summary() for k, v in by.items()} for t, by in tallies.items()}


def key_of(s: dict) -> str:
    return ", ".join(f"{k} {v}" for k, v in s.items())


def setting_of(key: str) -> dict:
    """The MaskConfig fields a `key_of` key names ("latent": the refine field alone)."""
    if key == "latent":
        return {"refine": "latent"}
    out = {}
    for part in key.split(", "):
        k, v = part.split(" ", 1)
        out[k] = v if k in ("refine", "change_from") else int(v) if k == "guide_radius" else float(v)
    return out
