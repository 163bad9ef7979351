"""Sticker pictures and files without any model: keying, outline, encoding under the apps' limits."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from PIL import Image

from pedit.errors import ConfigError, OutputError
from pedit.stickers.matte import MatteConfig, add_outline, fit_background, key_out, make_sticker
from pedit.stickers.pack import (EMOJI, PNG_STEPS, WEBP_STEPS, check_sticker_count, encode, preview_sheet,
                                 write_pack, write_within)
from pedit.toon.world import render, sample_identity


def true_alpha(seed: int, size: int = 128) -> tuple[np.ndarray, np.ndarray]:
    """A toon portrait and its exact alpha, from a second render on another background.

    A pixel is a·F + (1 − a)·B; rendered over B1 and B2 the difference is (1 − a)·(B1 − B2).
    """
    idn = sample_identity(seed)
    b1, b2 = np.array(idn.background[0], float), np.array((0, 255, 0), float)
    if not np.array_equal(idn.background[0], idn.background[1]):
        pytest.skip("a gradient background: the second render below assumes a flat one")
    x1 = render(idn, size=size)
    x2 = render(dataclasses.replace(idn, background=((0, 255, 0), (0, 255, 0))), size=size)
    d = b1 - b2
    one_minus_a = ((x1.astype(float) - x2) @ d) / (d @ d)
    return x1, np.clip(1 - one_minus_a, 0, 1)


@pytest.mark.parametrize("seed", [0, 2, 4, 5])  # flat backgrounds (seeds 1 and 3 are gradients)
def test_key_out_matches_the_true_alpha(seed):
    rgb, truth = true_alpha(seed)
    alpha = key_out(rgb)[..., 3] / 255
    assert np.abs(alpha - truth).mean() < 0.006  # a fixed threshold alone gives 0.01-0.02
    keyed, solid = alpha > 0.5, truth > 0.5
    assert (keyed & solid).sum() / (keyed | solid).sum() > 0.985
    assert alpha[0, 0] == 0 and alpha[0, -1] == 0  # the top corners are background
    assert alpha[64, 64] == 1  # the middle of the face is solid


@pytest.mark.parametrize("seed", [1, 3])
def test_key_out_removes_a_gradient_background(seed):
    idn = sample_identity(seed)
    assert idn.background[0] != idn.background[1]
    rgb = render(idn, size=128)
    alpha = key_out(rgb)[..., 3]
    assert alpha[:, 0].max() < 255 and alpha[:10].max() == 0  # sides and top clear, top to bottom
    assert alpha[0, 0] == alpha[100, 0] == 0 and alpha[64, 64] == 255


def test_background_fit_follows_a_vertical_gradient():
    top, bottom = np.array([200, 40, 40]), np.array([40, 40, 200])
    t = np.linspace(0, 1, 64)[:, None]
    rgb = np.broadcast_to((top * (1 - t) + bottom * t)[:, None], (64, 64, 3)).round().astype(np.uint8).copy()
    rgb[20:64, 20:44] = (0, 255, 0)  # a subject touching the bottom edge
    bg = fit_background(rgb)
    assert np.abs(bg.rows[0] - top).max() < 2 and np.abs(bg.rows[-1] - bottom).max() < 2
    assert bg.plain_fraction > 0.95


def test_background_coloured_pixels_inside_the_subject_stay_opaque():
    rgb = np.full((64, 64, 3), 255, np.uint8)  # white background
    yy, xx = np.mgrid[0:64, 0:64]
    r = np.hypot(yy - 32, xx - 32)
    rgb[(r > 12) & (r < 20)] = (30, 30, 30)  # a dark ring with a white "eye" inside
    alpha = key_out(rgb)[..., 3]
    assert alpha[32, 32] == 255  # white, but not connected to the border
    assert alpha[2, 2] == 0


def test_small_specks_are_dropped():
    rgb = np.full((100, 100, 3), 255, np.uint8)
    rgb[30:70, 30:70] = (200, 0, 0)
    rgb[5:7, 90:92] = (0, 0, 0)  # 4 pixels of dust
    alpha = key_out(rgb, MatteConfig(min_island=0.002))[..., 3]
    assert alpha[50, 50] == 255 and alpha[5:7, 90:92].max() == 0


def test_outline_is_white_opaque_and_as_wide_as_asked():
    rgba = np.zeros((64, 64, 4), np.uint8)
    rgba[24:40, 24:40] = (200, 0, 0, 255)
    out = add_outline(rgba, 5)
    assert (out[24:40, 24:40] == rgba[24:40, 24:40]).all()  # the subject is untouched
    assert tuple(out[32, 20]) == (255, 255, 255, 255)  # 4 px left of the subject: outline
    assert out[32, 24 - 8, 3] == 0  # 8 px away: transparent
    assert out[32, 24 - 5, 3] > 0  # the ring reaches its width
    assert (add_outline(rgba, 0) == rgba).all()


def test_make_sticker_is_512_rgba_with_transparent_corners_and_a_solid_face():
    sticker = make_sticker(Image.fromarray(render(3, size=128)))
    assert sticker.size == (512, 512) and sticker.mode == "RGBA"
    alpha = np.asarray(sticker)[..., 3]
    assert alpha[0, 0] == 0 and alpha[256, 256] == 255
    assert (alpha[:5] == 0).all()  # the margin beyond the outline is clear
    # the outline: the first opaque pixels in from the left edge of the middle row are white
    row = np.asarray(sticker)[256]
    first = int(np.argmax(row[:, 3] == 255))
    assert tuple(row[first, :3]) == (255, 255, 255)


# --- encoding under limits -----------------------------------------------------------------------


def noisy_sticker(seed: int = 0) -> Image.Image:
    """A sticker that compresses badly (noise), so limits bite."""
    rng = np.random.default_rng(seed)
    rgba = rng.integers(0, 256, (512, 512, 4), dtype=np.uint8)  # 1 MB of noise: no encoder gets it small
    rgba[..., 3] = 255
    rgba[:40, :, 3] = 0
    return Image.fromarray(rgba, "RGBA")


@pytest.mark.parametrize("suffix,fmt,steps", [(".webp", "WEBP", WEBP_STEPS), (".png", "PNG", PNG_STEPS)])
def test_a_file_over_its_limit_is_reencoded_under_it(tmp_path, suffix, fmt, steps):
    image = noisy_sticker()
    best = len(encode(image, fmt, 0))
    lower = len(encode(image, fmt, len(steps) - 1))
    limit = (best + lower) // 2  # the best quality is over it, the lowest under it
    written = write_within(image, tmp_path / f"s{suffix}", limit)
    assert written.step > 0
    assert written.bytes == (tmp_path / f"s{suffix}").stat().st_size <= limit
    with Image.open(written.path) as im:
        assert im.size == (512, 512) and "A" in im.mode or im.mode == "P"


def test_a_file_that_cannot_fit_is_an_error_and_not_left_behind(tmp_path):
    with pytest.raises(OutputError, match="stays over its limit"):
        write_within(noisy_sticker(), tmp_path / "s.webp", 100)
    assert not (tmp_path / "s.webp").exists()


def test_sticker_count_limits():
    check_sticker_count(3)
    check_sticker_count(120)  # more than 30: split into WhatsApp packs; 120 is a Telegram set's limit
    for n in (2, 121):
        with pytest.raises(ConfigError, match="3 to 120"):
            check_sticker_count(n)


def test_write_pack_keeps_every_limit_when_forced_over(tmp_path):
    stickers = [(name, make_sticker(Image.fromarray(render(i, size=128)))) for i, name in enumerate(["angry", "shocked", "laughing"])]
    best_webp = max(len(encode(image, "WEBP", 0)) for _, image in stickers)
    best_png = min(len(encode(image, "PNG", 0)) for _, image in stickers)
    limits = {"whatsapp_sticker": int(0.8 * best_webp), "telegram_sticker": int(0.8 * best_png)}
    record = write_pack(tmp_path, stickers, "test", limits=limits)
    for entry in record["stickers"]:
        wa, tg = entry["whatsapp"], entry["telegram"]
        assert wa["quality_step"] > 0 and tg["quality_step"] > 0  # every one was over at best quality
        assert (tmp_path / wa["file"]).stat().st_size <= limits["whatsapp_sticker"]
        assert (tmp_path / tg["file"]).stat().st_size <= limits["telegram_sticker"]
        assert entry["png"]["quality_step"] == 0  # the plain sticker files have no limit: best quality
        assert entry["emoji"] == [EMOJI[entry["name"]]]
    assert (tmp_path / record["whatsapp"]["packs"][0]["tray"]["file"]).stat().st_size <= 50_000


def test_preview_sheet_has_a_tile_per_sticker_and_the_source():
    stickers = [("angry", make_sticker(Image.fromarray(render(0, size=128))))] * 3
    sheet = preview_sheet(stickers, source=Image.new("RGB", (64, 64), (255, 0, 0)), cell=100)
    assert sheet.size == (400, 122)
    assert sheet.getpixel((50, 50)) == (255, 0, 0)
