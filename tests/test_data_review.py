"""The data wing's guards against what a reviewer broke it with: refused runs that still wrote,
seeds the reader refuses, two writers on one folder, FIFOs given as input files, booleans as
numbers, a quadratic temp scan, and errors that escaped as raw OSErrors."""

import errno
import json
import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from pedit.data.gen_pairs import GenPairsConfig, claim_folder, generate_pairs
from pedit.data.pairs import SEED_LIMIT, PairWriter, read_pairs
from pedit.errors import ConfigError, DirectionError, OutputError, PairFolderError, PoseError


def _cli(*args, env=None):
    from pedit.cli import cli

    return CliRunner().invoke(cli, [str(a) for a in args], env=env)


def _error_line(result) -> str:
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(lines) == 1, result.output
    return lines[0]


def _pair_images(value: int = 0) -> dict:
    img = np.full((32, 32, 3), value, np.uint8)
    return {"x_A": img, "x_B": img}


def _row(pair_id: str) -> dict:
    return {"id": pair_id, "direction": "santa", "p_a": "a", "p_b": "b", "seed": 1}


# ---------------------------------------------------------------------------------------------
# A refused run leaves the folder as it was (toon)


def test_a_toon_run_refused_for_other_settings_touches_nothing(tmp_path):
    out = tmp_path / "pairs"
    claim_folder(out, {"output": str(out), "n": 3, "seed": 99})  # another run's settings
    cut = b'{"id": "000000"}\n{"id": "0000'  # an interrupted row that run may still finish
    (out / "metadata.jsonl").write_bytes(cut)
    with pytest.raises(ConfigError, match="other settings"):
        generate_pairs(GenPairsConfig(str(out), 2, resolution=32))
    assert not (out / "images").exists()  # PairWriter used to create it before the refusal
    assert (out / "metadata.jsonl").read_bytes() == cut  # ... and to cut the last line


# ---------------------------------------------------------------------------------------------
# Seeds: every seed gen-pairs records is one read_pairs accepts


def test_toon_seed_is_bounded_so_the_last_pair_seed_is_readable(tmp_path):
    n = 2
    with pytest.raises(ConfigError, match="seed must be in"):
        GenPairsConfig(str(tmp_path / "x"), n, seed=SEED_LIMIT - n + 1)
    out = generate_pairs(GenPairsConfig(str(tmp_path / "p"), n, resolution=32, seed=SEED_LIMIT - n))
    assert [p.seed for p in read_pairs(out, check_images=False)] == [SEED_LIMIT - 2, SEED_LIMIT - 1]


def test_sd_seed_is_bounded_by_its_noise_seed_formula():
    from pedit.data.sd_pairs import SDPairsConfig
    from pedit.data.sd_plan import max_seed, noise_seed

    n = 5
    top = max_seed(n)
    assert noise_seed(top, n - 1) < SEED_LIMIT <= noise_seed(top + 1, n - 1)
    import torch

    torch.Generator().manual_seed(noise_seed(top, n - 1))  # in torch's range too
    kw = dict(output="o", n=n, base="b", use_pose=False)
    SDPairsConfig(seed=top, **kw)
    for bad in (top + 1, -1, 10_000_000_000_000, True, 1.5):
        with pytest.raises(ConfigError, match="seed must be"):
            SDPairsConfig(seed=bad, **kw)


@pytest.mark.parametrize("field, value, message", [
    ("steps", 0, "steps must be in"),
    ("steps", True, "steps must be an integer"),
    ("batch_size", 2.0, "batch_size must be an integer"),
    ("min_clip", float("nan"), "min_clip .* must be a finite number"),
    ("min_clip", float("inf"), "min_clip .* must be a finite number"),
    ("min_score", 1.5, "min_score .* must be in"),
    ("controlnet_scale", float("inf"), "controlnet_scale must be a finite number"),
    ("max_identity_distance", -0.1, "max_identity_distance must be in"),
    ("contact_sheet", -1, "contact_sheet must be in"),
    ("s_b", True, "s_b must be a number"),
    ("shard", (2, 2), "shard index must be in"),
])
def test_sd_config_validates_every_field(field, value, message):
    from pedit.data.sd_pairs import SDPairsConfig

    kw = dict(output="o", n=2, base="b", use_pose=False, clip="c")
    kw[field] = value
    with pytest.raises(ConfigError, match=message):
        SDPairsConfig(**kw)


# ---------------------------------------------------------------------------------------------
# Two writers on one folder


def test_read_pairs_reports_duplicate_ids(tmp_path):
    writer = PairWriter(tmp_path)
    writer.write(_row("000000"), _pair_images())
    line = (tmp_path / "metadata.jsonl").read_text()
    (tmp_path / "metadata.jsonl").write_text(line + line)
    with pytest.raises(PairFolderError, match=r"row 2 \(id '000000'\): duplicate id, first written in row 1"):
        read_pairs(tmp_path)


def test_two_writers_that_started_together_write_each_id_once(tmp_path):
    first, second = PairWriter(tmp_path), PairWriter(tmp_path)  # both saw an empty folder
    assert first.write(_row("000000"), _pair_images(1))
    assert not second.write(_row("000000"), _pair_images(1))  # it looks again under the lock
    assert second.write(_row("000001"), _pair_images(2))
    assert first.write(_row("000002"), _pair_images(3))
    assert [p.id for p in read_pairs(tmp_path)] == ["000000", "000001", "000002"]


def test_an_interrupted_last_row_is_cut_under_the_lock_without_losing_later_rows(tmp_path):
    first = PairWriter(tmp_path)
    first.write(_row("000000"), _pair_images())
    with open(tmp_path / "metadata.jsonl", "ab") as fh:
        fh.write(b'{"id": "000001", "x_A"')  # a third process died mid-write
    second = PairWriter(tmp_path)  # cuts the broken tail
    second.write(_row("000001"), _pair_images())
    first.write(_row("000002"), _pair_images())  # first's view is stale: it must not cut again
    assert [p.id for p in read_pairs(tmp_path)] == ["000000", "000001", "000002"]


def test_two_processes_filling_one_folder_give_each_id_once(tmp_path):
    import subprocess
    import sys

    out = tmp_path / "pairs"
    code = ("import sys; from pedit.data.gen_pairs import GenPairsConfig, generate_pairs; "
            "generate_pairs(GenPairsConfig(sys.argv[1], 8, resolution=32))")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1]), "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, "-c", code, str(out)], env=env) for _ in range(2)]
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    assert [p.id for p in read_pairs(out)] == [f"{i:06d}" for i in range(8)]


def test_shard_under_a_launcher_is_refused(tmp_path):
    out = tmp_path / "pairs"
    env = {"WORLD_SIZE": "2", "RANK": "1"}
    line = _error_line(_cli("gen-pairs", "-o", out, "-n", 2, "--resolution", 32, "--shard", "0/2", env=env))
    assert "every rank would write the same shard" in line
    assert not out.exists()


# ---------------------------------------------------------------------------------------------
# FIFOs never block a reader


def _unblock_later(fifo: Path, seconds: float = 5.0) -> None:
    """Should a reader open `fifo` (the bug), open its write end after a while so the test fails
    instead of hanging the suite."""
    def writer():
        time.sleep(seconds)
        try:
            fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
            os.close(fd)
        except OSError:
            pass  # nobody is reading: the fix worked

    threading.Thread(target=writer, daemon=True).start()


def test_a_fifo_as_keypoints_json_is_refused(tmp_path):
    from pedit.data.poses import load_poses

    fifo = tmp_path / "pose.json"
    os.mkfifo(fifo)
    _unblock_later(fifo)
    with pytest.raises(PoseError, match="is not a regular file"):
        load_poses(str(fifo))


def test_a_fifo_as_directions_file_is_refused_by_the_library_and_the_cli(tmp_path):
    from pedit.data.directions import load_directions_file

    fifo = tmp_path / "dirs.toml"
    os.mkfifo(fifo)
    _unblock_later(fifo)
    with pytest.raises(DirectionError, match="is not a regular file"):
        load_directions_file(fifo)
    assert "is not a regular file" in _error_line(_cli("directions", "--file", fifo))


def test_photo_folders_list_regular_image_files_of_the_one_suffix_list(tmp_path):
    from pedit.data.sd_models import identity_faces
    from pedit.files import IMAGE_SUFFIXES, image_files
    from pedit.photos.photo import IMAGE_EXTENSIONS, load_photo
    from skimage.data import astronaut

    assert IMAGE_EXTENSIONS is IMAGE_SUFFIXES
    Image.fromarray(astronaut()).save(tmp_path / "portrait.tif")  # .tif: photos read it, so must gen-pairs
    os.mkfifo(tmp_path / "pipe.png")
    (tmp_path / "._portrait.png").write_bytes(b"macOS fork")
    assert [p.name for p in image_files(tmp_path)] == ["portrait.tif"]
    read = []
    faces = identity_faces(tmp_path, lambda p: read.append(p.name) or np.asarray(load_photo(p).rgb))
    assert read == ["portrait.tif"] and [name for name, _ in faces] == ["portrait.tif"]


# ---------------------------------------------------------------------------------------------
# Pickle weights need --allow-pickle


def test_pose_annotator_pickle_needs_allow_pickle(tmp_path, monkeypatch):
    import sys
    import types

    from pedit.data.poses import detect_photo_poses

    loaded = []
    fake = types.ModuleType("controlnet_aux")
    fake.OpenposeDetector = type("OpenposeDetector", (), {"from_pretrained": staticmethod(loaded.append)})
    monkeypatch.setitem(sys.modules, "controlnet_aux", fake)
    (tmp_path / "ann").mkdir()
    (tmp_path / "ann" / "body_pose_model.pth").write_bytes(b"pickle")
    (tmp_path / "photos").mkdir()
    with pytest.raises(PoseError, match="pass --allow-pickle"):
        detect_photo_poses(tmp_path / "photos", tmp_path / "ann", read_photo=np.asarray)
    assert loaded == []  # refused before anything was unpickled


# ---------------------------------------------------------------------------------------------
# pedit.files


def test_a_folder_is_cleaned_of_stale_temps_once_per_process(tmp_path, monkeypatch):
    from pedit import files

    scanned = []
    monkeypatch.setattr(files, "clean_stale_temps", lambda folder: scanned.append(Path(folder)) or [])
    for i in range(3):
        files.write_atomic(tmp_path / f"{i}.txt", lambda f: f.write(b"x"))
    (tmp_path / "sub").mkdir()
    files.write_atomic(tmp_path / "sub" / "a.txt", lambda f: f.write(b"x"))
    assert scanned == [tmp_path, tmp_path / "sub"]


@pytest.mark.parametrize("where", ["write", "commit"])
def test_a_full_disk_is_an_output_error_and_leaves_no_temp(tmp_path, monkeypatch, where):
    from pedit import files

    def full(*_args):
        raise OSError(errno.ENOSPC, "No space left on device")

    if where == "commit":
        monkeypatch.setattr(files.os, "link", full)
    write = full if where == "write" else (lambda f: f.write(b"x"))
    with pytest.raises(OutputError, match="No space left on device"):
        files.write_atomic(tmp_path / "a.png", write)
    assert os.listdir(tmp_path) == []


def test_fingerprint_changes_with_a_file_content_or_name(tmp_path):
    from pedit.files import fingerprint

    (tmp_path / "a.png").write_bytes(b"1")
    before = fingerprint(tmp_path)
    (tmp_path / "a.png").write_bytes(b"2")
    changed = fingerprint(tmp_path)
    (tmp_path / "a.png").rename(tmp_path / "b.png")
    assert len({json.dumps(d) for d in (before, changed, fingerprint(tmp_path))}) == 3
    assert fingerprint(tmp_path / "b.png") == fingerprint(tmp_path)  # one file: the same entry


# ---------------------------------------------------------------------------------------------
# Small ones: articles, booleans


@pytest.mark.parametrize("prompt, subject, expected", [
    ("a person, santa claus costume", "old man", "an old man, santa claus costume"),
    ("a person, santa claus costume", "woman", "a woman, santa claus costume"),
    ("A person smiling", "old woman", "An old woman smiling"),
    ("a cartoon person, neutral expression", "old man", "a cartoon old man, neutral expression"),
    ("the same person on the left and right", "old man", "the same old man on the left and right"),
])
def test_with_subject_fixes_the_article(prompt, subject, expected):
    from pedit.data.sd_plan import with_subject

    assert with_subject(prompt, subject) == expected


def test_booleans_are_not_numbers_in_strengths_or_pose_json(tmp_path):
    from pedit.data.composable import PairStrengths
    from pedit.data.poses import load_keypoints_json

    with pytest.raises(ConfigError, match="s_a must be a number"):
        PairStrengths(s_a=True)
    keypoints = [[0.5, 0.4], [True, 0.6]] + [None] * 16
    (tmp_path / "k.json").write_text(json.dumps({"poses": [{"id": "p", "keypoints": keypoints}]}))
    with pytest.raises(PoseError, match="neck must be"):
        load_keypoints_json(tmp_path / "k.json")
    flat = [0.0] * 54
    flat[0:3], flat[3:6] = [10, 5, 1], [10, 12, 1]
    (tmp_path / "o.json").write_text(json.dumps({"people": [{"pose_keypoints_2d": flat}], "canvas_width": True,
                                                 "canvas_height": 20}))
    with pytest.raises(PoseError, match="canvas_width"):
        load_keypoints_json(tmp_path / "o.json")


def test_identity_distance_uses_the_same_detector_path_as_eval(monkeypatch):
    from pedit import faces
    from pedit.data import pair_scores

    calls = []
    monkeypatch.setattr(faces, "face_model_available", lambda: True)
    monkeypatch.setattr(faces, "image_identity_distance", lambda a, b, *rest, **kw: calls.append((rest, kw)) or 0.25)
    a = np.zeros((8, 8, 3), np.uint8)
    assert pair_scores.identity_distance(a, a) == 0.25
    assert calls == [((), {})]  # faces' default (HOG), as eval and the editor: no Haar of its own
