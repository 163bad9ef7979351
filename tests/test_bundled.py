"""The model that ships with pedit: loads offline, says it is the bundled one, edits a toon portrait."""

import json

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import same_edit
from PIL import Image

from pedit.cli import cli
from pedit.model.loading import bundled_base_path, bundled_model_path


def test_bundled_model_is_complete_small_and_safetensors_only():
    folder = bundled_model_path()
    meta = json.loads((folder / "pedit.json").read_text())
    assert meta["bundled"] is True and meta["resolution"] == 128 and len(meta["directions"]) == 8
    files = [p for p in folder.parent.rglob("*") if p.is_file()]
    # the toon base, the toon model and its distilled student (toon-model-fast, fp16 U-Net weights)
    assert sum(p.stat().st_size for p in files) < 36 * 2**20
    assert not [p for p in files if p.suffix in (".bin", ".pt", ".ckpt", ".pkl")]
    assert (bundled_base_path() / "unet" / "config.json").exists()


def test_default_edit_uses_the_bundled_model_and_says_so(tmp_path):
    out = tmp_path / "laughing.png"
    result = CliRunner().invoke(cli, ["edit", "examples/toon.png", "--direction", "laughing", "-o", str(out),
                                      "--save-mask", "-q"])
    assert result.exit_code == 0, result.output
    assert "Using the bundled toon model" in result.stderr and "-m MODEL_FOLDER" in result.stderr
    src = np.asarray(Image.open("examples/toon.png").convert("RGB"))
    edited = np.asarray(Image.open(out))
    weight = np.asarray(Image.open(tmp_path / "laughing_mask.png").convert("L"))
    assert edited.shape == src.shape
    assert 0 < (weight > 0).mean() < 0.9  # a partial mask: the edit stays local
    assert np.array_equal(edited[weight == 0], src[weight == 0])
    assert np.abs(edited[weight == 255].astype(int) - src[weight == 255]).mean() > 5  # and it did edit


def test_the_bundled_student_is_distilled_and_edits_in_at_most_24_rows(tmp_path, monkeypatch):
    from pedit.data.pairs import square_rgb
    from pedit.edit.editor import Editor
    from pedit.edit.rows import edit_rows
    from pedit.model.loading import model_path

    student = Editor.from_pretrained("toon-fast", device="cpu")
    assert student.distilled and student.is_bundled and student.model.path == model_path("toon-fast")
    options = student.default_options("laughing")
    assert edit_rows(options, student.scheduler(options), distilled=True) <= 24
    src = Image.open("examples/toon.png").convert("RGB")
    result = student.edit(src, "laughing")
    weight = np.asarray(result.mask)
    edited, original = np.asarray(result.image), np.asarray(src.resize(result.image.size))
    assert 0 < (weight > 0).mean() < 0.9 and np.array_equal(edited[weight == 0], original[weight == 0])
    monkeypatch.chdir(tmp_path)  # a folder of that name here is what -m means
    (tmp_path / "toon-fast").mkdir()
    assert model_path("toon-fast").resolve() == tmp_path / "toon-fast"


@pytest.mark.parametrize("split", [False, True])
@pytest.mark.parametrize("name", ["toon", "toon-fast"])
def test_a_bundled_models_directions_edited_together_are_their_edits_alone(name, split):
    """`pedit edit -d laughing,royal,angry` on a bundled model: each direction at its task's sampler
    (pedit.json "sampling" with "sampling_by_task"; split: the costumes given one more step than the
    expressions, in memory), grouped into one job per sampler; each output is that direction's edit
    alone (conftest.same_edit). As shipped, each task's edit stays within 24 U-Net rows."""
    from pedit.data.pairs import square_rgb
    from pedit.edit.editor import Editor
    from pedit.edit.rows import edit_rows
    from pedit.model.sampling_settings import sampling_for

    editor = Editor.from_pretrained(name, device="cpu")
    meta = editor.model.meta
    if split:
        meta["sampling_by_task"] = {**meta.get("sampling_by_task", {}),
                                    "costume": {"steps": sampling_for(meta, "expression").steps + 1}}
    names = ["laughing", "royal", "angry"]
    for d in names:
        o = editor.default_options(d)
        assert split or edit_rows(o, editor.scheduler(o), distilled=editor.distilled) <= 24
    two = sampling_for(meta, "expression") != sampling_for(meta, "costume")  # the mask's draws may differ in a job
    assert two or not split
    jobs = []
    make = editor.job
    editor.job = lambda conds, *a: jobs.append(conds) or make(conds, *a)
    src = Image.open("examples/toon.png").convert("RGB")
    together = editor.edit_many(src, names)
    assert [len(j) for j in jobs] == ([2, 1] if two else [3])  # the expressions' job (laughing, angry), royal's
    square = square_rgb(src, editor.resolution)
    for d, many in zip(names, together):
        same_edit(editor.edit(src, d), many, square)
