"""The pixel-resolution editing mask (pedit.edit.pixel_mask, MaskConfig.refine "pixel"): its array
functions against torch and brute force, the weight's promises, the settings' checks, and the
Editor, the evaluation and user masks using it."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pedit.edit import pixel_mask as pm
from pedit.edit.mask import MaskConfig, _gaussian_kernel
from pedit.errors import ConfigError
from pedit.model.mask_settings import check_mask_settings
from pedit.model.sampling_settings import SamplingSettings
from conftest import TEST_DEVICE


def test_the_module_imports_no_torch():
    code = "import sys, pedit.edit.pixel_mask; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_box_mean_is_the_mean_over_the_clipped_window():
    x = np.random.default_rng(0).random((7, 9))
    got = pm.box_mean(x, 2)
    for i in range(7):
        for j in range(9):
            assert got[i, j] == pytest.approx(x[max(0, i - 2): i + 3, max(0, j - 2): j + 3].mean())


def test_upsample_matches_torch_bilinear():
    a = np.random.default_rng(1).random((16, 16))
    want = F.interpolate(torch.from_numpy(a)[None, None], size=(128, 128), mode="bilinear", align_corners=False)[0, 0]
    assert np.allclose(pm.upsample(a, 128), want.numpy(), atol=1e-12)


def test_a_stack_of_maps_gets_each_maps_own_weight_exactly():
    """weight_from (and its gaussian_blur) on (N, R, R) stacks, as scripts/choose_mask_jointly.py scores many pairs
    at once: the same bytes as one map at a time."""
    rng = np.random.default_rng(1)
    p = rng.random((3, 24, 24))
    change = rng.uniform(0, 64, (3, 24, 24))
    for t, band, feather, gate in [(0.5, 0.1, 1.0, 16.0), (0.3, 0.2, 0.5, 0.0), (0.9, 0.0, 0.0, 32.0)]:
        got = pm.weight_from(p, change if gate else None, t, band, gate, feather)
        want = np.stack([pm.weight_from(p[i], change[i] if gate else None, t, band, gate, feather) for i in range(3)])
        assert got.shape == (3, 24, 24) and np.array_equal(got, want)


def test_gaussian_blur_matches_the_latent_feather():
    x = (np.random.default_rng(2).random((32, 32)) > 0.7).astype(np.float64)
    k = torch.from_numpy(_gaussian_kernel(1.5)).double()  # the latent feather's kernel (float32 values)
    r = k.numel() // 2
    t = torch.from_numpy(x)[None, None]
    t = F.conv2d(F.pad(t, (r, r, 0, 0), mode="replicate"), k.view(1, 1, 1, -1))
    t = F.conv2d(F.pad(t, (0, 0, r, r), mode="replicate"), k.view(1, 1, -1, 1))
    assert np.allclose(pm.gaussian_blur(x, 1.5), t[0, 0].numpy(), atol=1e-6)


def test_guided_filter_smooths_noise_but_keeps_the_guides_edge():
    guide = np.zeros((32, 32))
    guide[:, 16:] = 1.0  # a vertical edge
    noisy = guide + np.random.default_rng(4).normal(0, 0.1, guide.shape)
    guided, boxed = pm.guided_filter(guide, noisy, 3, 1e-3), pm.box_mean(noisy, 3)
    assert np.abs(guided - guide).max() < 0.15 < 0.4 < np.abs(boxed - guide).max()  # the box smears the edge
    assert np.abs(guided - guide)[:, :12].std() < np.abs(noisy - guide)[:, :12].std() / 2  # the flat side smoothed
    flat = pm.guided_filter(np.random.default_rng(3).random((16, 16, 3)), np.full((16, 16), 0.4), 2, 1e-3)
    assert np.allclose(flat, 0.4)  # a constant stays constant


def _edit_arrays():
    """A 32 px input, an edit that recolours a square only, and a difference map high over it."""
    original = np.full((32, 32, 3), 100, np.uint8)
    raw = original.copy()
    raw[8:20, 8:20] = (200, 50, 50)
    diff = np.full((4, 4), 0.1)
    diff[1:3, 1:3] = 1.0
    return original, raw, diff


def test_pixel_weight_follows_the_change_not_the_cells():
    original, raw, diff = _edit_arrays()
    w = pm.pixel_weight(diff, original, raw, ratio=3.0, prior_threshold=0.5, prior_band=0.1, change_below=48,
                        feather_px=0)
    assert w.dtype == np.float32 and w.shape == (32, 32)
    changed = np.zeros((32, 32), bool)
    changed[8:20, 8:20] = True
    assert (w[~changed] == 0).all()  # nothing the edit left alone, even inside the high cells (8:24)
    assert (w[10:18, 10:18] == 1).all()  # the changed pixels where the map is high
    loose = pm.pixel_weight(diff, original, raw, ratio=3.0, prior_threshold=0.5, prior_band=0.1, change_below=0,
                            feather_px=0)
    assert loose[20:22, 10:18].min() > 0  # without keep_below the map alone decides: it spills past the square


def test_a_zero_weight_keeps_the_input_bytes():
    from pedit.edit.mask import composite

    original, raw, diff = _edit_arrays()
    w = pm.pixel_weight(diff, original, raw, ratio=3.0, prior_threshold=0.5, prior_band=0.2, change_below=48,
                        feather_px=1.5)
    out = composite(original, raw, w)
    assert np.array_equal(out[w == 0], original[w == 0]) and (w > 0).any() and (w == 0).any()
    assert w.min() == 0 or w[w > 0].min() >= pm.ZERO_BELOW


def test_change_from_the_reconstruction_ignores_the_vaes_own_error():
    original, raw, diff = _edit_arrays()
    reconstruction = original.copy()
    reconstruction[0:4] = 160  # the VAE's error on the input: a band the edit did not touch
    raw[0:4] = 160  # ... which the decoded edit carries too
    diff[0] = 1.0  # and the map happens to be high there
    cfg = MaskConfig(refine="pixel", ratio=3.0, prior_threshold=0.5, prior_band=0.1, change_below=48, edge_feather=0)
    from_input = pm.refined_weight(cfg, diff, original, raw)
    from_rec = pm.refined_weight(MaskConfig(**{**cfg.__dict__, "change_from": "reconstruction"}), diff, original, raw,
                                 reconstruction)
    assert from_input[0:4].max() == 1 and from_rec[0:4].max() == 0
    with pytest.raises(ValueError, match="reconstruction"):
        pm.refined_weight(MaskConfig(refine="pixel", change_from="reconstruction"), diff, original, raw)


@pytest.mark.parametrize("fields, message", [({"refine": "learned-x"}, "refine 'learned-x' is not a mask refinement"),
                                             ({"change_from": "output"}, "change_from must be one of"),
                                             ({"prior_threshold": 1.5}, "prior_threshold"),
                                             ({"guide_radius": -1}, "guide_radius")])
def test_settings_pedit_cannot_run_are_refused(fields, message):
    with pytest.raises(ConfigError, match=message):
        MaskConfig(**fields)
    with pytest.raises(ValueError, match="mask_by_task.costume"):
        check_mask_settings({"mask_by_task": {"costume": fields}}, "pedit.json")


def test_a_model_folder_naming_an_unknown_refinement_is_one_error_line(random_model, tmp_path):
    from click.testing import CliRunner

    from pedit.cli import cli

    model = Path(shutil.copytree(random_model, tmp_path / "model"))
    meta = json.loads((model / "pedit.json").read_text())
    meta["mask_by_task"] = {"expression": {"refine": "learned-refiner"}}
    (model / "pedit.json").write_text(json.dumps(meta))
    from pedit.toon.world import render
    from PIL import Image

    Image.fromarray(render(3, size=32)).save(tmp_path / "in.png")
    r = CliRunner().invoke(cli, ["edit", str(tmp_path / "in.png"), "-d", "laughing", "-m", str(model),
                                 "-o", str(tmp_path / "out.png"), "-q"])
    assert r.exit_code == 1 and r.stderr.count("Error:") == 1 and "learned-refiner" in r.stderr
    assert "Traceback" not in r.stderr and not (tmp_path / "out.png").exists()


def _pixel_model(random_model, tmp_path, **fields):
    model = Path(shutil.copytree(random_model, tmp_path / "pixel-model"))
    meta = json.loads((model / "pedit.json").read_text())
    meta["mask"] = {**meta.get("mask", {}), "refine": "pixel", "prior_threshold": 0.5, "prior_band": 0.2,
                    "change_below": 16.0, "edge_feather": 0.8, **fields}
    (model / "pedit.json").write_text(json.dumps(meta))
    return model


@pytest.mark.parametrize("change_from", ["input", "reconstruction"])
def test_the_editor_blends_with_the_pixel_weight(random_model, tmp_path, change_from):
    from PIL import Image

    from pedit.edit.editor import Editor
    from pedit.toon.world import render

    model = _pixel_model(random_model, tmp_path, change_from=change_from)
    pixel, latent = Editor.from_pretrained(model, device=TEST_DEVICE), Editor.from_pretrained(random_model,
                                                                                             device=TEST_DEVICE)
    image = Image.fromarray(render(3, size=32))
    a, b = pixel.edit(image, "laughing", steps=2), latent.edit(image, "laughing", steps=2)
    assert torch.equal(a.mask_latent, b.mask_latent)  # the same latent mask steered the sampling
    assert np.array_equal(np.asarray(a.raw), np.asarray(b.raw))  # so the same decoded edit
    assert not np.array_equal(np.asarray(a.mask), np.asarray(b.mask))  # blended by another weight
    weight = np.asarray(a.mask)
    original = np.asarray(image.resize(a.image.size))
    assert np.array_equal(np.asarray(a.image)[weight == 0], original[weight == 0])
    if change_from == "input":  # change_below 16: under 8 levels of change nothing moves (beyond the feather's reach)
        change = np.abs(np.asarray(a.raw).astype(int) - original).max(axis=2)
        unweighted = pm.gaussian_blur((change > 8).astype(float), 0.8) == 0
        assert (weight[unweighted] == 0).all()


@pytest.mark.parametrize("kind", ["pixel", "learned"])
@pytest.mark.parametrize("mode", ["replace", "intersect", "union"])
def test_user_masks_work_with_every_refinement(random_model, tmp_path, mode, kind):
    from PIL import Image

    from pedit.edit.editor import Editor
    from pedit.toon.world import render
    from test_learned_mask import _learned_model

    folder = (_pixel_model if kind == "pixel" else _learned_model)(random_model, tmp_path)
    editor = Editor.from_pretrained(folder, device=TEST_DEVICE)
    image = Image.fromarray(render(3, size=32))
    user = np.zeros((32, 32), np.float32)
    user[:, :16] = 1.0  # the left half may change
    r = editor.edit(image, "laughing", steps=2, user_mask=user, mask_mode=mode)
    weight = np.asarray(r.mask)
    original = np.asarray(image)
    assert np.array_equal(np.asarray(r.image)[weight == 0], original[weight == 0])
    if mode != "union":
        assert (weight[:, 16:] == 0).all()  # the user's black half is kept byte for byte
    if mode == "replace":
        assert (weight[:, :16] == 255).all()


def test_eval_scores_the_pixel_mask_and_the_edge_band(random_model, tmp_path):
    from pedit.data.gen_pairs import GenPairsConfig, generate_pairs
    from pedit.eval.ground_truth import EvalConfig, edge_band, evaluate

    pairs = generate_pairs(GenPairsConfig(str(tmp_path / "pairs"), n=4, resolution=32, seed=1_000_000, exact=True))
    report = evaluate(EvalConfig(pairs=str(pairs), model=str(_pixel_model(random_model, tmp_path)), methods=("ours",),
                                 sampling=SamplingSettings(steps=2), imperfect_reference=False, grid_pairs=0))
    ours = report["methods"]["ours"]
    assert ours["latent_mask_iou"] is not None and 0 <= ours["mask_edge_error"] <= 1
    assert ours["psnr_edge_band"] is not None and ours["blend_seconds_per_pair"] > 0
    true = np.zeros((16, 16), bool)
    true[4:8, 4:8] = True
    band = edge_band(true, 1)
    assert band[4, 4] and band[3, 4] and not band[2, 4] and not band[6, 6]  # the outline ± 1 px
    assert band.sum() == 12 + 16  # the square's inner ring and its 4-neighbours outside
    assert not edge_band(np.zeros((4, 4), bool)).any()


def test_edit_many_gives_each_direction_the_pixel_weight_of_its_own_edit(random_model, tmp_path):
    from PIL import Image

    from pedit.edit.editor import Editor
    from pedit.toon.world import render

    editor = Editor.from_pretrained(_pixel_model(random_model, tmp_path, change_from="reconstruction"),
                                    device=TEST_DEVICE)
    image = Image.fromarray(render(5, size=32))
    many = editor.edit_many(image, ["laughing", "royal"], steps=2)
    for name, result in zip(["laughing", "royal"], many):
        alone = editor.edit(image, name, steps=2)
        assert np.array_equal(np.asarray(result.mask), np.asarray(alone.mask))
        assert np.array_equal(np.asarray(result.image), np.asarray(alone.image))


def test_the_tuning_rule_keeps_the_latent_mask_unless_a_pixel_setting_is_no_worse_inside():
    from pedit.eval.pixel_tuning import choose, key_of, setting_of

    latent = {"psnr_in_mask": 14.0, "psnr_outside_mask": 33.0}
    loses_inside = {"psnr_in_mask": 13.9, "psnr_outside_mask": 40.0}
    better = {"psnr_in_mask": 14.0, "psnr_outside_mask": 35.0}
    assert choose({"latent": latent, "a": loses_inside}, "latent") == "latent"
    assert choose({"latent": latent, "a": loses_inside, "b": better}, "latent") == "b"
    s = {"refine": "pixel", "prior_threshold": 0.6, "prior_band": 0.2, "change_from": "input", "change_below": 64.0,
         "edge_feather": 1.5, "guide_radius": 4}
    assert setting_of(key_of(s)) == s and MaskConfig(**setting_of(key_of(s))).refine == "pixel"


def test_pixel_tuning_refuses_evaluation_identities(tmp_path):
    from pedit.data.gen_pairs import GenPairsConfig, generate_pairs
    from pedit.eval.pixel_tuning import edit_training_pairs

    pairs = generate_pairs(GenPairsConfig(str(tmp_path / "p"), n=2, resolution=32, seed=999_999, exact=True))
    with pytest.raises(ConfigError, match="evaluation identities"):
        edit_training_pairs(None, str(pairs))
