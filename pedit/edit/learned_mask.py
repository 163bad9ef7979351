"""The learned pixel-resolution mask (MaskConfig.refine "learned"): numpy only, no torch, so the
torch-free runtime computes the same weight as the torch editor.

A small convolutional network (pedit.model.mask_refiner: a few thousand weights in the model
folder, trained on exact toon pairs of training identities by scripts/train_mask_refiner.py)
reads, at pixel resolution, what every edit already has (FEATURES): the MCDM's difference map
before binarisation scaled as `binarize` does and upsampled bilinearly, the edit's largest channel
change from the input, the input and the decoded edit (RGB in [0, 1]) and the binary latent mask
upsampled; it gives the probability that a pixel lies in the edited region. The blend weight is
that probability through the soft threshold `refiner_threshold` ± `refiner_band`, times (with
`refiner_change_below` > 0) the pixel kind's ramp on where the edit changes colour from the input,
feathered by `refiner_feather` px and exactly 0 below 1/512 (pedit.edit.pixel_mask.weight_from), so
pixels outside keep the input's bytes.
"""

from __future__ import annotations

import numpy as np

from pedit.edit.pixel_mask import colour_change, soft_prior, upsample, weight_from
from pedit.model.mask_refiner import FEATURES, Refiner, load_refiner


def features(diff: np.ndarray, original: np.ndarray, raw: np.ndarray, mask_latent: np.ndarray,
             ratio: float) -> np.ndarray:
    """(len(FEATURES), R, R) float32. diff: (h, w) difference map; original, raw: (R, R, 3) uint8;
    mask_latent: (h, w) binary latent mask; ratio: the clamp of `binarize`."""
    size = original.shape[0]
    lat = np.asarray(mask_latent, dtype=np.float64)
    f = size // lat.shape[-1]
    rows = [upsample(soft_prior(diff, ratio), size), colour_change(raw, original) / 255.0,
            *(original.transpose(2, 0, 1) / 255.0), *(raw.transpose(2, 0, 1) / 255.0),
            np.repeat(np.repeat(lat, f, axis=0), f, axis=1)]
    return np.stack(rows).astype(np.float32)


BAND_PIXELS = 1 << 16  # output pixels a matrix product takes at once: a 128-px image in one, 512 px in 4 bands


def conv2d(x: np.ndarray, w: np.ndarray, b: np.ndarray, dilation: int) -> np.ndarray:
    """(in, H, W) → (out, H, W): a 'same' convolution (zeros beyond the border) with a dilated k x k kernel,
    as matrix products over the k x k shifted copies of x, a band of rows at a time, so the copies
    take at most k*k*in*BAND_PIXELS floats (9 MB for 16 channels) whatever the resolution."""
    c, h, wd = x.shape
    k = w.shape[-1]
    pad = dilation * (k // 2)
    xp = np.zeros((c, h + 2 * pad, wd + 2 * pad), dtype=np.float32)
    xp[:, pad: pad + h, pad: pad + wd] = x
    kernel = np.ascontiguousarray(w.transpose(0, 2, 3, 1)).reshape(w.shape[0], -1)  # (out, k, k, in) flattened
    out = np.empty((w.shape[0], h, wd), dtype=np.float32)
    band = max(1, BAND_PIXELS // wd)
    for top in range(0, h, band):
        rows = min(band, h - top)
        cols = np.empty((k, k, c, rows, wd), dtype=np.float32)  # the taps, in the weight's (i, j) order
        for i in range(k):
            for j in range(k):
                r0 = top + i * dilation
                cols[i, j] = xp[:, r0: r0 + rows, j * dilation: j * dilation + wd]
        out[:, top: top + rows] = (kernel @ cols.reshape(k * k * c, rows * wd) + b[:, None]).reshape(-1, rows, wd)
    return out


def probability(refiner: Refiner, feats: np.ndarray) -> np.ndarray:
    """(R, R) float32: the refiner's probability that each pixel is in the edited region."""
    x = feats.astype(np.float32)
    last = len(refiner.layers) - 1
    for n, (w, b, d) in enumerate(refiner.layers):
        x = conv2d(x, w, b, d)
        if n < last:
            np.maximum(x, 0, out=x)
    return (1.0 / (1.0 + np.exp(-x[0].astype(np.float64)))).astype(np.float32)


def learned_weight(cfg, diff: np.ndarray, original: np.ndarray, raw: np.ndarray, mask_latent) -> np.ndarray:
    """The blend weight (R, R) float32 in [0, 1] of one edit with a MaskConfig's refiner (refine "learned":
    refiner, ratio, refiner_threshold, refiner_band, refiner_change_below (0: off), refiner_feather).
    mask_latent: (h, w) or (1, 1, h, w) binary."""
    refiner = load_refiner(cfg.refiner, original.shape[0])
    lat = np.asarray(mask_latent).reshape(np.asarray(mask_latent).shape[-2:])
    feats = features(diff, original, raw, lat, cfg.ratio)
    p = probability(refiner, feats).astype(np.float64)
    change = colour_change(raw, original) if cfg.refiner_change_below > 0 else None
    return weight_from(p, change, cfg.refiner_threshold, cfg.refiner_band, cfg.refiner_change_below, cfg.refiner_feather)
