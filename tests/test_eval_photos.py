"""Identity as a measurement: `pedit eval --photos` and the identity column of `pedit edit`.

Runs the real commands (CliRunner) with the bundled toon model at 2 steps on examples/astronaut.png.
On her, the toon model's "royal" edit (a crown, a collar) keeps her face: a finite identity
distance, the same person. Numbers are checked against a direct computation with pedit.faces on
the files `pedit edit` writes with the same settings.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from pedit import faces
from pedit.cli import cli
from pedit.faces import SAME_PERSON_THRESHOLD, HogDetector, image_identity_distance
from pedit.photos.identity import MISSING_NOTE
from pedit.model.sampling_settings import SamplingSettings
from conftest import TEST_DEVICE  # PEDIT_TEST_DEVICE, default cpu

pytestmark = pytest.mark.skipif(not faces.face_model_available(), reason="needs pip install 'pedit[faces]'")

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
FAST = ["--steps", "2", "--device", TEST_DEVICE]
ENV = {"COLUMNS": "1000", "PEDIT_DEBUG": None}


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], env=ENV)


def pixels(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def assert_clean_failure(result, needle: str) -> None:
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.output
    assert "Traceback" not in result.output and result.stdout == ""
    assert [line for line in result.stderr.splitlines() if line.startswith("Error:")] and needle in result.stderr


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    folder = tmp_path_factory.mktemp("eval-photos")
    photo = Path(shutil.copy(EXAMPLES / "astronaut.png", folder / "astronaut.png"))
    result = run("eval", "--photos", photo, "-d", "royal", "-o", folder / "report", *FAST)
    return folder, photo, result


def test_eval_photos_writes_the_report_and_prints_it(evaluated):
    folder, _, result = evaluated
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (folder / "report").iterdir()) == ["grid.png", "report.json", "report.md"]
    report = json.loads((folder / "report" / "report.json").read_text())
    assert report["face_model"] is True and report["identity_note"] is None and report["photos"] == 1
    assert "| astronaut.png | royal |" in result.stdout and "same person" in (folder / "report" / "report.md").read_text()
    with Image.open(folder / "report" / "grid.png") as grid:
        assert grid.width > 2 * 192 and grid.height > 192  # input and one direction, labelled


def test_eval_identity_distance_matches_a_direct_computation(evaluated):
    folder, photo, _ = evaluated
    (row,) = json.loads((folder / "report" / "report.json").read_text())["results"]
    # The same edit through `pedit edit` (same seed, steps and mask settings), then pedit.faces by hand.
    edited = folder / "edited.png"
    assert run("edit", photo, "-d", "royal", "-m", "toon", "-o", edited, *FAST).exit_code == 0
    before, after = pixels(photo), pixels(edited)
    x, y, w, h = row["crop"]
    direct = image_identity_distance(before[y:y + h, x:x + w], after[y:y + h, x:x + w], HogDetector(max_side=512))
    assert row["identity_distance"] is not None and np.isfinite(row["identity_distance"])
    assert row["identity_distance"] == pytest.approx(direct, abs=1e-9)
    assert 0 < row["identity_distance"] < SAME_PERSON_THRESHOLD and row["verdict"] == "same person"
    kept = (before == after).all(axis=2).mean()
    assert row["kept"] == pytest.approx(kept, abs=1e-12) and 0.5 < kept < 1
    # Every pixel outside the mask is kept, and the edit changed some inside it.
    assert 1 - row["mask_area"] <= row["kept"] < 1 and 0 < row["mask_area"] < 0.5


def test_eval_without_the_face_model_reports_identity_as_missing(tmp_path, monkeypatch):
    from pedit.eval import photos as evaluate
    from pedit.photos import identity

    monkeypatch.setattr(identity, "face_model_available", lambda: False)
    monkeypatch.setattr(evaluate, "face_model_available", lambda: False)
    result = run("eval", "--photos", EXAMPLES / "astronaut.png", "-d", "royal", "-o", tmp_path / "r", *FAST)
    assert result.exit_code == 0, result.output
    assert MISSING_NOTE in result.stderr and "pip install 'pedit[faces]'" in result.stdout
    (row,) = json.loads((tmp_path / "r" / "report.json").read_text())["results"]
    assert row["identity_distance"] is None and row["verdict"] is None and row["kept"] > 0.5


def test_eval_photos_bad_input_fails_cleanly_and_writes_nothing(tmp_path):
    fake = tmp_path / "notes.png"
    fake.write_text("not a picture")
    report = tmp_path / "report"
    assert_clean_failure(run("eval", "--photos", EXAMPLES / "astronaut.png", fake, "-d", "royal", "-o", report, *FAST),
                         "notes.png is not an image")
    assert_clean_failure(run("eval", "--photos", EXAMPLES / "astronaut.png", "-d", "royal,dancing", "-o", report, *FAST),
                         "dancing")
    assert not report.exists()
    report.mkdir()
    (report / "report.md").write_text("an earlier report")
    assert_clean_failure(run("eval", "--photos", EXAMPLES / "astronaut.png", "-d", "royal", "-o", report, *FAST),
                         "Pass --overwrite")
    assert sorted(p.name for p in report.iterdir()) == ["report.md"]


def test_eval_usage_errors():
    both = run("eval", "--pairs", "x", "--photos", EXAMPLES / "astronaut.png", "-d", "royal")
    assert both.exit_code == 2 and "either --pairs" in both.stderr
    no_directions = run("eval", "--photos", EXAMPLES / "astronaut.png")
    assert no_directions.exit_code == 2 and "needs -d/--directions" in no_directions.stderr
    neither = run("eval")
    assert neither.exit_code == 2


def test_edit_batch_summary_shows_identity_unless_skipped(tmp_path):
    for name in ("astronaut.png", "toon.png"):
        shutil.copy(EXAMPLES / name, tmp_path / name)
    photos = [tmp_path / "astronaut.png", tmp_path / "toon.png"]
    checked = run("edit", *photos, "-d", "royal", "-o", tmp_path / "a", *FAST)
    assert checked.exit_code == 0, checked.output
    assert "identity distance" in checked.stderr
    astronaut_line = next(line for line in checked.stderr.splitlines() if "astronaut.png" in line and "│" in line)
    distance = float(astronaut_line.split("│")[4].split()[0])
    # The summary compares the faces found inside the edited square (pedit.photos.identity): the same
    # square here, found as `pedit edit` finds it (largest face, margin 1), then the faces by hand.
    from pedit.faces import get_detector
    from pedit.photos.portrait import face_crop_box

    before, after = pixels(photos[0]), pixels(tmp_path / "a" / "astronaut_royal.png")
    face = max(get_detector("default").detect(before), key=lambda f: f.area)
    crop = face_crop_box((before.shape[1], before.shape[0]), face, 1.0)
    x, y, w, h = crop.x, crop.y, crop.w, crop.h
    direct = image_identity_distance(before[y:y + h, x:x + w], after[y:y + h, x:x + w], HogDetector(max_side=512))
    assert distance == pytest.approx(direct, abs=0.006) and "same person" in astronaut_line
    assert "no face in the input" in checked.stderr  # dlib sees no face in a cartoon

    skipped = run("edit", *photos, "-d", "royal", "-o", tmp_path / "b", "--no-identity-check", *FAST)
    assert skipped.exit_code == 0 and "identity" not in skipped.stderr
    # The identity check changes no pixel of the result.
    assert np.array_equal(pixels(tmp_path / "a" / "astronaut_royal.png"), pixels(tmp_path / "b" / "astronaut_royal.png"))


def test_a_failed_report_write_leaves_no_partial_report(tmp_path, monkeypatch):
    import os

    def failing_for_report_md(real):
        def move(src, dst, *args, **kwargs):
            if Path(dst).name == "report.md":
                raise OSError(28, "No space left on device")
            return real(src, dst, *args, **kwargs)
        return move

    # The final step is a link (exclusive) without --overwrite, a rename with it: fail both.
    monkeypatch.setattr(os, "replace", failing_for_report_md(os.replace))
    monkeypatch.setattr(os, "link", failing_for_report_md(os.link))
    result = run("eval", "--photos", EXAMPLES / "astronaut.png", "-d", "royal", "-o", tmp_path / "r", *FAST)
    assert_clean_failure(result, "No space left on device")
    assert list((tmp_path / "r").iterdir()) == []  # no report.json without its report.md, no temporary file


def test_detector_flag_places_the_crop(tmp_path):
    from pedit.faces import get_detector
    from pedit.photos.portrait import face_crop_box

    rgb = pixels(EXAMPLES / "astronaut.png")
    crops = {}
    for name in ("haar", "default"):
        result = run("eval", "--photos", EXAMPLES / "astronaut.png", "-d", "royal", "--detector", name,
                     "-o", tmp_path / name, *FAST)
        assert result.exit_code == 0, result.output
        (row,) = json.loads((tmp_path / name / "report.json").read_text())["results"]
        crops[name] = tuple(row["crop"])
        face = get_detector(name).detect(rgb)[0]
        assert crops[name] == tuple(getattr(face_crop_box((512, 512), face), k) for k in "xywh")
    assert crops["haar"] != crops["default"]  # Haar's box vs HOG's landmarks: different framings


def test_configs_refuse_unknown_detectors_and_empty_lists():
    from pedit.errors import ConfigError
    from pedit.photos.edit_files import EditFilesConfig
    from pedit.eval.photos import PhotoEvalConfig

    with pytest.raises(ConfigError, match="Unknown face detector 'mtcnn'"):
        EditFilesConfig(inputs=("a.jpg",), direction="royal", detector="mtcnn")
    with pytest.raises(ConfigError, match="Unknown face detector"):
        PhotoEvalConfig(photos=("a.jpg",), directions=("royal",), detector="mtcnn")
    with pytest.raises(ConfigError, match="No photos"):
        PhotoEvalConfig(photos=(), directions=("royal",))
    with pytest.raises(ConfigError, match="Directions"):
        PhotoEvalConfig(photos=("a.jpg",), directions=())
    with pytest.raises(ConfigError, match="steps"):
        PhotoEvalConfig(photos=("a.jpg",), directions=("royal",), sampling=SamplingSettings(steps=0))
    with pytest.raises(ConfigError, match="margin"):
        PhotoEvalConfig(photos=("a.jpg",), directions=("royal",), margin=9.0)


def test_edit_without_the_face_model_says_so_once_and_still_edits(tmp_path, monkeypatch):
    from pedit.photos import identity

    monkeypatch.setattr(identity, "face_model_available", lambda: False)
    monkeypatch.setattr(faces, "face_model_available", lambda: False)  # the CLI asks pedit.faces
    photos = [shutil.copy(EXAMPLES / "astronaut.png", tmp_path / f"{name}.png") for name in ("a", "b")]
    result = run("edit", *photos, "-d", "royal", "-o", tmp_path / "out", *FAST)
    assert result.exit_code == 0, result.output
    assert result.stderr.count(MISSING_NOTE) == 1 and "identity distance" not in result.stderr
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a_royal.png", "b_royal.png"]
