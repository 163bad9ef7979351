"""pedit.viz: overlays, grids and comparison sheets have the promised sizes and mark only the mask."""

from __future__ import annotations

import numpy as np
import pytest
import skimage.data
from PIL import Image

from pedit.viz import compare_sheet, image_grid, overlay_mask

MAGENTA = (255, 40, 200)


@pytest.fixture(scope="module")
def astronaut() -> Image.Image:
    return Image.fromarray(skimage.data.astronaut())


def square_mask(size: int, lo: int, hi: int) -> Image.Image:
    mask = np.zeros((size, size), np.uint8)
    mask[lo:hi, lo:hi] = 255
    return Image.fromarray(mask)


def dark_pixels(image: Image.Image, box: tuple[int, int, int, int]) -> int:
    return int((np.asarray(image.crop(box).convert("L")) < 128).sum())


def test_overlay_mask_tints_masked_pixels_only():
    grey = Image.new("RGB", (100, 100), (100, 100, 100))
    mask = square_mask(100, 20, 60)
    out = overlay_mask(grey, mask)
    assert out.mode == "RGB" and out.size == (100, 100)
    pixels = np.asarray(out)
    outside = np.asarray(mask) == 0
    assert np.all(pixels[outside] == 100)
    # Well inside the square: half grey, half magenta.
    assert pixels[40, 40].tolist() == [round(50 + 127.5), 70, 150]
    # On the mask's edge: the outline, in the pure colour.
    assert pixels[20, 40].tolist() == list(MAGENTA)


def test_overlay_mask_resizes_the_mask_and_scales_with_alpha(astronaut):
    mask = square_mask(64, 16, 48)  # an eighth of the photo's size
    out = overlay_mask(astronaut, mask, color=(0, 255, 0), alpha=1.0)
    assert out.size == astronaut.size
    pixels, before = np.asarray(out), np.asarray(astronaut)
    assert pixels[256, 256].tolist() == [0, 255, 0]  # alpha 1: fully the colour
    assert np.array_equal(pixels[:100], before[:100])  # the mask starts at row 128


def test_image_grid_sizes_and_labels(astronaut):
    small = astronaut.resize((64, 64))
    plain = image_grid([[small, small, small], [small, small, small]], pad=4)
    assert plain.size == (3 * 64 + 4 * 4, 2 * 64 + 3 * 4)

    labelled = image_grid(
        [[small, small], [small]], col_labels=["input", "royal"], row_labels=["a", "bb"], pad=4
    )
    assert labelled.width > 2 * 64 + 3 * 4 and labelled.height > 2 * 64 + 3 * 4
    label_h = labelled.height - (2 * 64 + 3 * 4)
    label_w = labelled.width - (2 * 64 + 3 * 4)
    assert dark_pixels(labelled, (label_w, 0, labelled.width, label_h)) > 0  # column labels drawn
    assert dark_pixels(labelled, (0, label_h, label_w, labelled.height)) > 0  # row labels drawn
    # The missing cell of the short second row stays background.
    x = label_w + 4 + 64 + 4
    y = label_h + 4 + 64 + 4
    assert np.all(np.asarray(labelled.crop((x, y, x + 64, y + 64))) == 255)


def test_image_grid_fits_any_shape_into_square_cells(astronaut):
    wide = astronaut.resize((200, 100))
    grid = image_grid([[wide, astronaut]], cell=50, pad=0)
    assert grid.size == (100, 50)
    cell = np.asarray(grid.crop((0, 0, 50, 50)))
    assert np.all(cell[:10] == 255) and not np.all(cell[20:30] == 255)  # letterboxed, not stretched


def test_image_grid_shortens_long_labels(astronaut):
    small = astronaut.resize((64, 64))
    grid = image_grid([[small, small]], col_labels=["a very long direction name indeed", "b"], pad=4)
    assert grid.width == 2 * 64 + 3 * 4


def test_image_grid_needs_an_image():
    with pytest.raises(ValueError):
        image_grid([[None]])


def test_compare_sheet(astronaut):
    mask = square_mask(512, 150, 350)
    output = Image.fromarray(255 - np.asarray(astronaut))
    sheet = compare_sheet(astronaut, mask, output, pad=4)
    label_h = sheet.height - 512 - 4
    assert sheet.width == 3 * 512 + 4 * 4 and label_h > 0
    panels = [np.asarray(sheet.crop((4 + i * 516, label_h, 4 + i * 516 + 512, label_h + 512))) for i in range(3)]
    assert np.array_equal(panels[0], np.asarray(astronaut))
    assert np.array_equal(panels[2], np.asarray(output))
    assert np.array_equal(panels[1][:100], panels[0][:100]) and not np.array_equal(panels[1], panels[0])
    assert dark_pixels(sheet, (0, 0, sheet.width, label_h)) > 0


def test_compare_sheet_caps_the_height_of_large_photos():
    big = Image.new("RGB", (3000, 2000), (90, 90, 90))
    sheet = compare_sheet(big, Image.new("L", (300, 200), 255), big, max_height=400, pad=4)
    assert sheet.width == 3 * 600 + 4 * 4
    assert 400 < sheet.height < 480


@pytest.mark.parametrize("seed", range(4))
def test_erosion_is_pils_min_filter_at_every_pixel(seed):
    """The overlay's outline: the linear-time erosion gives PIL's MinFilter (the oracle) exactly, at the image
    edges too (blobs touching them), for several widths."""
    from PIL import ImageFilter

    from pedit.viz import eroded

    rng = np.random.default_rng(seed)
    small = rng.random((9, 13)) < 0.6  # blobs, some touching the border
    inside = np.asarray(Image.fromarray(small.astype(np.uint8) * 255).resize((130, 90), Image.Resampling.NEAREST)) > 0
    for r in (1, 2, 5):
        want = np.asarray(Image.fromarray(inside.astype(np.uint8) * 255).filter(ImageFilter.MinFilter(2 * r + 1))) > 0
        assert np.array_equal(eroded(inside, r), want), r
    assert not eroded(np.zeros((5, 5), bool), 1).any()


def test_a_large_overlay_costs_no_more_than_its_pixels():
    """A 24-megapixel overlay (outline 23 px wide): the rank filter took (2r+1)^2 work a pixel (issue 27:
    the app, which draws one per request, was 6x slower than `pedit edit` on large photos). Counted, not
    timed: the erosion touches only the mask's bounding box, a few passes over it."""
    from pedit import viz

    calls = []
    real = viz._all_in_window
    viz._all_in_window = lambda a, r, axis: calls.append(a.size) or real(a, r, axis)
    try:
        image = Image.new("RGB", (6000, 4000), (128, 128, 128))
        mask = Image.new("L", (60, 40), 0)
        mask.paste(255, (20, 10, 40, 30))
        out = viz.overlay_mask(image, mask)
    finally:
        viz._all_in_window = real
    assert len(calls) == 2 and max(calls) < 0.3 * 6000 * 4000  # two passes over the box, not the photo
    px = np.asarray(out)
    assert tuple(px[2000, 3000]) != (128, 128, 128) and tuple(px[100, 100]) == (128, 128, 128)
    assert tuple(px[1000, 3000]) == (255, 40, 200)  # the outline at the mask's top edge


@pytest.mark.parametrize("size", [(64, 48), (300, 200)])
def test_overlay_is_the_full_image_formula_with_pils_min_filter(astronaut, size):
    """The bounding-box overlay equals the plain whole-image formula (tint everywhere, PIL's MinFilter edge)."""
    from PIL import ImageFilter

    image = astronaut.resize(size)
    rng = np.random.default_rng(1)
    mask = Image.fromarray((rng.random((6, 8)) < 0.3).astype(np.uint8) * 255)  # soft once resized, touches edges
    color, alpha = (255, 40, 200), 0.5
    m = mask.convert("L").resize(image.size, Image.Resampling.BILINEAR)
    w = np.asarray(m, dtype=np.float32)[..., None] * (alpha / 255)
    want = np.asarray(image, dtype=np.float32) * (1 - w) + np.asarray(color, dtype=np.float32) * w
    inside = m.point(lambda v: 255 if v >= 128 else 0)
    r = max(1, round(min(image.size) / 256))
    edge = (np.asarray(inside) > 0) & (np.asarray(inside.filter(ImageFilter.MinFilter(2 * r + 1))) == 0)
    want[edge] = color
    assert np.array_equal(np.asarray(overlay_mask(image, mask, color, alpha)), np.rint(want).astype(np.uint8))
