"""The toon domain: procedural cartoon portraits whose edits have a known ground truth.

No pretrained weights can be fetched on the project's machines, so every claim that the MCDM learns
is checked here (docs/design-notes.md, "The toon world"). A portrait is an `Identity` (everything an edit must
preserve), an expression and a costume. `make_pair` renders one identity twice, as x_A (neutral,
everyday) and as x_B (one of the 8 `DIRECTIONS`); the ground-truth edit mask is where the two differ.
Like generated pairs (paper §3.3, "the face in x_B is slightly wider") training pairs can be made
imperfect with an `Imperfection`; the mask always comes from the exact pair.

Rendering uses PIL only: shapes are drawn at 2x and box-downsampled, which antialiases them for
about a millisecond per 128-px portrait. Every layout number is a fraction of the canvas or of the
face's half-axes (a, b), so any size >= 32 gives the same picture.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pedit.toon.draw import draw, face_box  # noqa: F401 (face_box: part of the world's API)
from pedit.toon.identity import (  # noqa: F401 (the world's API: callers import these names from here)
    COSTUMES, DIRECTIONS, EXPRESSIONS, FACE_SHAPES, GLASSES, HAIR_STYLES, HATS, PATTERNS, Identity, Imperfection,
    sample_identity, sample_imperfection,
)


def _shift(img: np.ndarray, dx: int, dy: int) -> np.ndarray:
    """Move the picture by (dx, dy) pixels, repeating the edge rows/columns instead of wrapping."""
    if dx == 0 and dy == 0:
        return img
    h, w, p = img.shape[0], img.shape[1], max(abs(dx), abs(dy))
    padded = np.pad(img, ((p, p), (p, p), (0, 0)), mode="edge")
    return padded[p - dy:p - dy + h, p - dx:p - dx + w]


def render(identity: Identity | int, expression: str = "neutral", costume: str = "everyday", size: int = 128,
           imperfection: Imperfection | None = None) -> np.ndarray:
    """One portrait, (size, size, 3) uint8. An int identity is a seed for `sample_identity`."""
    if expression not in EXPRESSIONS:
        raise ValueError(f"Unknown expression {expression!r}. Valid: {', '.join(EXPRESSIONS)}.")
    if costume not in COSTUMES:
        raise ValueError(f"Unknown costume {costume!r}. Valid: {', '.join(COSTUMES)}.")
    if size < 32:
        raise ValueError(f"size must be at least 32 pixels, got {size}.")
    idn = sample_identity(identity) if isinstance(identity, (int, np.integer)) else identity
    imp = imperfection or Imperfection()
    img = draw(idn, expression, costume, size, imp.face_width)
    img = _shift(img, imp.shift_x, imp.shift_y)
    if any(imp.color_drift):
        img = np.clip(img.astype(np.int16) + np.array(imp.color_drift, np.int16), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(img)


@dataclass(frozen=True)
class ToonPair:
    x_A: np.ndarray  # (H, W, 3) uint8: neutral expression, everyday costume
    x_B: np.ndarray  # (H, W, 3) uint8: the edit with the imperfection applied (training target)
    x_B_exact: np.ndarray  # (H, W, 3) uint8: the edit without imperfection (ground truth)
    mask: np.ndarray  # (H, W) bool: where x_A and x_B_exact differ
    identity_seed: int
    direction: str
    imperfection: Imperfection


def make_pair(identity_seed: int, direction: str, size: int = 128,
              imperfection: Imperfection | None = None) -> ToonPair:
    """x_A and its edit along `direction` (a costume or an expression) for one identity."""
    if direction not in DIRECTIONS:
        raise ValueError(f"Unknown toon direction {direction!r}. Valid: {', '.join(DIRECTIONS)}.")
    idn = sample_identity(identity_seed)
    expression, costume = (direction, "everyday") if direction in EXPRESSIONS else ("neutral", direction)
    imp = imperfection or Imperfection()
    x_A = render(idn, size=size)
    x_B_exact = render(idn, expression, costume, size)
    x_B = x_B_exact if imp.is_exact() else render(idn, expression, costume, size, imp)
    mask = np.any(x_A != x_B_exact, axis=-1)
    return ToonPair(x_A, x_B, x_B_exact, mask, int(identity_seed), direction, imp)
