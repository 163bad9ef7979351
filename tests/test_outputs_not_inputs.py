"""An output folder that is one of a command's inputs (equal, inside, or holding it) is refused before any
work, with or without --overwrite, and the input is left exactly as it was (issue 27, class 3)."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from pedit.cli import cli

FAST_TRAIN = ["--max-steps", "1", "--batch-size", "2", "--validate-every", "0", "-q"]


def snapshot(folder: Path) -> dict:
    """Every entry under `folder` (names, and each file's bytes' hash): what "untouched" compares."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(folder.rglob("*"))}


def refused(result, flag: str) -> bool:
    lines = [l for l in result.stderr.splitlines() if l.startswith("Error: ")]
    return (result.exit_code == 1 and len(lines) == 1 and "never writes into what it reads" in lines[0]
            and flag in lines[0] and "Traceback" not in result.output)


@pytest.fixture
def inputs(tiny_pairs, random_model, tiny_base, tmp_path):
    """Writable copies of a pair folder, a model and a base (each test may try to write into them)."""
    return {"data": Path(shutil.copytree(tiny_pairs, tmp_path / "d" / "pairs")),
            "model": Path(shutil.copytree(random_model, tmp_path / "m" / "model")),
            "base": Path(shutil.copytree(tiny_base, tmp_path / "b" / "base"))}


def where(folder: Path, how: str, tmp_path: Path) -> Path:
    """The -o that is `folder` itself, a folder inside it, or a folder holding it (and no other input)."""
    return {"equal": folder, "inside": folder / "out", "holding": folder.parent}[how]


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


@pytest.mark.parametrize("overwrite", [False, True])
@pytest.mark.parametrize("how", ["equal", "inside", "holding"])
@pytest.mark.parametrize("flag", ["--data", "--base"])
def test_train_refuses_an_output_that_is_an_input(inputs, tmp_path, flag, how, overwrite):
    folder = inputs["data" if flag == "--data" else "base"]
    before = {k: snapshot(v) for k, v in inputs.items()}
    out = where(folder, how, tmp_path)
    r = invoke(*["train", "--data", inputs["data"], "--base", inputs["base"], "-o", out, *FAST_TRAIN,
                                 *(["--overwrite"] if overwrite else [])])
    assert refused(r, flag), r.output
    assert {k: snapshot(v) for k, v in inputs.items()} == before
    assert not (folder / "out").exists()


@pytest.mark.parametrize("overwrite", [False, True])
@pytest.mark.parametrize("how", ["equal", "inside", "holding"])
@pytest.mark.parametrize("flag", ["-m", "--data"])
def test_distill_refuses_an_output_that_is_its_teacher_or_data(inputs, tmp_path, flag, how, overwrite):
    folder = inputs["model" if flag == "-m" else "data"]
    before = {k: snapshot(v) for k, v in inputs.items()}
    r = invoke(*["distill", "-m", inputs["model"], "--data", inputs["data"],
                                 "-o", where(folder, how, tmp_path), *FAST_TRAIN,
                                 *(["--overwrite"] if overwrite else [])])
    assert refused(r, flag), r.output
    assert {k: snapshot(v) for k, v in inputs.items()} == before


def test_a_link_to_the_input_is_the_input(inputs, tmp_path):
    link = tmp_path / "link"
    link.symlink_to(inputs["data"], target_is_directory=True)
    before = snapshot(inputs["data"])
    r = invoke(*["train", "--data", inputs["data"], "--base", inputs["base"], "-o", link, *FAST_TRAIN])
    assert refused(r, "--data"), r.output
    assert snapshot(inputs["data"]) == before


@pytest.mark.parametrize("how", ["equal", "inside", "holding"])
def test_export_refuses_engines_inside_or_over_the_model(inputs, tmp_path, how):
    before = snapshot(inputs["model"])
    r = invoke(*["export", "-m", inputs["model"], "-o", where(inputs["model"], how, tmp_path)])
    assert refused(r, "-m"), r.output
    assert snapshot(inputs["model"]) == before


@pytest.mark.parametrize("overwrite", [False, True])
@pytest.mark.parametrize("flag", ["-m", "--pairs"])
def test_eval_refuses_a_report_folder_that_is_an_input(inputs, tmp_path, flag, overwrite):
    folder = inputs["model" if flag == "-m" else "data"]
    before = snapshot(folder)
    r = invoke(*["eval", "--pairs", inputs["data"], "-m", inputs["model"], "-o", folder,
                                 "--steps", "1", *(["--overwrite"] if overwrite else [])])
    assert refused(r, flag), r.output
    assert snapshot(folder) == before


@pytest.mark.parametrize("overwrite", [False, True])
def test_sticker_pack_refuses_a_pack_folder_over_its_model_or_selfie(inputs, tmp_path, portrait, overwrite):
    selfie = tmp_path / "selfies" / "me.png"
    selfie.parent.mkdir()
    portrait.save(selfie)
    for out, flag in ((inputs["model"], "-m"), (selfie.parent, "the selfie")):
        before = snapshot(out)
        r = invoke(*["sticker-pack", str(selfie), "-m", inputs["model"], "-o", out,
                                     "--skip-cartoonize", "--device", "cpu", "-q",
                                     *(["--overwrite"] if overwrite else [])])
        assert refused(r, flag), r.output
        assert snapshot(out) == before


def test_gen_pairs_sd_refuses_a_pair_folder_inside_its_base(inputs):
    before = snapshot(inputs["base"])
    r = invoke(*["gen-pairs", "--source", "sd", "-n", "1", "--base", inputs["base"],
                                 "-o", inputs["base"] / "pairs", "--no-pose", "--no-identity"])
    assert refused(r, "--base"), r.output
    assert snapshot(inputs["base"]) == before
