"""Background keying and the white outline: a sticker from a portrait on a plain background, no model.

The cartoon prompt asks for a plain background, and the toon world paints a flat colour or a vertical
two-colour gradient (pedit.toon.world `_Canvas`). So the background is modelled as a colour that
varies linearly from top to bottom, fitted robustly to the border pixels; a pixel is background when
it is close to that colour *and* connected to the border (a white eye on a white background stays).
The edge is soft: alpha ramps between two colour distances, and edge colours are un-mixed from the
background so no fringe of it remains around the outline.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from pedit.errors import InputImageError


@dataclass(frozen=True)
class MatteConfig:
    """Colour distances (0–441, Euclidean in RGB) between which alpha ramps from 0 to 1."""

    key_low: float = 14.0  # closer than this to the background colour: fully transparent
    key_high: float = 48.0  # farther than this: fully opaque
    min_island: float = 0.002  # opaque specks smaller than this fraction of the image are dropped
    outline: int = 10  # white outline width in pixels of the 512-px sticker
    pad: int = 6  # transparent margin beyond the outline

    def __post_init__(self):
        if not 0 <= self.key_low < self.key_high <= 441:
            raise ValueError(f"need 0 <= key_low < key_high <= 441, got {self.key_low}, {self.key_high}")
        if not 0 <= self.min_island < 1:
            raise ValueError(f"min_island must be in [0, 1), got {self.min_island}")
        if self.outline < 0 or self.pad < 0:
            raise ValueError("outline and pad must be >= 0")


@dataclass(frozen=True)
class Background:
    rows: np.ndarray  # (H, 3) float: the background colour of each row
    plain_fraction: float  # share of border samples within key_low of the fit: 1.0 = perfectly plain


def fit_background(rgb: np.ndarray, key_low: float = MatteConfig.key_low) -> Background:
    """Fit colour(y) = a + b·y to the top rows and side columns of `rgb` (H, W, 3) uint8.

    The bottom edge is left out: a head-and-shoulders portrait's body reaches it. Samples far from
    the fit (hair or shoulders touching a side) are dropped and the fit repeated.
    """
    h, w = rgb.shape[:2]
    k = max(1, round(0.02 * min(h, w)))  # border thickness sampled
    ys, xs = np.mgrid[0:h, 0:w]
    border = (ys < k) | (xs < k) | (xs >= w - k)
    y = ys[border].astype(np.float64) / max(1, h - 1)
    colours = rgb[border].astype(np.float64)  # (N, 3)
    design = np.stack([np.ones_like(y), y], axis=1)  # (N, 2)
    keep = np.ones(len(y), dtype=bool)
    for _ in range(4):
        coef, *_ = np.linalg.lstsq(design[keep], colours[keep], rcond=None)  # (2, 3)
        residual = np.linalg.norm(colours - design @ coef, axis=1)
        spread = np.median(residual[keep])
        new_keep = residual <= max(key_low, 3.0 * spread)
        if new_keep.sum() < 0.2 * len(y) or (new_keep == keep).all():
            break
        keep = new_keep
    rows = np.stack([np.ones(h), np.linspace(0, 1, h)], axis=1) @ coef  # (H, 3)
    return Background(rows=np.clip(rows, 0, 255), plain_fraction=float(np.mean(residual <= key_low)))


def key_out(rgb: np.ndarray, cfg: MatteConfig = MatteConfig()) -> np.ndarray:
    """(H, W, 3) uint8 portrait → (H, W, 4) uint8 RGBA with the plain background transparent."""
    import cv2

    h, w = rgb.shape[:2]
    bg = fit_background(rgb, cfg.key_low).rows[:, None, :]  # (H, 1, 3)
    pixels = rgb.astype(np.float64)
    distance = np.linalg.norm(pixels - bg, axis=2)  # (H, W)
    # Background = near-background pixels connected to the image border.
    near = (distance < cfg.key_high).astype(np.uint8)
    _, labels = cv2.connectedComponents(near, connectivity=8)
    edge_labels = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    background = np.isin(labels, edge_labels[edge_labels > 0])

    t = np.clip((distance - cfg.key_low) / (cfg.key_high - cfg.key_low), 0, 1)
    alpha = np.where(background, t * t * (3 - 2 * t), 1.0)
    rim = cv2.dilate(background.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool) & (distance >= cfg.key_low)
    mixed, coverage = _rim_coverage(pixels, bg, distance, cfg)
    alpha = np.where(rim & mixed, coverage, alpha)

    # Drop opaque specks (noise, a stray stroke) far smaller than the subject.
    solid = (alpha > 0.5).astype(np.uint8)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(solid, connectivity=8)
    small = [i for i in range(1, n) if stats[i, cv2.CC_STAT_AREA] < cfg.min_island * h * w]
    alpha[np.isin(labels, small)] = 0.0

    # Un-mix edge colours: pixel = a·fg + (1 − a)·bg  →  fg = (pixel − (1 − a)·bg) / a.
    a = alpha[..., None]
    fg = np.where(a > 0.02, (pixels - (1 - a) * bg) / np.maximum(a, 0.02), pixels)
    out = np.dstack([np.clip(fg, 0, 255), alpha * 255])
    return np.rint(out).astype(np.uint8)


def _rim_coverage(pixels: np.ndarray, bg: np.ndarray, distance: np.ndarray, cfg: MatteConfig):
    """Coverage of anti-aliased rim pixels: (is a mix of background and a neighbour, its share).

    An edge pixel is a·F + (1 − a)·B. F is taken as the neighbour (within 2 px) farthest from B; when
    the pixel lies on the line from B to F it is such a mix, and a = (p − B)·(F − B) / |F − B|². A dark
    outline at 25% coverage then gets a = 0.25, not the 1.0 a distance threshold would give it, while
    a subject colour merely close to B (grey hair on grey-blue) is no mix and keeps the threshold.
    """
    h, w = distance.shape
    r = 2
    padded_d = np.pad(distance, r, mode="edge")
    padded_p = np.pad(pixels, ((r, r), (r, r), (0, 0)), mode="edge")
    best_d = np.full((h, w), -1.0)
    far = pixels.copy()
    for dy in range(2 * r + 1):
        for dx in range(2 * r + 1):
            d = padded_d[dy:dy + h, dx:dx + w]
            take = d > best_d
            best_d = np.where(take, d, best_d)
            far[take] = padded_p[dy:dy + h, dx:dx + w][take]
    f_b = far - bg  # (H, W, 3)
    p_b = pixels - bg
    norm2 = np.maximum((f_b * f_b).sum(axis=2), 1e-6)
    coverage = np.clip((p_b * f_b).sum(axis=2) / norm2, 0, 1)
    off_line = np.linalg.norm(p_b - coverage[..., None] * f_b, axis=2)
    mixed = (best_d >= cfg.key_high) & (off_line < cfg.key_low)
    return mixed, coverage


def fit_to_canvas(rgba: np.ndarray, size: int, margin: int) -> np.ndarray:
    """Scale the opaque part of `rgba` to fit a size×size canvas with `margin` pixels free on each side."""
    alpha = rgba[..., 3]
    ys, xs = np.nonzero(alpha > 8)
    if len(ys) == 0:
        raise InputImageError("Nothing is left of the portrait once its background is keyed out: the picture is one "
                              "plain colour. Use a portrait with a person in it.")
    crop = Image.fromarray(rgba).crop((xs.min(), ys.min(), xs.max() + 1, ys.max() + 1))
    inner = size - 2 * margin
    scale = inner / max(crop.size)
    new_size = (max(1, round(crop.width * scale)), max(1, round(crop.height * scale)))
    # Resize premultiplied, or transparent pixels' colours bleed into the edge.
    crop = crop.convert("RGBa").resize(new_size, Image.Resampling.LANCZOS).convert("RGBA")
    canvas = Image.new("RGBA", (size, size), (0, 0, 0, 0))
    canvas.paste(crop, ((size - new_size[0]) // 2, (size - new_size[1]) // 2))
    return np.asarray(canvas)


def add_outline(rgba: np.ndarray, width: int, colour=(255, 255, 255)) -> np.ndarray:
    """A solid outline `width` pixels wide around the opaque part, anti-aliased, under the subject."""
    import cv2

    if width == 0:
        return rgba.copy()
    a = rgba[..., 3].astype(np.float64) / 255  # (H, W)
    outside = (a < 0.5).astype(np.uint8)
    distance = cv2.distanceTransform(outside, cv2.DIST_L2, 5)  # 0 inside, pixels to the subject outside
    ring = np.clip(width + 0.5 - distance, 0, 1)  # (H, W) outline alpha, soft on its outer edge
    # The subject over the outline layer ("over" compositing, straight alpha).
    out_a = a + ring * (1 - a)
    c = np.asarray(colour, np.float64)
    rgb = rgba[..., :3].astype(np.float64)
    out_rgb = (rgb * a[..., None] + c * (ring * (1 - a))[..., None]) / np.maximum(out_a, 1e-6)[..., None]
    out = np.dstack([out_rgb, out_a * 255])
    out[out_a == 0] = 0
    return np.rint(out).astype(np.uint8)


def make_sticker(portrait: Image.Image, size: int = 512, cfg: MatteConfig = MatteConfig()) -> Image.Image:
    """Portrait on a plain background → size×size RGBA sticker: keyed, fitted, outlined."""
    rgb = portrait.convert("RGB")
    if rgb.size != (size, size):
        rgb = rgb.resize((size, size), Image.Resampling.LANCZOS)
    keyed = key_out(np.asarray(rgb), cfg)
    fitted = fit_to_canvas(keyed, size, cfg.outline + cfg.pad)
    return Image.fromarray(add_outline(fitted, cfg.outline), "RGBA")
