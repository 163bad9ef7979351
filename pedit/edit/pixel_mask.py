"""The editing mask at pixel resolution (MaskConfig.refine "pixel"): numpy only, no torch, so the
torch-free deployment runtime computes the same weight from the same arrays.

The paper's mask is binary on the latent grid (16x16 for the 128 px toon model): every cell is 8x8
pixels, so it cannot follow a mouth, a brow or a collar (pedit.eval.ceiling: the best any grid
mask reaches). This weight is made from what every edit already has:

- the MCDM's difference map D (h, w) before binarisation (pedit.edit.mask.difference_maps),
  clamped at mean x ratio and scaled to [0, 1] as `binarize` does, upsampled bilinearly to pixels
  (optionally guided-filtered by the input photo, `guide_radius`), and passed through a soft
  threshold: `prior_threshold` ± `prior_band` ramps from 0 to 1. This says where the model wants
  to edit, at pixel positions between the cells' centres instead of in 8-pixel steps;
- where the decoded edit really changes colour: the largest channel change of the edit against
  the input (or against the decoded reconstruction of the input, whose own VAE error then cancels),
  0 below change_below / 2 levels, 1 from change_below up (the latent kind's `change_weight` ramp).

The weight is their product, feathered by a Gaussian of `edge_feather` px (anti-aliasing the outline),
exactly 0 below 1/512 so those pixels keep the input's bytes. Which settings a model uses, and
whether it uses this kind at all, is measured on training identities (pedit.eval.pixel_tuning).
"""

from __future__ import annotations

import numpy as np

ZERO_BELOW = 1 / 512  # weights under half an 8-bit level are exactly 0: the input's pixel is kept


def box_mean(x: np.ndarray, r: int) -> np.ndarray:
    """Mean of x (H, W, ...) over the (2r+1) x (2r+1) window around each pixel; at the border the
    window is clipped and the mean taken over the pixels it covers. float64."""
    if r <= 0:
        return x.astype(np.float64)
    h, w = x.shape[:2]

    def window_sums(a: np.ndarray, axis: int) -> np.ndarray:
        n = a.shape[axis]
        shape = list(a.shape)
        shape[axis] = n + 2 * r + 1  # zeros beyond the border, and one in front for the prefix sums' start
        prefix = np.zeros(shape)
        inner = [slice(None)] * a.ndim
        inner[axis] = slice(r + 1, r + 1 + n)
        prefix[tuple(inner)] = a
        np.cumsum(prefix, axis=axis, out=prefix)
        hi = [slice(None)] * a.ndim
        lo = [slice(None)] * a.ndim
        hi[axis], lo[axis] = slice(2 * r + 1, 2 * r + 1 + n), slice(0, n)
        return prefix[tuple(hi)] - prefix[tuple(lo)]

    sums = window_sums(window_sums(x.astype(np.float64), 0), 1)
    count = np.outer(np.minimum(np.arange(h) + r + 1, h) - np.maximum(np.arange(h) - r, 0),
                     np.minimum(np.arange(w) + r + 1, w) - np.maximum(np.arange(w) - r, 0))  # (H, W)
    return sums / count.reshape(count.shape + (1,) * (x.ndim - 2))


def guided_filter(guide: np.ndarray, src: np.ndarray, r: int, eps: float) -> np.ndarray:
    """He, Sun and Tang's guided filter (ECCV 2010): src (H, W) smoothed where guide (H, W) or
    (H, W, C) is flat and kept sharp across its edges. Each (2r+1)^2 window fits src ≈ a·guide + b
    by ridge regression (eps on the guide's covariance); the output averages the windows' fits."""
    g = guide.astype(np.float64)
    g = g[..., None] if g.ndim == 2 else g
    c = g.shape[-1]
    p = src.astype(np.float64)
    upper = [(i, j) for i in range(c) for j in range(i, c)]  # the covariance is symmetric: its upper triangle
    means = box_mean(np.concatenate([g, p[..., None], g * p[..., None]] + [g[..., i:i + 1] * g[..., j:j + 1]
                                                                          for i, j in upper], axis=-1), r)
    mean_g, mean_p, mean_gp = means[..., :c], means[..., c], means[..., c + 1: 2 * c + 1]
    cov_gp = mean_gp - mean_g * mean_p[..., None]  # (H, W, C)
    var_g = np.empty(g.shape[:2] + (c, c))
    for k, (i, j) in enumerate(upper):
        var_g[..., i, j] = var_g[..., j, i] = means[..., 2 * c + 1 + k] - mean_g[..., i] * mean_g[..., j]
    a = np.linalg.solve(var_g + eps * np.eye(c), cov_gp[..., None])[..., 0]  # (H, W, C)
    b = mean_p - (a * mean_g).sum(-1)
    ab = box_mean(np.concatenate([a, b[..., None]], axis=-1), r)
    return (ab[..., :c] * g).sum(-1) + ab[..., c]


def upsample(a: np.ndarray, size: int) -> np.ndarray:
    """(h, w) → (size, size) bilinear with pixel centres aligned (torch's align_corners=False), the
    border clamped. float64."""
    h, w = a.shape

    def taps(n_in: int):
        x = np.clip((np.arange(size) + 0.5) * n_in / size - 0.5, 0, n_in - 1)
        lo = np.floor(x).astype(np.int64)
        return lo, np.minimum(lo + 1, n_in - 1), x - lo

    y0, y1, fy = taps(h)
    x0, x1, fx = taps(w)
    a = a.astype(np.float64)
    rows = a[y0] * (1 - fy)[:, None] + a[y1] * fy[:, None]  # (size, w)
    return rows[:, x0] * (1 - fx) + rows[:, x1] * fx


def soft_prior(diff: np.ndarray, ratio: float) -> np.ndarray:
    """(h, w) difference map → (h, w) in [0, 1]: clamped at mean x ratio and scaled by its maximum,
    the map `binarize` thresholds (pedit.edit.mask)."""
    d = np.minimum(diff.astype(np.float64), float(diff.mean()) * ratio)
    return d / max(float(d.max()), 1e-12)


def colour_change(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(H, W) float64 in levels 0-255: the largest channel difference of two uint8 (H, W, 3) images."""
    return np.abs(a.astype(np.int16) - b.astype(np.int16)).max(axis=2).astype(np.float64)


def gaussian_blur(x: np.ndarray, sigma: float) -> np.ndarray:
    """(..., H, W) blurred over its last two axes by a separable Gaussian of `sigma` px, support round(2 sigma),
    border replicated: the feather of the latent kind (pedit.edit.mask.pixel_mask) at pixel resolution. A
    stack of maps gives each map's own blur exactly (the same sums, in the same order)."""
    if sigma <= 0:
        return x.astype(np.float64)
    radius = max(1, int(round(2 * sigma)))
    k = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    k /= k.sum()
    h, w = x.shape[-2:]
    padded = np.pad(x.astype(np.float64), [(0, 0)] * (x.ndim - 2) + [(radius, radius)] * 2, mode="edge")
    rows = sum(k[i] * padded[..., :, i: i + w] for i in range(k.size))  # (..., H + 2r, W)
    return sum(k[i] * rows[..., i: i + h, :] for i in range(k.size))


def ramp(x: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """0 at or below lo, 1 at or above hi, linear between (a step at lo when hi <= lo)."""
    if hi <= lo:
        return (x > lo).astype(np.float64)
    return np.clip((x - lo) / (hi - lo), 0.0, 1.0)


def prior_map(diff: np.ndarray, original: np.ndarray, ratio: float, guide_radius: int = 0,
              guide_eps: float = 1e-3) -> np.ndarray:
    """(R, R) float64: the difference map (h, w) scaled as `binarize` does (ratio), upsampled to the
    input's size, and with guide_radius > 0 guided-filtered by the input (radius px, eps on [0, 1] colours)."""
    prior = upsample(soft_prior(diff, ratio), original.shape[0])
    if guide_radius > 0:
        prior = guided_filter(original / 255.0, prior, guide_radius, guide_eps)
    return prior


def weight_from(prior: np.ndarray, change: np.ndarray | None, prior_threshold: float, prior_band: float,
                change_below: float, feather_px: float) -> np.ndarray:
    """(R, R) float32 blend weight from a `prior_map` and the edit's `colour_change` (None: change_below off);
    elementwise but for the feather (gaussian_blur), so (N, R, R) stacks give each map's own weight."""
    weight = ramp(prior, prior_threshold - prior_band, prior_threshold + prior_band)
    if change_below > 0 and change is not None:
        weight = weight * ramp(change, change_below / 2, change_below)
    weight = np.clip(gaussian_blur(weight, feather_px), 0.0, 1.0)
    weight[weight < ZERO_BELOW] = 0.0
    return weight.astype(np.float32)


def pixel_weight(diff: np.ndarray, original: np.ndarray, raw: np.ndarray, reference: np.ndarray | None = None, *,
                 ratio: float, prior_threshold: float, prior_band: float, change_below: float, feather_px: float,
                 guide_radius: int = 0, guide_eps: float = 1e-3) -> np.ndarray:
    """The blend weight (R, R) float32 in [0, 1] of one edit at pixel resolution.

    diff: (h, w) the MCDM's difference map before binarisation; original, raw: (R, R, 3) uint8, the
    input and the decoded edit; reference: what the edit's colour change is measured against
    ((R, R, 3) uint8: the decoded reconstruction of the input), None = the input itself.
    ratio: the clamp of `binarize`; prior_threshold ± prior_band: the soft threshold of the
    upsampled map; change_below: the change (levels) from which a pixel takes the whole edit (none
    below half of it; 0: every pixel may change); feather_px: Gaussian sigma in pixels;
    guide_radius > 0: the upsampled map guided-filtered by the input (radius px, eps on [0, 1] colours).
    """
    prior = prior_map(diff, original, ratio, guide_radius, guide_eps)
    change = colour_change(raw, original if reference is None else reference) if change_below > 0 else None
    return weight_from(prior, change, prior_threshold, prior_band, change_below, feather_px)


def needs_reconstruction(cfg) -> bool:
    """Whether a MaskConfig's weight reads the decoded reconstruction of the input (one VAE decode)."""
    return cfg.refine == "pixel" and cfg.change_from == "reconstruction"


def refined_weight(cfg, diff: np.ndarray, original: np.ndarray, raw: np.ndarray,
                   reconstruction: np.ndarray | None = None) -> np.ndarray:
    """`pixel_weight` with a MaskConfig's settings (refine "pixel": ratio, prior_threshold, prior_band,
    change_below, change_from, edge_feather, guide_radius). diff: (h, w); original, raw, reconstruction:
    (R, R, 3) uint8. With change_from "reconstruction" the decoded reconstruction of the input is
    required (ValueError without it)."""
    if cfg.change_from == "reconstruction" and reconstruction is None:
        raise ValueError("change_from 'reconstruction' needs the decoded reconstruction of the input")
    return pixel_weight(diff, original, raw, reconstruction if cfg.change_from == "reconstruction" else None,
                        ratio=cfg.ratio, prior_threshold=cfg.prior_threshold, prior_band=cfg.prior_band,
                        change_below=cfg.change_below, feather_px=cfg.edge_feather, guide_radius=cfg.guide_radius)
