"""A user's mask (`pedit edit --mask`, `Editor.edit(user_mask=...)`): what it keeps, how it combines."""

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from pedit.cli import cli
from pedit.edit.editor import EditOptions
from pedit.edit.user_mask import load_user_mask, user_mask_at
from pedit.errors import ConfigError, InputImageError
from conftest import TEST_DEVICE  # PEDIT_TEST_DEVICE, default cpu

FAST = dict(steps=3)




def _left_half(size=64):
    m = np.zeros((size, size), np.float32)
    m[:, : size // 2] = 1
    return m


def _edit(editor, portrait, **kw):
    r = editor.edit(portrait, "laughing", EditOptions(**FAST), **kw)
    return np.asarray(r.image), np.asarray(r.mask).astype(np.float32) / 255, r


def test_replace_keeps_the_input_exactly_where_the_user_mask_is_black(editor, portrait):
    out, weight, r = _edit(editor, portrait, user_mask=_left_half(64), mask_mode="replace")  # 64 px mask, 32 px model
    src = np.asarray(portrait)
    # 64 → 32 px is an antialiased resize: column 16 gets a little of the white half
    assert np.array_equal(out[:, 17:], src[:, 17:])
    assert (out[:, :16] != src[:, :16]).any()
    assert (weight[:, :15] == 1).all() and not weight[:, 17:].any()
    assert r.mask_latent[0, 0, :, :2].all() and not r.mask_latent[0, 0, :, 3:].any()  # 4x4 latent cells of 8 px


def test_intersect_with_all_white_and_union_with_all_black_are_the_models_mask(editor, portrait):
    plain, plain_w, _ = _edit(editor, portrait)
    white, black = np.ones((32, 32), np.float32), np.zeros((32, 32), np.float32)
    inter, inter_w, _ = _edit(editor, portrait, user_mask=white, mask_mode="intersect")
    union, union_w, _ = _edit(editor, portrait, user_mask=black, mask_mode="union")
    assert np.array_equal(inter, plain) and np.array_equal(union, plain)
    assert np.array_equal(inter_w, plain_w) and np.array_equal(union_w, plain_w)


def test_intersect_is_within_both_union_covers_both(editor, portrait):
    user = _left_half(32)
    _, model_w, model = _edit(editor, portrait)
    assert 0 < model.mask_latent.mean() < 1  # the untrained model's mask is partial: a real combination
    _, inter_w, inter = _edit(editor, portrait, user_mask=user, mask_mode="intersect")
    _, union_w, union = _edit(editor, portrait, user_mask=user, mask_mode="union")
    eps = 1 / 255
    assert (inter_w <= np.minimum(model_w, user) + eps).all()
    assert (union_w >= np.maximum(model_w, user) - eps).all()
    assert inter.mask_latent.sum() < model.mask_latent.sum() < union.mask_latent.sum()


def test_no_model_mask_intersect_is_the_user_mask_union_is_everything(editor, portrait):
    _, w_inter, _ = _edit(editor, portrait, use_mask=False, user_mask=_left_half(32), mask_mode="intersect")
    _, w_union, _ = _edit(editor, portrait, use_mask=False, user_mask=_left_half(32), mask_mode="union")
    assert np.array_equal(w_inter, _left_half(32)) and (w_union == 1).all()


def test_grey_is_a_partial_weight_and_a_cell_is_editable_if_any_pixel_is():
    m = np.zeros((32, 32), np.float32)
    m[0, 0] = 0.5
    um = user_mask_at(m, 32, 4)
    assert um.pixels[0, 0] == pytest.approx(0.5, abs=1 / 255) and um.pixels[1:, 1:].max() == 0
    assert um.latent[0, 0, 0, 0] == 1 and um.latent.sum() == 1


def test_mask_files_any_mode_become_greyscale_weights(tmp_path):
    rgba = np.zeros((8, 10, 4), np.uint8)
    rgba[..., :3] = 255
    rgba[:, :5, 3] = 255  # opaque white left, transparent right
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    m = load_user_mask(tmp_path / "a.png")
    assert m.shape == (8, 10) and (m[:, :5] == 1).all() and (m[:, 5:] == 0).all()
    (tmp_path / "bad.png").write_bytes(b"not an image")
    with pytest.raises(InputImageError, match="bad.png is not a readable image"):
        load_user_mask(tmp_path / "bad.png")


def test_options_refuse_bad_masks_and_modes():
    with pytest.raises(ConfigError, match="mask_mode"):
        EditOptions(mask_mode="xor")
    with pytest.raises(ConfigError, match=r"\[0, 1\]"):
        EditOptions(user_mask=np.full((4, 4), 2.0, np.float32))
    with pytest.raises(ConfigError, match="2-D"):
        EditOptions(user_mask=np.ones((4, 4, 3), np.float32))


def test_cli_mask_keeps_the_photo_outside_it(random_model, tmp_path):
    from pedit.toon.world import render

    photo = tmp_path / "face.png"
    Image.fromarray(render(5, size=48)).save(photo)  # no face detected: the centred square is edited
    mask = np.zeros((12, 12), np.uint8)
    mask[:, :6] = 255  # any size: stretched to the photo
    Image.fromarray(mask).save(tmp_path / "mask.png")
    out = tmp_path / "out.png"
    args = ["edit", str(photo), "-d", "laughing", "-m", str(random_model), "--steps", "2", "--mask-noises", "2",
            "--device", TEST_DEVICE, "--mask", str(tmp_path / "mask.png"), "--mask-mode", "replace", "-o", str(out)]
    result = CliRunner().invoke(cli, args, env={"COLUMNS": "1000"})
    assert result.exit_code == 0, result.output
    src, edited = np.asarray(Image.open(photo)), np.asarray(Image.open(out))
    # right of the mask's edge (24 px) beyond what three bilinear resizes (12 → 48 → 32 → 48 px) spill
    assert np.array_equal(edited[:, 30:], src[:, 30:])
    assert (edited[:, :20] != src[:, :20]).any()


def test_cli_unreadable_mask_is_an_error_before_any_work(random_model, tmp_path):
    from pedit.toon.world import render

    photo = tmp_path / "face.png"
    Image.fromarray(render(5, size=32)).save(photo)
    (tmp_path / "mask.png").write_text("nope")
    result = CliRunner().invoke(cli, ["edit", str(photo), "-d", "laughing", "-m", str(random_model), "--mask",
                                      str(tmp_path / "mask.png"), "-o", str(tmp_path / "out.png")],
                                env={"COLUMNS": "1000"})
    assert result.exit_code == 1 and "Error: Mask" in result.stderr and "Traceback" not in result.output
    assert not (tmp_path / "out.png").exists()
