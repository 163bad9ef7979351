"""Every section of a model folder's pedit.json is checked for names and types at load (issue 27, class 4):
a misspelled name is an error naming the valid ones, a null or wrong-typed value one `Error:` line before
any work, never an exception mid-edit or a setting silently ignored."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from pedit.cli import cli
from pedit.errors import ModelError
from pedit.model.loading import read_model_folder
from pedit.validate import check_section

ROOT = Path(__file__).resolve().parents[1]
STUDENT = ROOT / "pedit" / "assets" / "toon-model-fast"  # has "mask", "mask_by_task", "sampling" and "distilled"

CASES = [
    ("mask is null", lambda m: m.update(mask=None), '"mask" must be a JSON object, got null'),
    ("mask name misspelled", lambda m: m["mask"].update(n_noises=5),
     "\"mask\" has no setting 'n_noises' (did you mean 'n_noise'?); the valid names are n_noise, strength"),
    ("mask value null", lambda m: m["mask"].update(strength=None), '"mask.strength" must be a number, got null'),
    ("mask value a string", lambda m: m["mask"].update(ratio="4"), "\"mask.ratio\" must be a number, got '4'"),
    ("task misspelled", lambda m: m.update(mask_by_task={"costum": {"ratio": 4.0}}),
     "\"mask_by_task\" names task 'costum' (did you mean 'costume'?), which this model does not have; the tasks "
     "are costume, expression, custom"),
    ("task setting misspelled", lambda m: m["mask_by_task"].update(expression={"ration": 4.0}),
     "\"mask_by_task.expression\" has no setting 'ration' (did you mean 'ratio'?)"),
    ("direction the model lacks", lambda m: m.update(mask_by_direction={"laughin": {"ratio": 4.0}}),
     "\"mask_by_direction\" names direction 'laughin' (did you mean 'laughing'?)"),
    ("mask_by_direction null", lambda m: m.update(mask_by_direction=None), '"mask_by_direction" must be a JSON object, got null'),
    ("distilled null", lambda m: m.update(distilled=None), '"distilled" must be a JSON object'),
    ("distilled name misspelled", lambda m: m["distilled"].update(scale_ranges={}),
     "\"distilled\" has no setting 'scale_ranges' (did you mean 'scale_range'?)"),
    ("distilled value a string", lambda m: m["distilled"].update(steps_trained="3100"),
     "\"distilled.steps_trained\" must be an integer, got '3100'"),
    ("top-level name misspelled", lambda m: m.update(directons=m["directions"]),
     "the top level has no setting 'directons' (did you mean 'directions'?); the valid names are format,"),
    ("top-level value null", lambda m: m.update(base=None), '"base" must be a string, got null'),
    ("top-level value a string", lambda m: m.update(latent_factor="8"), "\"latent_factor\" must be an integer, got '8'"),
    ("top-level bool as a number", lambda m: m.update(num_image_tokens=True), '"num_image_tokens" must be an integer, got true'),
]


def _edited(tmp_path: Path, change) -> Path:
    folder = Path(shutil.copytree(STUDENT, tmp_path / "model"))
    meta = json.loads((folder / "pedit.json").read_text())
    change(meta)
    (folder / "pedit.json").write_text(json.dumps(meta))
    return folder


@pytest.mark.parametrize("name, change, needle", CASES, ids=[c[0] for c in CASES])
def test_each_section_is_checked_at_load(tmp_path, name, change, needle):
    folder = _edited(tmp_path, change)
    with pytest.raises(ModelError) as e:
        read_model_folder(folder)
    assert needle in str(e.value) and str(folder / "pedit.json") in str(e.value)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("name, change, needle", CASES[::4], ids=[c[0] for c in CASES[::4]])
def test_the_command_line_says_it_in_one_line_before_any_work(tmp_path, name, change, needle):
    folder = _edited(tmp_path, change)
    r = CliRunner().invoke(cli, ["edit", str(ROOT / "examples" / "toon.png"), "-d", "laughing", "-m", str(folder),
                                 "-o", str(tmp_path / "out.png"), "--steps", "2", "-q"], env={"COLUMNS": "1000"})
    assert r.exit_code == 1 and r.stderr.strip().startswith("Error: ") and "\n" not in r.stderr.strip(), r.output
    assert needle in r.stderr and not (tmp_path / "out.png").exists()


def test_the_bundled_folders_pass_as_they_are():
    for name in ("toon-model", "toon-model-fast"):
        read_model_folder(ROOT / "pedit" / "assets" / name)


def test_check_section_is_generic():
    spec = {"steps": int, "scale": (int, float), "name": str, "on": bool, "maybe": (int, type(None))}
    assert check_section("f.json", "s", {"steps": 2, "scale": 1.5, "on": False, "maybe": None}, spec)
    for bad, needle in [({"steps": 2.0}, '"s.steps" must be an integer, got 2.0'),
                        ({"scale": True}, '"s.scale" must be a number, got true'),
                        ({"on": 1}, '"s.on" must be true or false, got 1'),
                        ({"nmae": "x"}, "no setting 'nmae' (did you mean 'name'?)"),
                        ([], '"s" must be a JSON object')]:
        with pytest.raises(ValueError, match=needle.replace("(", "\\(").replace(")", "\\)").replace("?", "\\?")):
            check_section("f.json", "s", bad, spec)
    with pytest.raises(ValueError, match="is missing name"):
        check_section("f.json", "s", {}, spec, required=("name",))
