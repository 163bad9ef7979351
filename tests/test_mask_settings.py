"""Mask settings per task and direction (pedit.json), and the latent-grid ceiling of the mask's IoU."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from pedit.data.directions import BUILTIN
from pedit.edit.mask import MaskConfig
from pedit.model.mask_settings import check_mask_settings, mask_config_for
from pedit.eval.ceiling import grid_truth, iou_ceiling, mask_iou
from pedit.model.sampling_settings import SamplingSettings
from conftest import TEST_DEVICE  # PEDIT_TEST_DEVICE, default cpu


def _brute_force(mask, cells):
    h = mask.shape[0] // cells
    per = mask.reshape(cells, h, cells, h).sum(axis=(1, 3)).ravel()
    best = 0.0
    for bits in range(1, 1 << (cells * cells)):
        sel = np.array([(bits >> k) & 1 for k in range(cells * cells)], bool)
        best = max(best, per[sel].sum() / (mask.sum() + (h * h - per[sel]).sum()))
    return best


def test_ceiling_is_the_best_iou_of_any_grid_mask():
    rng = np.random.default_rng(0)
    for _ in range(20):
        mask = rng.random((9, 9)) < rng.uniform(0.05, 0.7)
        if mask.any():
            assert iou_ceiling(mask, 3) == pytest.approx(_brute_force(mask, 3), abs=1e-12)


def test_grid_truth_is_whole_cells_at_the_ceiling():
    """The 16x16 truth the eval also scores against: whole latent cells, at the best IoU any grid mask reaches."""
    rng = np.random.default_rng(1)
    for _ in range(20):
        mask = rng.random((9, 9)) < rng.uniform(0.05, 0.7)
        grid = grid_truth(mask, 3)
        cells = grid.reshape(3, 3, 3, 3)
        assert (cells.all(axis=(1, 3)) | ~cells.any(axis=(1, 3))).all()  # each cell all in or all out
        assert mask_iou(grid, mask) == pytest.approx(_brute_force(mask, 3) if mask.any() else 1.0, abs=1e-12)
    assert not grid_truth(np.zeros((4, 4), bool), 2).any()
    aligned = np.zeros((16, 16), bool)
    aligned[4:8, 0:12] = True
    assert np.array_equal(grid_truth(aligned, 4), aligned)


def test_ceiling_of_cell_aligned_and_sub_cell_masks():
    aligned = np.zeros((16, 16), bool)
    aligned[4:8, 0:12] = True
    assert iou_ceiling(aligned, 4) == 1.0
    dot = np.zeros((16, 16), bool)
    dot[5, 5] = True
    assert iou_ceiling(dot, 2) == pytest.approx(1 / 64)  # one pixel in an 8x8 cell
    assert iou_ceiling(dot, 16) == 1.0  # the pixel grid itself
    assert iou_ceiling(np.zeros((4, 4), bool), 2) == 1.0


META = {"mask": {"strength": 0.7, "dilate": 0.5}, "mask_by_task": {"expression": {"ratio": 4.0, "strength": 0.6}},
        "mask_by_direction": {"laughing": {"threshold": 0.6}}}


def test_settings_merge_model_then_task_then_direction():
    laughing, angry, royal = BUILTIN["laughing"], BUILTIN["angry"], BUILTIN["royal"]
    assert mask_config_for(META, laughing) == MaskConfig(strength=0.6, ratio=4.0, threshold=0.6, dilate=0.5)
    assert mask_config_for(META, angry) == MaskConfig(strength=0.6, ratio=4.0, dilate=0.5)
    assert mask_config_for(META, royal) == MaskConfig(strength=0.7, dilate=0.5)
    assert mask_config_for(META, None) == MaskConfig(strength=0.7, dilate=0.5)


@pytest.mark.parametrize("bad, where", [
    ({"mask_by_task": {"expression": {"strenght": 0.6}}}, "mask_by_task.expression"),
    ({"mask_by_direction": ["laughing"]}, "mask_by_direction"),
])
def test_malformed_settings_name_the_entry(bad, where):
    with pytest.raises(ValueError, match=where):
        check_mask_settings(bad, "pedit.json")


def test_the_editor_uses_each_directions_settings(random_model, tmp_path):
    from pedit.edit.editor import Editor
    from pedit.toon.world import render
    from PIL import Image

    model = Path(shutil.copytree(random_model, tmp_path / "model"))
    meta = json.loads((model / "pedit.json").read_text())
    meta["mask_by_direction"] = {"laughing": {"threshold": 0.95}}
    (model / "pedit.json").write_text(json.dumps(meta))
    tuned, plain = Editor.from_pretrained(model, device=TEST_DEVICE), Editor.from_pretrained(random_model, device=TEST_DEVICE)
    assert tuned.default_options("laughing").mask.threshold == 0.95
    assert tuned.default_options("royal").mask.threshold == 0.5
    image = Image.fromarray(render(3, size=32))
    small = tuned.edit(image, "laughing", steps=2).mask_latent.sum()
    assert small < plain.edit(image, "laughing", steps=2).mask_latent.sum()
    assert np.array_equal(np.asarray(tuned.edit(image, "royal", steps=2).image),
                          np.asarray(plain.edit(image, "royal", steps=2).image))


def test_eval_reports_each_directions_ceiling_above_its_iou(random_model, tmp_path):
    from pedit.data.gen_pairs import GenPairsConfig, generate_pairs
    from pedit.eval.ground_truth import EvalConfig, evaluate
    from pedit.eval.report import markdown_report

    pairs = generate_pairs(GenPairsConfig(str(tmp_path / "pairs"), n=4, resolution=32, seed=1_000_000, exact=True))
    report = evaluate(EvalConfig(pairs=str(pairs), model=str(random_model), methods=("ours", "diffedit"), sampling=SamplingSettings(steps=2),
                                 imperfect_reference=False, grid_pairs=0))
    for method in ("ours", "diffedit"):
        for d, s in report["per_direction"][method].items():
            assert 0 < s["mask_iou_ceiling"] <= 1 and s["mask_iou"] <= s["mask_iou_ceiling"] + 1e-9
    assert "IoU ceiling" in markdown_report(report)
    # the same table against the truth on the latent grid: DiffEdit's latent mask is judged at its own resolution
    grid = report["on_grid_truth"]
    assert grid["cells"] == 4 and set(grid["methods"]) == {"ours", "diffedit"}
    for method in ("ours", "diffedit"):
        full, on_grid = report["methods"][method], grid["methods"][method]
        assert on_grid["ssim"] is None and on_grid["pairs"] == full["pairs"] == 4
        assert on_grid["psnr"] == pytest.approx(full["psnr"])  # the whole image does not depend on the truth
        assert on_grid["mask_iou_ceiling"] == 1.0 and on_grid["mask_iou"] != full["mask_iou"]
    assert "latent grid" in markdown_report(report)


def test_tuning_refuses_evaluation_identities(random_model, tmp_path):
    from pedit.data.gen_pairs import GenPairsConfig, generate_pairs
    from pedit.errors import ConfigError
    from pedit.eval.mask_tuning import TuneConfig, tune_masks

    pairs = generate_pairs(GenPairsConfig(str(tmp_path / "p"), n=2, resolution=32, seed=999_999, exact=True))
    with pytest.raises(ConfigError, match="evaluation identities"):
        tune_masks(TuneConfig(pairs=str(pairs), model=str(random_model)))


def test_tuning_picks_the_best_of_its_own_grid_per_task(random_model, tmp_path):
    from pedit.data.gen_pairs import GenPairsConfig, generate_pairs
    from pedit.eval.mask_tuning import TuneConfig, tune_masks

    pairs = generate_pairs(GenPairsConfig(str(tmp_path / "p"), n=8, resolution=32, seed=0, exact=True))
    r = tune_masks(TuneConfig(pairs=str(pairs), model=str(random_model), strengths=(0.5, 0.8), ratios=(3.0,),
                              thresholds=(0.3, 0.5, 0.7), dilates=(0.0, 1.0), feathers=(0.5,), keeps=(0.0, 32.0),
                              n_noise=2, steps=2))
    assert set(r["mask_by_task"]) == {"costume", "expression"} and r["per_task_pairs"] == {"costume": 4, "expression": 4}
    for task, chosen in r["chosen"].items():
        table = r["mask_iou"][task]
        assert len(table) == 6 and chosen["iou"] == pytest.approx(max(table.values()))
        key = f"strength {chosen['strength']}, ratio {chosen['ratio']}, threshold {chosen['threshold']}"
        assert table[key] == pytest.approx(chosen["iou"])
        blends = r["blend"][task]
        assert len(blends) == 4
        best = max(blends, key=lambda k: blends[k]["psnr"])
        assert best == f"dilate {chosen['dilate']}, feather {chosen['feather']}, keep_below {chosen['keep_below']}"
        assert r["mask_by_task"][task]["keep_below"] == chosen["keep_below"]
    check_mask_settings({"mask_by_task": r["mask_by_task"]}, "tuned")


def test_precision_and_recall_of_the_predicted_mask():
    from pedit.eval.ground_truth import Scores

    true = np.zeros((8, 8), bool)
    true[:2, :2] = True  # 4 pixels
    pred = np.zeros((8, 8), bool)
    pred[:4, :4] = True  # 16 pixels, covering all of the true mask: too large
    s = Scores()
    img = np.zeros((8, 8, 3), np.uint8)
    s.add(img, img, true, pred, ceiling=1.0)
    summary = s.summary()
    assert summary["mask_recall"] == 1.0 and summary["mask_precision"] == 0.25 and summary["mask_iou"] == 0.25


def test_with_dilate_0_the_feather_halves_a_one_cell_region_and_dilate_1_keeps_it_whole():
    import torch

    from pedit.edit.mask import pixel_mask

    one_cell = torch.zeros(1, 1, 16, 16)
    one_cell[0, 0, 8, 8] = 1  # 8 px cells at 128 px
    assert pixel_mask(one_cell, 128, 0, 4.0).max() < 0.5
    whole = pixel_mask(one_cell, 128, 8, 4.0)[0, 0, 64:72, 64:72]
    assert (whole > 1 - 1e-5).all()  # the whole edit (up to float rounding of the blur)


def test_change_weight_ramps_from_half_keep_below_to_keep_below():
    from pedit.edit.mask import change_weight

    original = np.full((1, 5, 3), 100, np.uint8)
    edited = original.copy()
    edited[0, :, 1] = [100, 108, 116, 124, 200]  # one channel changed by 0, 8, 16, 24, 100 levels
    assert change_weight(original, edited, 16.0).tolist() == [[0.0, 0.0, 1.0, 1.0, 1.0]]
    assert change_weight(original, edited, 32.0).tolist() == [[0.0, 0.0, 0.0, 0.5, 1.0]]
    assert change_weight(edited, original, 32.0).tolist() == [[0.0, 0.0, 0.0, 0.5, 1.0]]  # either direction


def test_keep_below_keeps_unchanged_pixels_inside_the_mask_byte_for_byte():
    import torch

    from pedit.edit.editor import keep_outside

    rng = np.random.default_rng(0)
    original = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    raw = np.clip(original.astype(int) + rng.integers(-5, 6, original.shape), 0, 255).astype(np.uint8)  # VAE-like error
    raw[8:12, 8:12] = 255 - original[8:12, 8:12] // 2 + 0  # the edit proper: big changes
    big = np.abs(raw.astype(int) - original.astype(int)).max(axis=2) >= 64
    mask = torch.ones(1, 1, 4, 4)  # the whole image may change
    out_off, w_off = keep_outside(original, raw, mask, MaskConfig(dilate=0, feather=0))
    out_on, w_on = keep_outside(original, raw, mask, MaskConfig(dilate=0, feather=0, keep_below=32))
    assert np.array_equal(out_off, raw) and (w_off == 1).all()
    small = np.abs(raw.astype(int) - original.astype(int)).max(axis=2) < 16
    assert small.sum() > 900 and np.array_equal(out_on[small], original[small])  # the input's bytes
    assert np.array_equal(out_on[big], raw[big]) and (w_on[big] == 1).all()  # the edit itself untouched
    with pytest.raises(Exception, match="keep_below"):
        MaskConfig(keep_below=300)
