"""Who a toon portrait is: the identity traits an edit must preserve, and the imperfections of generated pairs.

Drawn by pedit.toon.draw; rendered and paired by pedit.toon.world (its public API re-exports these names).
"""

from __future__ import annotations

import colorsys
from dataclasses import dataclass

import numpy as np

EXPRESSIONS = ("neutral", "angry", "shocked", "laughing", "crying")
COSTUMES = ("everyday", "flower", "sheep", "santa", "royal")
DIRECTIONS = COSTUMES[1:] + EXPRESSIONS[1:]  # same names as pedit.data.directions.BUILTIN

FACE_SHAPES = ("round", "oval", "square")
HAIR_STYLES = ("short", "long", "bun", "spiky", "bald")
GLASSES = ("none", "round", "square")
PATTERNS = ("plain", "stripes", "dots")
HATS = ("none", "cap", "beanie")

RGB = tuple[int, int, int]

_SKINS = [(255, 224, 196), (243, 199, 165), (226, 172, 132), (196, 134, 98), (150, 94, 62), (104, 66, 46)]
_HAIRS = [(35, 30, 30), (92, 56, 30), (145, 92, 48), (232, 190, 92), (190, 82, 36), (172, 172, 178),
          (60, 110, 215), (228, 96, 170), (70, 160, 90)]
_EYES = [(105, 66, 34), (55, 120, 205), (55, 150, 80), (110, 122, 135), (150, 110, 50), (30, 30, 30)]
FACE_ASPECT = {"round": 1.05, "oval": 1.22, "square": 1.1}  # b / a
FACE_CENTRE = (0.5, 0.47)  # fractions of the canvas; a little high, so headwear and shoulders both fit


@dataclass(frozen=True)
class Identity:
    """Everything an edit must preserve. Sizes are fractions of the image width."""

    seed: int
    face_shape: str
    face_width: float
    skin: RGB
    hair_style: str
    hair_color: RGB
    eye_color: RGB
    eye_size: float  # multiplies the eye radius
    brow_thickness: float
    glasses: str
    glasses_color: RGB
    clothing_color: RGB
    clothing_pattern: str
    pattern_color: RGB
    hat: str  # everyday headwear; any other costume replaces it
    hat_color: RGB
    background: tuple[RGB, RGB]  # top and bottom colour; equal means plain


def _hsv(h: float, s: float, v: float) -> RGB:
    return tuple(int(round(255 * c)) for c in colorsys.hsv_to_rgb(h % 1.0, s, v))


def sample_identity(seed: int) -> Identity:
    """A random identity, the same for the same seed on every machine."""
    rng = np.random.default_rng(seed)
    pick = lambda seq: seq[int(rng.integers(len(seq)))]  # noqa: E731
    bold = lambda: _hsv(rng.random(), rng.uniform(0.55, 0.9), rng.uniform(0.6, 0.95))  # noqa: E731
    bg_hue = rng.random()
    top = _hsv(bg_hue, rng.uniform(0.2, 0.45), rng.uniform(0.82, 0.97))
    bottom = top if rng.random() < 0.5 else _hsv(bg_hue + rng.uniform(0.1, 0.3), rng.uniform(0.25, 0.5), 0.85)
    return Identity(
        seed=int(seed),
        face_shape=pick(FACE_SHAPES),
        face_width=round(float(rng.uniform(0.4, 0.48)), 4),
        skin=pick(_SKINS),
        hair_style=pick(HAIR_STYLES),
        hair_color=pick(_HAIRS),
        eye_color=pick(_EYES),
        eye_size=round(float(rng.uniform(0.85, 1.15)), 4),
        brow_thickness=round(float(rng.uniform(0.012, 0.026)), 4),
        glasses=pick(GLASSES) if rng.random() < 0.5 else "none",
        glasses_color=pick([(30, 30, 30), (150, 40, 40), (40, 70, 160), (120, 80, 30)]),
        clothing_color=bold(),
        clothing_pattern=pick(PATTERNS),
        pattern_color=bold(),
        hat=pick(HATS[1:]) if rng.random() < 0.35 else "none",
        hat_color=bold(),
        background=(top, bottom),
    )


@dataclass(frozen=True)
class Imperfection:
    """How x_B of a generated pair departs from the exact edit (paper §3.3)."""

    shift_x: int = 0  # pixels at the output size; the whole x_B moves, edges are repeated
    shift_y: int = 0
    face_width: float = 1.0  # multiplies the face's width (not its height) in x_B
    color_drift: tuple[int, int, int] = (0, 0, 0)  # added to every pixel of x_B, clipped to 0..255

    def is_exact(self) -> bool:
        return (self.shift_x, self.shift_y, self.face_width, tuple(self.color_drift)) == (0, 0, 1.0, (0, 0, 0))

    def to_dict(self) -> dict:
        return {"shift_x": int(self.shift_x), "shift_y": int(self.shift_y),
                "face_width": float(self.face_width), "color_drift": [int(c) for c in self.color_drift]}

    @classmethod
    def from_dict(cls, d: dict) -> Imperfection:
        drift = tuple(int(c) for c in d["color_drift"])
        return cls(int(d["shift_x"]), int(d["shift_y"]), float(d["face_width"]), drift)


def sample_imperfection(rng: np.random.Generator, max_shift: int = 2, max_face_width: float = 0.06,
                        max_color_drift: int = 6) -> Imperfection:
    """Each amount uniform in [-max, max] (face width in [1 - max, 1 + max]); max 0 keeps it exact."""
    shift = [int(rng.integers(-max_shift, max_shift + 1)) if max_shift > 0 else 0 for _ in range(2)]
    width = round(1.0 + float(rng.uniform(-max_face_width, max_face_width)), 4) if max_face_width > 0 else 1.0
    drift = tuple(int(rng.integers(-max_color_drift, max_color_drift + 1)) if max_color_drift > 0 else 0
                  for _ in range(3))
    return Imperfection(shift[0], shift[1], width, drift)
