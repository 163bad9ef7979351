"""Inputs that used to be read wrongly or silently do nothing (issue 19, items 6-9 and 12).

User masks are read as photos are (orientation, bit depth, frames, the pixel limit); settings that
cannot edit (--s-p 0, an all-black mask, a broken schedule, a direction listed twice) are one
`Error:` line; an edit that changes no pixel says so; a NaN decode is never an image; names too
long or not UTF-8 fail only their own item, or not at all.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from pedit.cli import cli
from pedit.errors import InputImageError, NonFiniteError
from pedit.files import NAME_MAX, temp_path, write_atomic
from pedit.photos.mask_file import load_mask_file

FAST = ["--steps", "2", "--mask-noises", "2", "--device", "cpu", "--no-identity-check"]
ENV = {"COLUMNS": "1000", "PEDIT_DEBUG": None}


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], env=ENV)


def one_error_line(r, needle: str) -> str:
    assert r.exit_code == 1 and isinstance(r.exception, SystemExit), r.output
    errors = [line for line in r.stderr.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1 and "Traceback" not in r.output, r.stderr
    assert needle in errors[0], errors[0]
    return errors[0]


def _photo(path: Path, size=(40, 40), seed=0) -> Path:
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path)
    return path


# --- masks (items 6 and 12) ------------------------------------------------------------------------


def test_a_mask_with_exif_orientation_is_read_upright(tmp_path):
    stored = np.zeros((20, 40), np.uint8)
    stored[:, :10] = 255  # as stored: white on the left
    exif = Image.Exif()
    exif[0x0112] = 6  # "turn 90 degrees clockwise to view": a phone held upright
    Image.fromarray(stored).save(tmp_path / "m.png", exif=exif.tobytes())
    upright = np.rot90(stored, k=-1) / 255.0  # (40, 20): white on top
    assert np.array_equal(load_mask_file(tmp_path / "m.png"), upright.astype(np.float32))


@pytest.mark.parametrize("array, want", [
    (np.full((8, 8), 32768, np.uint16), 32768 / 65535),  # 16-bit: 8-bit conversion clipped it to white
    (np.full((8, 8), 0.25, np.float32), 0.25),  # float in [0, 1]: was read on a 0-255 scale
    (np.full((8, 8), 64.0, np.float32), 64 / 255),  # float on the 8-bit scale
])
def test_wide_masks_keep_their_grey(tmp_path, array, want):
    f = tmp_path / "m.tif"
    Image.fromarray(array).save(f)
    assert load_mask_file(f) == pytest.approx(np.full((8, 8), want, np.float32), abs=1e-6)


def test_masks_with_several_frames_or_over_the_pixel_limit_are_refused(tmp_path):
    frames = [Image.new("L", (16, 16), v) for v in (0, 255)]
    frames[0].save(tmp_path / "anim.png", save_all=True, append_images=frames[1:])
    with pytest.raises(InputImageError, match="holds 2 pages or frames"):
        load_mask_file(tmp_path / "anim.png")
    Image.new("L", (120, 100), 255).save(tmp_path / "big.png")  # 12,000 pixels, under PIL's own limits
    with pytest.raises(InputImageError, match="more than the limit of 10,000 pixels"):
        load_mask_file(tmp_path / "big.png", max_pixels=10_000)
    assert load_mask_file(tmp_path / "big.png", max_pixels=12_000).shape == (100, 120)


def test_edit_applies_max_pixels_to_the_mask(random_model, tmp_path):
    Image.new("L", (120, 100), 255).save(tmp_path / "big.png")
    r = run("edit", _photo(tmp_path / "p.png"), "-d", "royal", "--mask", tmp_path / "big.png",
            "--max-pixels", 10_000, "-m", random_model, *FAST)
    one_error_line(r, "--max-pixels")
    assert not (tmp_path / "p_royal.png").exists()


def test_an_all_black_mask_that_leaves_nothing_to_edit_is_an_error(random_model, tmp_path):
    Image.new("L", (16, 16), 0).save(tmp_path / "black.png")
    src = _photo(tmp_path / "p.png")
    r = run("edit", src, "-d", "royal", "--mask", tmp_path / "black.png", "-m", random_model, *FAST)
    one_error_line(r, "is black everywhere: with --mask-mode replace it leaves nothing to edit")
    assert not (tmp_path / "p_royal.png").exists()
    union = run("edit", src, "-d", "royal", "--mask", tmp_path / "black.png", "--mask-mode", "union",
                "-m", random_model, *FAST)
    assert union.exit_code == 0, union.output  # union: the model's own mask still edits


# --- settings that do nothing (item 8) -------------------------------------------------------------


def test_s_p_zero_is_refused_before_the_model_loads(random_model, tmp_path):
    r = run("edit", _photo(tmp_path / "p.png"), "-d", "royal", "--s-p", "0", "-m", random_model, *FAST)
    one_error_line(r, "s_p = 0 removes the text condition")
    assert not (tmp_path / "p_royal.png").exists()


def test_an_edit_that_changes_no_pixel_says_so_and_writes_nothing(random_model, tmp_path):
    src = _photo(tmp_path / "wide.png", size=(96, 48))  # no face: the centred 48 px square is edited
    mask = np.zeros((48, 96), np.uint8)
    mask[:, :8] = 255  # white only left of that square
    Image.fromarray(mask).save(tmp_path / "side.png")
    r = run("edit", src, "-d", "royal", "--mask", tmp_path / "side.png", "-m", random_model, *FAST)
    one_error_line(r, "changed no pixel")
    assert not (tmp_path / "wide_royal.png").exists()


def _model_copy(random_model, tmp_path, change) -> Path:
    m = Path(shutil.copytree(random_model, tmp_path / "m"))
    change(m)
    return m


@pytest.mark.parametrize("key, value, needle", [
    ("num_train_timesteps", 1.5, "num_train_timesteps must be an integer from 1 to 100000, got 1.5"),
    ("prediction_type", "sample", "prediction_type must be 'epsilon' or 'v_prediction', got 'sample'"),
    ("beta_end", 0.00001, "beta_end must be larger than beta_start"),
])
def test_a_scheduler_config_that_cannot_sample_is_one_error_line(random_model, tmp_path, key, value, needle):
    def change(m):
        f = m / "scheduler" / "scheduler_config.json"
        f.write_text(json.dumps({**json.loads(f.read_text()), key: value}))

    r = run("edit", _photo(tmp_path / "p.png"), "-d", "royal", "-m", _model_copy(random_model, tmp_path, change), *FAST)
    one_error_line(r, needle)
    assert len(r.stderr.strip().splitlines()) == 1


def test_a_direction_listed_twice_is_refused(random_model, tmp_path):
    def change(m):
        meta = json.loads((m / "pedit.json").read_text())
        crying = next(d for d in meta["directions"] if d["name"] == "crying")
        meta["directions"].append({**crying, "name": "laughing"})  # laughing's name, crying's prompts
        (m / "pedit.json").write_text(json.dumps(meta))

    r = run("edit", _photo(tmp_path / "p.png"), "-d", "laughing", "-m", _model_copy(random_model, tmp_path, change), *FAST)
    one_error_line(r, "lists the direction 'laughing' twice")


# --- NaN decode (item 7, the edit path) ------------------------------------------------------------


def test_a_nan_decode_is_an_error_not_a_grey_image(editor, portrait, monkeypatch):
    parts = editor.model.parts
    real = parts.decode
    monkeypatch.setattr(parts, "decode", lambda z: real(z) * torch.nan)
    with pytest.raises(NonFiniteError, match="VAE decoder returned NaN"):
        editor.edit(portrait, "royal", steps=2, mask=editor.default_options("royal").mask.__class__(n_noise=2))


# --- names (item 9) --------------------------------------------------------------------------------


def test_a_legal_long_name_gets_a_temp_name_that_fits(tmp_path):
    target = tmp_path / ("n" * 245 + ".png")  # 249 bytes: legal
    assert len(os.fsencode(temp_path(target).name)) <= NAME_MAX
    write_atomic(target, lambda f: f.write(b"x"))
    assert target.read_bytes() == b"x" and os.listdir(tmp_path) == [target.name]
    wide = tmp_path / ("é" * 120 + ".png")  # 244 bytes of two-byte characters: never cut inside one
    assert os.fsencode(temp_path(wide).name).decode("utf-8")


def test_one_output_name_too_long_fails_its_item_only(random_model, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    _photo(folder / "a.png")
    _photo(folder / ("l" * 246 + ".png"), seed=1)  # its output, + "_royal", would be 256 bytes
    r = run("edit", folder, "-d", "royal", "-o", tmp_path / "out", "-m", random_model, *FAST)
    one_error_line(r, "1 of 2 inputs failed")
    assert "more than the 255 a file system allows" in r.stderr
    assert os.listdir(tmp_path / "out") == ["a_royal.png"]
