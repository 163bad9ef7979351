"""`pedit eval`: metric arithmetic on known arrays, and the command end to end on a tiny model."""

import json
import math

import numpy as np
import pytest
from click.testing import CliRunner

from pedit.cli import cli
from pedit.eval.ground_truth import METHODS, NA_OFFLINE, Scores
from pedit.model.sampling_settings import SamplingSettings


def test_region_psnr_pools_squared_error_and_iou_is_exact():
    target = np.zeros((8, 8, 3), np.uint8)
    out = target.copy()
    true = np.zeros((8, 8), bool)
    true[:4] = True  # top half (32 pixels) is the true edit region
    out[0, 0] = 10  # one wrong pixel inside, by 10 in each channel
    pred = np.zeros((8, 8), bool)
    pred[:2] = True  # predicted mask: top two rows (16 pixels)
    s = Scores()
    s.add(out, target, true, pred)
    r = s.summary()
    assert r["psnr_outside_mask"] == math.inf  # nothing outside changed
    assert r["psnr_in_mask"] == pytest.approx(10 * math.log10(255**2 / (100 * 3 / 96)))
    assert r["psnr"] == pytest.approx(10 * math.log10(255**2 / (100 * 3 / 192)))
    assert r["mask_iou"] == pytest.approx(16 / 32)
    assert r["lpips"] == NA_OFFLINE and r["fid"] == NA_OFFLINE
    s.add(target, target, true, None)  # a second, perfect pair: pooled, not averaged per pair
    assert s.summary()["psnr_in_mask"] == pytest.approx(10 * math.log10(255**2 / (100 * 3 / 192)))
    assert s.summary()["mask_iou"] == pytest.approx(0.5)  # only pairs with a predicted mask count


def test_changed_pixels_iou_counts_what_the_output_changed():
    source = np.zeros((8, 8, 3), np.uint8)  # SSIM needs 7x7
    true = np.zeros((8, 8), bool)
    true[0, :4] = True  # 4 pixels should change
    out = source.copy()
    out[0, :2, 0] = 1  # 2 of them changed, by one level in one channel
    out[7, 7] = 5  # and one pixel outside
    s = Scores()
    s.add(out, out, true, None, source=source)
    assert s.summary()["changed_pixels_iou"] == pytest.approx(2 / 5)
    assert Scores().summary()["changed_pixels_iou"] is None


@pytest.fixture(scope="module")
def exact_pairs(tmp_path_factory):
    from pedit.data.gen_pairs import GenPairsConfig, generate_pairs

    return generate_pairs(GenPairsConfig(str(tmp_path_factory.mktemp("eval") / "pairs"), n=3, resolution=32,
                                         seed=1_000_000, exact=True))


def test_eval_command_writes_a_report_for_every_method(random_model, exact_pairs, tmp_path):
    out = tmp_path / "report"
    result = CliRunner().invoke(cli, ["eval", "-m", str(random_model), "--pairs", str(exact_pairs), "-o", str(out),
                                      "--steps", "2", "--batch-size", "2", "--grid", "2", "-q"])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    assert report["pairs"] == 3 and list(report["methods"]) == list(METHODS)
    for name, m in report["methods"].items():
        assert m["pairs"] == 3 and 0 < m["ssim"] <= 1 and m["lpips"] == NA_OFFLINE
        has_mask = name in ("ours", "no-c_s", "no-c_im", "diffedit")
        assert (m["mask_iou"] is not None) == has_mask
        assert 0 <= m["changed_pixels_iou"] <= 1
    assert set(report["per_direction"]["ours"]) == {"flower", "sheep", "santa"}
    assert report["imperfect_targets"]["pairs"] == 3
    assert "| ours |" in result.stdout and NA_OFFLINE in (out / "report.md").read_text()
    assert result.stdout.count("changed-pixels IoU") == 1 + len(report["per_direction"])  # main + per-method tables
    # report.md has them twice: against the full-resolution truth and against the truth on the latent grid
    assert (out / "report.md").read_text().count("changed-pixels IoU") == 2 * (1 + len(report["per_direction"]))
    assert "latent grid: report.md" in result.stdout
    from PIL import Image

    grid = Image.open(out / "grid.png")
    assert grid.width >= 9 * 32 and grid.height >= 2 * 32  # 2 rows of input, ground truth and 7 methods


def test_eval_rejects_an_unknown_method(exact_pairs):
    result = CliRunner().invoke(cli, ["eval", "--pairs", str(exact_pairs), "--methods", "ours,magic"])
    assert result.exit_code == 1
    assert result.stderr.startswith("Error: Unknown method(s) magic; available: ours, ours-no-mask")


def test_batch_seeds_stay_in_the_generators_range_and_apart():
    from pedit.eval.ground_truth import batch_seed

    assert [batch_seed(7, s) for s in (0, 2, 4)] == [7, 9, 11]  # unchanged below the top: same published numbers
    top = 2**64 - 1
    assert [batch_seed(top, s) for s in (0, 1, 2)] == [top, 0, 1]  # wrapped, still one seed per batch


def test_eval_with_the_largest_seed_runs_past_its_first_batch(random_model, exact_pairs):
    from pedit.eval.ground_truth import EvalConfig, evaluate

    # seed + 1 for the second batch overflowed manual_seed ("unexpected RuntimeError").
    report = evaluate(EvalConfig(str(exact_pairs), model=str(random_model), methods=("ours-no-mask",),
                                 sampling=SamplingSettings(steps=1, seed=2**64 - 1), batch_size=1, limit=2, grid_pairs=0, imperfect_reference=False))
    assert report["pairs"] == 2 and report["methods"]["ours-no-mask"]["pairs"] == 2


def test_a_tally_counts_each_pair_once_pooled_and_once_for_its_direction():
    from pedit.eval.ground_truth import Scores, Tally

    rng = np.random.default_rng(0)
    pairs = [(d, rng.integers(0, 256, (16, 16, 3), dtype=np.uint8), rng.integers(0, 256, (16, 16, 3), dtype=np.uint8),
              rng.random((16, 16)) < 0.3, rng.random((16, 16)) < 0.4) for d in ("angry", "royal", "angry")]
    tally, direct, angry = Tally(), Scores(), Scores()
    for d, out, target, truth, pred in pairs:
        tally.add(d, out, target, truth, pred, 0.9)
        direct.add(out, target, truth, pred, 0.9)
        if d == "angry":
            angry.add(out, target, truth, pred, 0.9)
    assert tally.pooled.summary() == direct.summary() and tally.pooled.n == 3
    assert tally.per_direction()["angry"] == angry.summary() and tally.per_direction()["royal"]["pairs"] == 1
