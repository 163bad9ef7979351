"""Drawing one toon portrait with PIL: shapes at 2x, box-downsampled, which antialiases them.

Every layout number is a fraction of the canvas or of the face's half-axes (a, b), so any size >= 32
gives the same picture. `draw` is what pedit.toon.world.render calls.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw

from pedit.toon.identity import EXPRESSIONS, FACE_ASPECT, FACE_CENTRE, RGB, Identity, sample_identity

_INK = (40, 30, 35)  # cartoon outlines, pupils, closed eyes
_MOUTH = (110, 20, 40)
_TEAR, _TEAR_EDGE = (110, 190, 255), (30, 100, 220)
_WOOL, _WOOL_EDGE = (250, 248, 240), (190, 186, 180)
_GOLD, _GOLD_EDGE = (255, 196, 30), (170, 110, 0)
_SANTA_RED, _PURPLE = (215, 25, 40), (105, 35, 160)


def _mix(c1: RGB, c2: RGB, t: float) -> RGB:
    return tuple(int(round(x + (y - x) * t)) for x, y in zip(c1, c2))


def _dark(c: RGB, f: float = 0.6) -> RGB:
    return tuple(int(x * f) for x in c)


def _box(x: float, y: float, rx: float, ry: float) -> list[float]:
    return [x - rx, y - ry, x + rx, y + ry]


class _Canvas:
    """The 2x drawing surface and the face geometry every part is placed by."""

    def __init__(self, idn: Identity, size: int, face_scale: float):
        self.idn, self.D = idn, 2 * size
        D = self.D
        self.lw = max(1, round(D / 128))  # outline: one output pixel of a 128-px portrait
        self.cx, self.cy = FACE_CENTRE[0] * D, FACE_CENTRE[1] * D
        self.b = idn.face_width * D / 2 * FACE_ASPECT[idn.face_shape]
        self.a = idn.face_width * D / 2 * face_scale  # the imperfection widens the face, not its height
        self.ey = self.cy - 0.02 * self.b  # eye line
        self.ex = 0.42 * self.a  # eye offset from the centre line
        self.er = 0.19 * self.a * idn.eye_size
        self.my = self.cy + 0.5 * self.b  # mouth line
        top, bottom = (np.array(c, np.float32) for c in idn.background)
        t = np.linspace(0.0, 1.0, D, dtype=np.float32)[:, None]
        rows = (top * (1 - t) + bottom * t + 0.5).astype(np.uint8)  # (D, 3) vertical gradient
        self.img = Image.fromarray(np.ascontiguousarray(np.broadcast_to(rows[:, None], (D, D, 3))))
        self.d = ImageDraw.Draw(self.img)


def face_box(identity: Identity | int, size: int = 128) -> tuple[int, int, int, int]:
    """The face's bounding box (x0, y0, x1, y1), inclusive, in output pixels of the exact render.

    Expressions change pixels inside it only; the eyes and mouth in its middle never change with a costume.
    """
    idn = sample_identity(identity) if isinstance(identity, (int, np.integer)) else identity
    D = 2 * size  # the same geometry as _Canvas, in canvas pixels, then halved
    a = idn.face_width * D / 2
    b = a * FACE_ASPECT[idn.face_shape]
    cx, cy = FACE_CENTRE[0] * D, FACE_CENTRE[1] * D
    return (int(math.floor((cx - a) / 2)), int(math.floor((cy - b) / 2)),
            int(math.ceil((cx + a) / 2)), int(math.ceil((cy + b) / 2)))


def _clothing(g: _Canvas, base: RGB, pattern: str, pcolor: RGB = _INK) -> None:
    """Shoulders: a patterned layer pasted through an ellipse mask, so patterns never leave the body."""
    D, top = g.D, int(0.76 * g.D)
    body = [0.12 * D, 0.79 * D - top, 0.88 * D, 1.5 * D - top]
    layer = Image.new("RGB", (D, D - top), base)
    ld = ImageDraw.Draw(layer)
    step = 0.075 * D
    if pattern == "stripes":
        for y in np.arange(0.03 * D, D - top, step):
            ld.rectangle([0, y, D, y + 0.032 * D], fill=pcolor)
    elif pattern in ("dots", "flowers", "wool"):
        for row, y in enumerate(np.arange(0.06 * D, D - top + step, step)):
            for x in np.arange((row % 2) * step / 2, D + step, step):
                if pattern == "dots":
                    ld.ellipse(_box(x, y, 0.016 * D, 0.016 * D), fill=pcolor)
                elif pattern == "wool":
                    ld.ellipse(_box(x, y, 0.042 * D, 0.036 * D), fill=_WOOL, outline=_WOOL_EDGE, width=g.lw)
                else:
                    _flower(ld, x, y, 0.022 * D, [(255, 80, 140), (255, 255, 255), (255, 170, 40)][(row + int(x)) % 3])
    mask = Image.new("L", layer.size, 0)
    ImageDraw.Draw(mask).ellipse(body, fill=255)
    g.img.paste(layer, (0, top), mask)
    g.d.ellipse([body[0], body[1] + top, body[2], body[3] + top], outline=_dark(base), width=g.lw)


def _flower(d: ImageDraw.ImageDraw, x: float, y: float, r: float, petal: RGB) -> None:
    for k in range(5):
        t = 2 * math.pi * k / 5 - math.pi / 2
        d.ellipse(_box(x + 0.55 * r * math.cos(t), y + 0.55 * r * math.sin(t), 0.5 * r, 0.5 * r), fill=petal,
                  outline=_dark(petal, 0.75))
    d.ellipse(_box(x, y, 0.35 * r, 0.35 * r), fill=(255, 215, 0))


def _body(g: _Canvas, costume: str) -> None:
    idn, d, D, cx, a, lw = g.idn, g.d, g.D, g.cx, g.a, g.lw
    d.rectangle([cx - 0.36 * a, g.cy + 0.5 * g.b, cx + 0.36 * a, 0.86 * D], fill=idn.skin)  # neck
    if costume == "everyday":
        _clothing(g, idn.clothing_color, idn.clothing_pattern, idn.pattern_color)
        d.chord(_box(cx, 0.79 * D, 0.42 * a, 0.07 * D), 0, 180, fill=idn.skin)  # round neckline
    elif costume == "flower":
        _clothing(g, (120, 205, 110), "flowers")
        d.chord(_box(cx, 0.79 * D, 0.42 * a, 0.07 * D), 0, 180, fill=idn.skin)
    elif costume == "sheep":
        _clothing(g, _WOOL, "wool")
    elif costume == "santa":
        _clothing(g, _SANTA_RED, "plain")
        d.rectangle([cx - 0.045 * D, 0.8 * D, cx + 0.045 * D, D], fill=_WOOL)  # fur placket
        for y in (0.9 * D, 0.97 * D):
            d.ellipse(_box(cx, y, 0.014 * D, 0.014 * D), fill=_INK)
        d.ellipse(_box(cx, 0.8 * D, 1.0 * a, 0.05 * D), fill=_WOOL, outline=_WOOL_EDGE, width=lw)  # fur collar
    elif costume == "royal":
        _clothing(g, _PURPLE, "plain")
        d.ellipse(_box(cx, 0.81 * D, 1.25 * a, 0.075 * D), fill=_WOOL, outline=_GOLD, width=2 * lw)  # ermine
        for k in range(-3, 4):
            d.ellipse(_box(cx + k * 0.33 * a, 0.815 * D + (k % 2) * 0.02 * D, 0.01 * D, 0.018 * D), fill=_INK)
        d.ellipse(_box(cx, 0.87 * D, 0.035 * D, 0.035 * D), fill=_GOLD, outline=_GOLD_EDGE, width=lw)  # brooch
        d.ellipse(_box(cx, 0.87 * D, 0.016 * D, 0.016 * D), fill=(220, 20, 60))


def _hair_back(g: _Canvas) -> None:
    if g.idn.hair_style == "long":
        g.d.rounded_rectangle([g.cx - 1.22 * g.a, g.cy - 1.1 * g.b, g.cx + 1.22 * g.a, g.cy + 1.2 * g.b],
                              radius=0.6 * g.a, fill=g.idn.hair_color, outline=_dark(g.idn.hair_color), width=g.lw)


def _hair_front(g: _Canvas) -> None:
    idn, d, cx, cy, a, b = g.idn, g.d, g.cx, g.cy, g.a, g.b
    col, edge = idn.hair_color, _dark(idn.hair_color)
    for s in (-1, 1):  # side locks over the temples, bald heads keep only these
        d.ellipse(_box(cx + s * 0.93 * a, cy - 0.45 * b, 0.16 * a, 0.3 * b), fill=col)
    if idn.hair_style == "bald":
        return
    if idn.hair_style == "bun":
        d.ellipse(_box(cx, cy - 1.15 * b, 0.4 * a, 0.4 * a), fill=col, outline=edge, width=g.lw)
    if idn.hair_style == "spiky":
        for k in range(-3, 4):
            t = math.pi / 2 + k * 0.32  # spikes fan out over the top of the head
            bx, by = cx + 1.0 * a * math.cos(t), cy - 0.75 * b * math.sin(t) - 0.3 * b
            tip = (cx + 1.45 * a * math.cos(t), cy - 1.12 * b * math.sin(t) - 0.3 * b)
            d.polygon([(bx - 0.22 * a, by), tip, (bx + 0.22 * a, by)], fill=col, outline=edge)
    d.chord([cx - 1.08 * a, cy - 1.15 * b, cx + 1.08 * a, cy + 0.22 * b], 180, 360, fill=col, outline=edge, width=g.lw)


def _face(g: _Canvas, ears: bool) -> None:
    idn, d, cx, cy, a, b = g.idn, g.d, g.cx, g.cy, g.a, g.b
    edge = _dark(idn.skin, 0.7)
    if ears:
        for s in (-1, 1):
            d.ellipse(_box(cx + s * a, cy + 0.02 * b, 0.16 * a, 0.2 * b), fill=idn.skin, outline=edge, width=g.lw)
    if idn.face_shape == "square":
        d.rounded_rectangle(_box(cx, cy, a, b), radius=0.45 * a, fill=idn.skin, outline=edge, width=g.lw)
    else:
        d.ellipse(_box(cx, cy, a, b), fill=idn.skin, outline=edge, width=g.lw)
    d.ellipse(_box(cx, cy + 0.22 * b, 0.07 * a, 0.05 * a), fill=_dark(idn.skin, 0.78))  # nose


def _eye_open(g: _Canvas, x: float, scale: float = 1.0, iris: float = 0.62) -> None:
    r, ey, d = g.er * scale, g.ey, g.d
    d.ellipse(_box(x, ey, r, 1.15 * r), fill=(255, 255, 255), outline=_INK, width=g.lw)
    d.ellipse(_box(x, ey + 0.1 * r, iris * r, iris * r), fill=g.idn.eye_color)
    d.ellipse(_box(x, ey + 0.1 * r, 0.5 * iris * r, 0.5 * iris * r), fill=_INK)
    d.ellipse(_box(x - 0.25 * r, ey - 0.2 * r, 0.16 * r, 0.16 * r), fill=(255, 255, 255))


def _brow(g: _Canvas, x: float, s: int, lift_out: float, lift_in: float, width: float = 1.0) -> None:
    """A brow from its outer to its inner end; lifts are fractions of b above the neutral brow line."""
    y, w = g.ey - 0.36 * g.b, g.idn.brow_thickness * g.D * width
    outer = (x - s * 0.3 * g.a, y - lift_out * g.b)
    inner = (x + s * 0.25 * g.a, y - lift_in * g.b)
    mid = ((outer[0] + inner[0]) / 2, (outer[1] + inner[1]) / 2 - 0.05 * g.b)  # slight arch
    g.d.line([outer, mid, inner], fill=_dark(g.idn.hair_color, 0.8), width=max(1, round(w)), joint="curve")


def _cheeks(g: _Canvas, color: RGB, t: float) -> None:
    for s in (-1, 1):
        cheek = _box(g.cx + s * 0.6 * g.a, g.cy + 0.3 * g.b, 0.17 * g.a, 0.1 * g.b)
        g.d.ellipse(cheek, fill=_mix(g.idn.skin, color, t))


def _expression(g: _Canvas, expression: str) -> None:
    """Eyes, brows, mouth and tears: all inside the face's box (what `face_box` promises)."""
    idn, d, cx, a, b, lw, er, ey, my = g.idn, g.d, g.cx, g.a, g.b, g.lw, g.er, g.ey, g.my
    eyes = [(cx + s * g.ex, s) for s in (-1, 1)]  # s: -1 viewer's left, +1 right; inner side is -s
    if expression == "neutral":
        _cheeks(g, (255, 120, 140), 0.25)
        for x, s in eyes:
            _eye_open(g, x)
            _brow(g, x, -s, 0.0, 0.0)
        d.arc([cx - 0.26 * a, my - 0.14 * b, cx + 0.26 * a, my + 0.1 * b], 25, 155, fill=_MOUTH, width=3 * lw)
    elif expression == "angry":
        _cheeks(g, (235, 20, 20), 0.55)
        for x, s in eyes:
            _eye_open(g, x, iris=0.5)
            xo, xi = x + s * 1.2 * er, x - s * 1.2 * er
            d.polygon([(xo, ey - 1.4 * er), (xi, ey - 1.4 * er), (xi, ey + 0.15 * er), (xo, ey - 0.6 * er)],
                      fill=idn.skin)  # lowered lid, slanting down to the nose
            d.line([(xo, ey - 0.6 * er), (xi, ey + 0.15 * er)], fill=_INK, width=2 * lw)
            _brow(g, x, -s, 0.12, -0.14, width=1.6)
        d.arc([cx - 0.3 * a, my - 0.02 * b, cx + 0.3 * a, my + 0.3 * b], 200, 340, fill=_MOUTH, width=4 * lw)
    elif expression == "shocked":
        _cheeks(g, (255, 120, 140), 0.25)
        for x, s in eyes:
            _eye_open(g, x, scale=1.3, iris=0.38)
            _brow(g, x, -s, 0.17, 0.22)
        d.ellipse([cx - 0.15 * a, my - 0.12 * b, cx + 0.15 * a, my + 0.28 * b], fill=_MOUTH, outline=_INK, width=lw)
        d.ellipse([cx - 0.08 * a, my + 0.1 * b, cx + 0.08 * a, my + 0.24 * b], fill=(60, 5, 20))
    elif expression == "laughing":
        _cheeks(g, (255, 70, 110), 0.6)
        for x, s in eyes:  # squeezed-shut happy eyes: upward arcs
            d.arc([x - er, ey - 0.5 * er, x + er, ey + 1.1 * er], 200, 340, fill=_INK, width=3 * lw)
            _brow(g, x, -s, 0.12, 0.12)
        mouth = [cx - 0.42 * a, my - 0.28 * b, cx + 0.42 * a, my + 0.36 * b]
        d.chord(mouth, 0, 180, fill=_MOUTH)
        d.ellipse([cx - 0.22 * a, my + 0.14 * b, cx + 0.22 * a, my + 0.34 * b], fill=(255, 110, 130))  # tongue
        d.rectangle([cx - 0.36 * a, my + 0.03 * b, cx + 0.36 * a, my + 0.14 * b], fill=(255, 255, 255))  # teeth
        d.chord(mouth, 0, 180, outline=_INK, width=lw)
    elif expression == "crying":
        _cheeks(g, (255, 120, 140), 0.25)
        for x, s in eyes:
            _eye_open(g, x, iris=0.7)
            d.chord([x - er, ey - 0.3 * er, x + er, ey + 1.15 * er], 0, 180, fill=_TEAR)  # welling tears
            d.ellipse([x - er, ey - 1.15 * er, x + er, ey + 1.15 * er], outline=_INK, width=lw)
            _brow(g, x, -s, -0.05, 0.15, width=1.2)
            for dx in (-0.55, 0.55):  # two streams per eye down the cheeks
                stream = [(x + dx * er, ey + 1.0 * er), (x + dx * er * 1.3, g.cy + 0.78 * b)]
                d.line(stream, fill=_TEAR_EDGE, width=round(0.11 * a))
                d.line(stream, fill=_TEAR, width=round(0.06 * a))
            d.ellipse(_box(x + 0.7 * er, g.cy + 0.82 * b, 0.07 * a, 0.08 * a), fill=_TEAR, outline=_TEAR_EDGE, width=lw)
        d.chord([cx - 0.26 * a, my, cx + 0.26 * a, my + 0.36 * b], 180, 360, fill=_MOUTH, outline=_INK, width=lw)
    else:
        raise ValueError(f"Unknown expression {expression!r}. Valid: {', '.join(EXPRESSIONS)}.")


def _glasses(g: _Canvas) -> None:
    idn, d = g.idn, g.d
    if idn.glasses == "none":
        return
    r, w = 1.5 * g.er, max(1, round(1.5 * g.lw))
    for s in (-1, 1):
        x = g.cx + s * g.ex
        lens = _box(x, g.ey, r, 0.95 * r if idn.glasses == "square" else r)
        if idn.glasses == "round":
            d.ellipse(lens, outline=idn.glasses_color, width=w)
        else:
            d.rounded_rectangle(lens, radius=0.3 * r, outline=idn.glasses_color, width=w)
        d.line([(x + s * r, g.ey - 0.2 * r), (g.cx + s * 0.98 * g.a, g.ey - 0.3 * r)], fill=idn.glasses_color, width=w)
    d.line([(g.cx - g.ex + r, g.ey - 0.1 * r), (g.cx + g.ex - r, g.ey - 0.1 * r)], fill=idn.glasses_color, width=w)


def _headwear(g: _Canvas, costume: str) -> None:
    """The everyday hat, or the costume's headwear in its place; none of it reaches the eyes."""
    idn, d, cx, cy, a, b, lw = g.idn, g.d, g.cx, g.cy, g.a, g.b, g.lw
    top = cy - b  # top of the face; hair and hats sit above and on it
    if costume == "everyday" and idn.hat != "none":
        col, edge = idn.hat_color, _dark(idn.hat_color)
        dome = [cx - 1.1 * a, top - 0.25 * b, cx + 1.1 * a, cy - 0.2 * b]
        d.chord(dome, 180, 360, fill=col, outline=edge, width=lw)
        if idn.hat == "cap":
            d.chord([cx - 0.2 * a, cy - 0.86 * b, cx + 1.7 * a, cy - 0.66 * b], 0, 180, fill=edge)  # brim
            d.ellipse(_box(cx, top - 0.25 * b, 0.1 * a, 0.06 * a), fill=edge)
        else:
            d.rounded_rectangle([cx - 1.12 * a, cy - 0.86 * b, cx + 1.12 * a, cy - 0.66 * b], radius=0.1 * a,
                                fill=_dark(col, 0.8), outline=edge, width=lw)  # folded cuff
            d.ellipse(_box(cx, top - 0.25 * b, 0.22 * a, 0.22 * a), fill=idn.pattern_color, outline=edge, width=lw)
    elif costume == "flower":
        colors = [(235, 30, 60), (255, 200, 0), (255, 120, 190), (150, 80, 230), (255, 255, 255), (255, 120, 20)]
        for k in range(9):  # a wreath over the hairline
            t = math.pi * (1.05 + 0.9 * k / 8)
            x, y = cx + 1.02 * a * math.cos(t), cy - 0.15 * b + 0.82 * b * math.sin(t)
            d.ellipse(_box(x + 0.09 * a * (1 if k % 2 else -1), y - 0.1 * a, 0.11 * a, 0.06 * a), fill=(40, 150, 50))
            _flower(d, x, y, 0.16 * a, colors[k % len(colors)])
    elif costume == "sheep":
        for k in range(12):  # woolly rim over the forehead, from temple to temple
            t = math.pi * (1.0 + k / 11)
            x, y = cx + 0.9 * a * math.cos(t), cy - 0.32 * b + 0.42 * b * math.sin(t)
            d.ellipse(_box(x, y, 0.15 * a, 0.13 * a), fill=_WOOL, outline=_WOOL_EDGE, width=lw)
    elif costume == "santa":
        band = cy - 0.68 * b
        d.polygon([(cx - 1.1 * a, band), (cx - 0.75 * a, top - 0.35 * b), (cx + 0.1 * a, top - 0.5 * b),
                   (cx + 1.0 * a, top - 0.25 * b), (cx + 1.55 * a, cy - 0.35 * b), (cx + 1.1 * a, band)],
                  fill=_SANTA_RED, outline=_dark(_SANTA_RED), width=lw)
        d.rounded_rectangle([cx - 1.2 * a, band - 0.13 * b, cx + 1.2 * a, band + 0.1 * b], radius=0.1 * b,
                            fill=_WOOL, outline=_WOOL_EDGE, width=lw)
        d.ellipse(_box(cx + 1.55 * a, cy - 0.35 * b, 0.2 * a, 0.2 * a), fill=_WOOL, outline=_WOOL_EDGE, width=lw)
    elif costume == "royal":
        base, h = cy - 0.85 * b, 0.52 * b
        pts = [(cx - 0.8 * a, base)]
        for k in range(5):  # five points with balls on their tips
            x = cx - 0.8 * a + k * 0.4 * a
            pts += [(x, base - h), (x + 0.2 * a, base - 0.45 * h)]
        pts[-1] = (cx + 0.8 * a, base - h)
        pts.append((cx + 0.8 * a, base))
        d.polygon(pts, fill=_GOLD, outline=_GOLD_EDGE, width=lw)
        for k in range(5):
            d.ellipse(_box(cx - 0.8 * a + k * 0.4 * a, base - h, 0.07 * a, 0.07 * a), fill=_GOLD, outline=_GOLD_EDGE)
        for k, gem in enumerate([(40, 90, 230), (220, 20, 60), (40, 180, 80)]):
            d.ellipse(_box(cx + (k - 1) * 0.45 * a, base - 0.2 * h, 0.09 * a, 0.09 * a), fill=gem, outline=_GOLD_EDGE)


def draw(idn: Identity, expression: str, costume: str, size: int, face_scale: float) -> np.ndarray:
    g = _Canvas(idn, size, face_scale)
    sheep = costume == "sheep"
    if sheep:  # the hood replaces the hair: a woolly mass behind the head, floppy ears at its sides
        for s in (-1, 1):
            g.d.ellipse(_box(g.cx + s * 1.32 * g.a, g.cy - 0.4 * g.b, 0.36 * g.a, 0.16 * g.b), fill=(95, 85, 85))
            g.d.ellipse(_box(g.cx + s * 1.38 * g.a, g.cy - 0.4 * g.b, 0.2 * g.a, 0.07 * g.b), fill=(225, 130, 145))
    else:
        _hair_back(g)
    _body(g, costume)
    if sheep:
        for k in range(16):
            t = math.pi * (0.85 + 1.3 * k / 15)
            x, y = g.cx + 1.08 * g.a * math.cos(t), g.cy - 0.1 * g.b + 1.05 * g.b * math.sin(t)
            g.d.ellipse(_box(x, y, 0.28 * g.a, 0.26 * g.a), fill=_WOOL, outline=_WOOL_EDGE, width=g.lw)
    _face(g, ears=not sheep)
    if not sheep:
        _hair_front(g)
    _expression(g, expression)
    _glasses(g)
    _headwear(g, costume)
    return np.asarray(g.img.reduce(2))
