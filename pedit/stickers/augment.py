"""Augmented views of one selfie for DreamBooth (paper §4): random crops and homographies, seeded.

DreamBooth on a single photo overfits to its framing; a few dozen views that move, tilt and slightly
re-project the face teach the subject instead. Every view keeps the whole face box inside the frame
(with a margin): a view that would cut the face is drawn again.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from pedit.photos.portrait import Box


@dataclass(frozen=True)
class AugmentConfig:
    n_views: int = 16
    size: int = 512  # output side (the base model's resolution)
    min_crop: float = 0.6  # smallest crop side, as a fraction of the image's shorter side
    max_perspective: float = 0.08  # corner jitter, as a fraction of the crop side
    max_rotate: float = 10.0  # degrees
    flip: bool = True  # mirror half of the views
    margin: float = 0.02  # the face stays this fraction of `size` away from every edge
    seed: int = 0
    max_tries: int = 100

    def __post_init__(self):
        if self.n_views < 1 or self.size < 8 or self.max_tries < 1:
            raise ValueError("n_views >= 1, size >= 8 and max_tries >= 1 are required")
        if not 0 < self.min_crop <= 1 or not 0 <= self.max_perspective < 0.25 or not 0 <= self.margin < 0.25:
            raise ValueError("need 0 < min_crop <= 1, 0 <= max_perspective < 0.25, 0 <= margin < 0.25")
        if not 0 <= self.max_rotate <= 45:
            raise ValueError("max_rotate must be in [0, 45] degrees")


@dataclass(frozen=True)
class View:
    image: Image.Image  # RGB, size×size
    matrix: np.ndarray  # (3, 3): source pixel (x, y, 1) → view pixel, the flip included
    face: np.ndarray | None  # (4, 2) the face box's corners in the view


def _corners(box: Box) -> np.ndarray:
    return np.array([[box.x, box.y], [box.x + box.w, box.y], [box.x + box.w, box.y + box.h], [box.x, box.y + box.h]],
                    dtype=np.float64)


def apply(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    """(N, 2) points through a 3×3 homography."""
    p = np.c_[points, np.ones(len(points))] @ matrix.T
    return p[:, :2] / p[:, 2:3]


def _draw_matrix(rng: np.random.Generator, width: int, height: int, face: Box | None, cfg: AugmentConfig) -> np.ndarray:
    """One random homography: a square crop (holding the face), rotated, its corners jittered."""
    import cv2

    short = min(width, height)
    side = rng.uniform(cfg.min_crop, 1.0) * short
    if face is not None:
        side = max(side, min(short, 1.15 * max(face.w, face.h)))
        x_lo, x_hi = max(0.0, face.x + face.w - side), min(width - side, float(face.x))
        y_lo, y_hi = max(0.0, face.y + face.h - side), min(height - side, float(face.y))
    else:
        x_lo, x_hi, y_lo, y_hi = 0.0, width - side, 0.0, height - side
    x0 = rng.uniform(x_lo, max(x_lo, x_hi))
    y0 = rng.uniform(y_lo, max(y_lo, y_hi))
    cx, cy = x0 + side / 2, y0 + side / 2
    angle = np.deg2rad(rng.uniform(-cfg.max_rotate, cfg.max_rotate))
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    square = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], dtype=np.float64) * side / 2
    jitter = rng.uniform(-cfg.max_perspective, cfg.max_perspective, size=(4, 2)) * side
    source = (square + jitter) @ rot.T + [cx, cy]  # (4, 2) the quad that becomes the output square
    s = cfg.size
    target = np.array([[0, 0], [s, 0], [s, s], [0, s]], dtype=np.float64)
    matrix = cv2.getPerspectiveTransform(source.astype(np.float32), target.astype(np.float32)).astype(np.float64)
    if cfg.flip and rng.random() < 0.5:
        matrix = np.array([[-1, 0, s], [0, 1, 0], [0, 0, 1]], dtype=np.float64) @ matrix
    return matrix


def _face_inside(quad: np.ndarray, size: int, margin: float) -> bool:
    m = margin * size
    return bool(np.all(quad >= m) and np.all(quad <= size - m))


def augment_views(image: Image.Image, face: Box | None, cfg: AugmentConfig = AugmentConfig()) -> list[View]:
    """`cfg.n_views` seeded views of `image`; with a face box, the whole face is inside each view."""
    import cv2

    rgb = np.asarray(image.convert("RGB"))
    height, width = rgb.shape[:2]
    rng = np.random.default_rng(cfg.seed)
    views = []
    for _ in range(cfg.n_views):
        for _ in range(cfg.max_tries):
            matrix = _draw_matrix(rng, width, height, face, cfg)
            quad = None if face is None else apply(matrix, _corners(face))
            if quad is None or _face_inside(quad, cfg.size, cfg.margin):
                break
        else:
            # Nothing random fitted (a face filling the photo): the plain crop around it, no warp.
            matrix, quad = _plain_crop(width, height, face, cfg.size), None
            quad = apply(matrix, _corners(face))
        warped = cv2.warpPerspective(rgb, matrix, (cfg.size, cfg.size), flags=cv2.INTER_LINEAR,
                                     borderMode=cv2.BORDER_REFLECT_101)
        views.append(View(Image.fromarray(warped), matrix, quad))
    return views


def _plain_crop(width: int, height: int, face: Box, size: int) -> np.ndarray:
    """The whole image scaled to fit `size` (so any face in it is inside the frame)."""
    scale = size / max(width, height)
    dx, dy = (size - width * scale) / 2, (size - height * scale) / 2
    return np.array([[scale, 0, dx], [0, scale, dy], [0, 0, 1]], dtype=np.float64)
