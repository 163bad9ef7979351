"""The running scores of `pedit eval` (and the tuning scripts): per-pair sums of squared error inside,
outside and in the edge band of a true region, SSIM and the mask's IoU, pooled over pairs and per
direction; and the edge band itself."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import numpy as np

from pedit.eval.ceiling import mask_iou
from pedit.eval.report import NA_OFFLINE


@dataclass
class Scores:
    """Running sums for one method (or one method x direction)."""

    n: int = 0
    ssim: float = 0.0
    n_ssim: int = 0  # SSIM does not depend on the truth: scored once, against the full-resolution one
    sq_all: float = 0.0
    px_all: int = 0
    sq_in: float = 0.0
    px_in: int = 0
    sq_out: float = 0.0
    px_out: int = 0
    iou: float = 0.0
    n_iou: int = 0
    ceiling: float = 0.0  # best IoU any latent-grid mask reaches (pedit.eval.ceiling), summed like iou
    precision: float = 0.0  # of the predicted mask: the share of it inside the true mask
    recall: float = 0.0  # the share of the true mask it covers
    changed_iou: float = 0.0  # IoU of the pixels the output changed (any channel != the input's) with the true mask
    n_changed: int = 0
    edge_sq: float = 0.0  # squared error of the output in the edge band (edge_band: within EDGE_PX of the outline)
    edge_px: int = 0
    edge_wrong: int = 0  # edge-band pixels the predicted mask gets wrong (in it but outside the truth, or the reverse)
    edge_n: int = 0
    latent_iou: float = 0.0  # IoU of the binary latent mask (upsampled) whatever mask blended the output
    n_latent: int = 0

    def add(self, out: np.ndarray, target: np.ndarray, true_mask: np.ndarray, pred_mask: np.ndarray | None,
            ceiling: float | None = None, source: np.ndarray | None = None, latent_mask: np.ndarray | None = None,
            band: np.ndarray | None = None, ssim: bool = True) -> None:
        from skimage.metrics import structural_similarity

        band = edge_band(true_mask) if band is None else band

        err = (out.astype(np.float64) - target.astype(np.float64)) ** 2  # (H, W, 3)
        self.n += 1
        if ssim:
            self.ssim += structural_similarity(out, target, channel_axis=2, data_range=255)
            self.n_ssim += 1
        self.sq_all += err.sum()
        self.px_all += err.size
        self.sq_in += err[true_mask].sum()
        self.px_in += err[true_mask].size
        self.sq_out += err[~true_mask].sum()
        self.px_out += err[~true_mask].size
        self.edge_sq += err[band].sum()
        self.edge_px += err[band].size
        if pred_mask is not None:
            self.edge_wrong += int((pred_mask[band] != true_mask[band]).sum())
            self.edge_n += int(band.sum())
        if latent_mask is not None:
            self.latent_iou += mask_iou(latent_mask, true_mask)
            self.n_latent += 1
        if source is not None:  # what the method actually changed, whatever its mask said
            self.changed_iou += mask_iou(np.any(out != source, axis=2), true_mask)
            self.n_changed += 1
        if pred_mask is not None:
            self.iou += mask_iou(pred_mask, true_mask)
            self.n_iou += 1
            self.ceiling += ceiling if ceiling is not None else float("nan")
            inter = np.logical_and(pred_mask, true_mask).sum()
            self.precision += inter / pred_mask.sum() if pred_mask.any() else 1.0
            self.recall += inter / true_mask.sum() if true_mask.any() else 1.0

    def merge(self, other: "Scores") -> None:
        """Add another Scores' running sums to these (every field is a sum or a count)."""
        for f in dataclasses.fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))

    @staticmethod
    def _psnr(sq: float, px: int) -> float | None:
        if px == 0:
            return None
        mse = sq / px
        return float("inf") if mse == 0 else 10 * math.log10(255.0**2 / mse)

    def summary(self) -> dict:
        return {
            "pairs": self.n,
            "ssim": self.ssim / self.n_ssim if self.n_ssim else None,
            "psnr": self._psnr(self.sq_all, self.px_all),
            "psnr_in_mask": self._psnr(self.sq_in, self.px_in),
            "psnr_outside_mask": self._psnr(self.sq_out, self.px_out),
            "mask_iou": self.iou / self.n_iou if self.n_iou else None,
            "mask_iou_ceiling": self.ceiling / self.n_iou if self.n_iou else None,
            "mask_precision": self.precision / self.n_iou if self.n_iou else None,
            "mask_recall": self.recall / self.n_iou if self.n_iou else None,
            "changed_pixels_iou": self.changed_iou / self.n_changed if self.n_changed else None,
            "latent_mask_iou": self.latent_iou / self.n_latent if self.n_latent else None,
            "psnr_edge_band": self._psnr(self.edge_sq, self.edge_px),
            "mask_edge_error": self.edge_wrong / self.edge_n if self.edge_n else None,
            "lpips": NA_OFFLINE,
            "fid": NA_OFFLINE,
        }


@dataclass
class Tally:
    """One method's Scores on one kind of truth: pooled over the pairs, and per direction."""

    pooled: Scores = field(default_factory=Scores)
    by_direction: dict = field(default_factory=dict)

    def add(self, direction: str, *scores, **kw) -> None:
        one = Scores()  # one pair's sums, computed once, then counted pooled and for its direction
        one.add(*scores, **kw)
        self.pooled.merge(one)
        self.by_direction.setdefault(direction, Scores()).merge(one)

    def per_direction(self) -> dict:
        return {d: s.summary() for d, s in sorted(self.by_direction.items())}


EDGE_PX = 3  # the edge band: pixels within this many px of the true region's outline, on either side


def edge_band(true_mask: np.ndarray, px: int = EDGE_PX) -> np.ndarray:
    """(H, W) bool: pixels within `px` (Euclidean) of the other side of the true mask's outline,
    inside and outside it; empty for an empty or full mask."""
    from scipy.ndimage import distance_transform_edt

    if true_mask.all() or not true_mask.any():
        return np.zeros_like(true_mask, dtype=bool)
    to_inside = distance_transform_edt(~true_mask)  # outside pixels: distance to the nearest true pixel
    to_outside = distance_transform_edt(true_mask)  # inside pixels: distance to the nearest outside pixel
    return np.where(true_mask, to_outside, to_inside) <= px
