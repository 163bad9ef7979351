"""Pictures of results that people would rather look at than read: mask overlays, labelled grids,
and the input | mask | output sheet that `pedit edit --save-mask` and `pedit eval` write.

PIL and numpy only, so the library can draw without click, rich or torch.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFont

_BACKGROUND = (255, 255, 255)
_TEXT = (20, 20, 20)


def overlay_mask(
    image: Image.Image,
    mask: Image.Image,
    color: tuple[int, int, int] = (255, 40, 200),
    alpha: float = 0.5,
) -> Image.Image:
    """`image` tinted with `color` in proportion to `mask` (L, any size), with the mask's edge outlined.

    Pixels where the mask is 0 are left exactly as they are, so the overlay shows where an edit
    may act and nothing else.
    """
    image = image.convert("RGB")
    mask = mask.convert("L").resize(image.size, Image.Resampling.BILINEAR)
    level = np.asarray(mask)  # (H, W) uint8
    out = np.array(image)  # (H, W, 3) uint8; pixels where the mask is 0 stay exactly as they are
    rows, cols = np.flatnonzero(level.any(1)), np.flatnonzero(level.any(0))
    if rows.size == 0:
        return Image.fromarray(out)
    # Only the mask's bounding box is tinted: outside it the weight is 0 (a large photo's edit is small).
    box = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
    weight = level[box].astype(np.float32)[..., None] * (alpha / 255)  # (h, w, 1)
    tinted = out[box].astype(np.float32) * (1 - weight) + np.asarray(color, dtype=np.float32) * weight

    # The outline is a band just inside the thresholded mask (the mask minus its erosion), so it
    # never marks pixels outside the mask; its width grows with the image so it stays visible.
    inside = level >= 128  # (H, W): eroded over the whole image, so its edges replicate as they should
    width = max(1, round(min(image.size) / 256))
    edge = (inside & ~eroded(inside, width))[box]
    tinted[edge] = color
    out[box] = np.rint(tinted).astype(np.uint8)
    return Image.fromarray(out)


def eroded(inside: np.ndarray, r: int) -> np.ndarray:
    """Binary erosion of `inside` (H, W) bool by a (2r + 1)-pixel square, edges replicated: what PIL's
    `MinFilter(2r + 1)` gives on a 0/255 image, in time linear in the pixels.

    Why not MinFilter: a rank filter costs (2r + 1)² per pixel, and r grows with the image, so a
    40-megapixel overlay took minutes (the web app draws one per request; issue 27). A square is
    separable: rows, then columns, each a running count over a window (cumulative sums), and only
    over the mask's bounding box (grown by r), outside which nothing is inside to erode.
    """
    out = np.zeros_like(inside, dtype=bool)
    rows, cols = np.flatnonzero(inside.any(1)), np.flatnonzero(inside.any(0))
    if rows.size == 0:
        return out
    y0, y1 = max(rows[0] - r, 0), min(rows[-1] + r + 1, inside.shape[0])
    x0, x1 = max(cols[0] - r, 0), min(cols[-1] + r + 1, inside.shape[1])
    box = inside[y0:y1, x0:x1]
    for axis in (0, 1):
        box = _all_in_window(box, r, axis)
    out[y0:y1, x0:x1] = box
    return out


def _all_in_window(a: np.ndarray, r: int, axis: int) -> np.ndarray:
    """True where all of the 2r + 1 values centred on each position along `axis` are (edges replicated)."""
    pad = [(0, 0), (0, 0)]
    pad[axis] = (r, r)
    count = np.cumsum(np.pad(a, pad, mode="edge"), axis=axis, dtype=np.int32)
    count = np.concatenate([np.zeros_like(count.take([0], axis=axis)), count], axis=axis)
    k = 2 * r + 1
    n = a.shape[axis]
    window = count.take(np.arange(k, k + n), axis=axis) - count.take(np.arange(0, n), axis=axis)
    return window == k


def image_grid(
    rows: list[list[Image.Image | None]],
    col_labels: list[str] | None = None,
    row_labels: list[str] | None = None,
    cell: int | None = None,
    pad: int = 4,
) -> Image.Image:
    """Images in square cells of `cell` pixels (default: the first image's width), labelled.

    Each image is scaled to fit its cell and centred (aspect ratio kept); rows may differ in length
    and a None leaves its cell empty. Column labels go above, row labels to the left.
    """
    images = [im for row in rows for im in row if im is not None]
    if not images:
        raise ValueError("image_grid needs at least one image")
    cell = cell or images[0].width
    n_cols = max(len(row) for row in rows)
    font = _font(cell)
    label_h = _text_height(font) + 2 * pad if col_labels else 0
    label_w = max((_text_width(font, t) for t in row_labels), default=0) + 2 * pad if row_labels else 0

    sheet = Image.new(
        "RGB",
        (label_w + n_cols * cell + (n_cols + 1) * pad, label_h + len(rows) * cell + (len(rows) + 1) * pad),
        _BACKGROUND,
    )
    draw = ImageDraw.Draw(sheet)
    for j, text in enumerate(col_labels or []):
        x = label_w + pad + j * (cell + pad)
        _draw_centred(draw, text, font, (x, 0, x + cell, label_h))
    for i, row in enumerate(rows):
        y = label_h + pad + i * (cell + pad)
        if row_labels and i < len(row_labels):
            _draw_centred(draw, row_labels[i], font, (0, y, label_w, y + cell))
        for j, im in enumerate(row):
            if im is not None:
                x = label_w + pad + j * (cell + pad)
                fitted = _fit(im.convert("RGB"), cell, cell)
                sheet.paste(fitted, (x + (cell - fitted.width) // 2, y + (cell - fitted.height) // 2))
    return sheet


def compare_sheet(
    input_img: Image.Image,
    mask: Image.Image,
    output_img: Image.Image,
    max_height: int = 768,
    pad: int = 4,
) -> Image.Image:
    """input | mask overlay | output side by side at one height, labelled.

    Panels keep their aspect ratio; the height is the input's, capped at `max_height` so a sheet
    of a 6000-pixel photo stays a picture one can open.
    """
    height = min(input_img.height, max_height)
    # Scaled before the overlay is drawn, so a large photo costs only sheet-sized arrays.
    shown_input, shown_output = (
        im.convert("RGB").resize((max(1, round(im.width * height / im.height)), height), Image.Resampling.LANCZOS)
        for im in (input_img, output_img)
    )
    panels = [shown_input, overlay_mask(shown_input, mask), shown_output]
    font = _font(height)
    label_h = _text_height(font) + 2 * pad
    sheet = Image.new("RGB", (sum(p.width for p in panels) + 4 * pad, label_h + height + pad), _BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    x = pad
    for panel, text in zip(panels, ("input", "mask", "output")):
        _draw_centred(draw, text, font, (x, 0, x + panel.width, label_h))
        sheet.paste(panel, (x, label_h))
        x += panel.width + pad
    return sheet


def _fit(image: Image.Image, width: int, height: int) -> Image.Image:
    scale = min(width / image.width, height / image.height)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    return image if size == image.size else image.resize(size, Image.Resampling.LANCZOS)


def _font(cell: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    # PIL's default font scales when FreeType is available; about 1/16 of a cell reads well from
    # thumbnails up to full-size panels.
    return ImageFont.load_default(size=max(12, cell // 16))


def _text_width(font, text: str) -> int:
    left, _, right, _ = font.getbbox(text)
    return int(right - left)


def _text_height(font) -> int:
    _, top, _, bottom = font.getbbox("Ag")
    return int(bottom - top)


def _draw_centred(draw: ImageDraw.ImageDraw, text: str, font, box: tuple[int, int, int, int]) -> None:
    x0, y0, x1, y1 = box
    if _text_width(font, text) > x1 - x0:
        # A label wider than its cell is shortened rather than drawn over its neighbour.
        while len(text) > 1 and _text_width(font, text + "...") > x1 - x0:
            text = text[:-1]
        text += "..."
    # Placed from the text's bounding box, not with anchor="mm", which bitmap fonts do not support.
    left, top, right, bottom = font.getbbox(text)
    x = (x0 + x1 - (right - left)) / 2 - left
    y = (y0 + y1 - (bottom - top)) / 2 - top
    draw.text((x, y), text, fill=_TEXT, font=font)
