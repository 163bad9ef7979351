"""Pair and model folders are untrusted: rows typed and UTF-8, images of one size and regular files,
no link leaving a model folder, pedit.json values in range. Each problem is found before any work."""

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pedit.data.pairs import read_pairs
from pedit.errors import ModelError, PairFolderError
from pedit.model.loading import load_base, load_model

TAIL = ". Fix or remove those rows."


def _rows(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "metadata.jsonl").read_text().splitlines()]


def _write(folder: Path, rows: list) -> None:
    (folder / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def _problem(folder: Path) -> str:
    with pytest.raises(PairFolderError) as e:
        read_pairs(folder)
    text = str(e.value)
    assert text.startswith(f"Pair folder {folder} has 1 problem(s): ") and text.endswith(TAIL), text
    return text.split("problem(s): ", 1)[1][: -len(TAIL)]


# ---------------------------------------------------------------- pair folders


@pytest.mark.parametrize("field, value, why", [
    ("direction", ["royal"], "direction must be a string, got ['royal']"),
    ("p_a", None, "p_a must be a string, got None"),
    ("p_b", 3, "p_b must be a string, got 3"),
    ("task", {"a": 1}, "task must be a string, got {'a': 1}"),
    ("direction", " ", "direction must not be empty"),
    ("id", True, "id must be a non-empty string or an integer, got True"),
    ("seed", -1, "seed must be from 0 to 2**63 - 1, got -1"),
    ("seed", 2**64, f"seed must be from 0 to 2**63 - 1, got {2**64}"),
    ("seed", "7", "seed must be an integer, got '7'"),
    ("seed", 1.5, "seed must be an integer, got 1.5"),
])
def test_a_field_of_the_wrong_type_or_range_is_named(tiny_pairs_copy, field, value, why):
    rows = _rows(tiny_pairs_copy)
    rows[2][field] = value
    _write(tiny_pairs_copy, rows)
    assert _problem(tiny_pairs_copy).endswith(f": {why}")


def test_a_row_that_is_not_utf8_is_reported_not_replaced(tiny_pairs_copy):
    meta = tiny_pairs_copy / "metadata.jsonl"
    lines = meta.read_bytes().splitlines(keepends=True)
    lines[1] = lines[1].replace(b'"p_b": "', b'"p_b": "\xff\xfe', 1)
    meta.write_bytes(b"".join(lines))
    assert _problem(tiny_pairs_copy) == "row 2: not UTF-8 text (byte 0xff at column " + str(lines[1].index(b"\xff") + 1) + ")"


def test_an_image_of_another_size_is_refused(tiny_pairs_copy):
    path = tiny_pairs_copy / "images" / "000003_x_B.png"
    Image.fromarray(np.zeros((32, 48, 3), np.uint8)).save(path)  # 48 wide, 32 high
    assert _problem(tiny_pairs_copy) == (
        "row 4 (id '000003'): x_B 'images/000003_x_B.png' is 48x32, but row 1 (id '000000'): x_A "
        "'images/000000_x_A.png' is 32x32; all images of a pair folder have one size")


def test_a_fifo_named_like_an_image_is_refused_without_hanging(tiny_pairs_copy):
    path = tiny_pairs_copy / "images" / "000005_x_A.png"
    path.unlink()
    os.mkfifo(path)
    assert _problem(tiny_pairs_copy) == (
        "row 6 (id '000005'): x_A 'images/000005_x_A.png' is not a regular file (a pipe, socket or device)")


def test_metadata_that_is_a_fifo_or_a_link_outside_is_refused(tiny_pairs_copy, tmp_path):
    meta = tiny_pairs_copy / "metadata.jsonl"
    outside = tmp_path / "elsewhere.jsonl"
    shutil.move(meta, outside)
    meta.symlink_to(outside)
    with pytest.raises(PairFolderError, match="is a link that points outside the pair folder"):
        read_pairs(tiny_pairs_copy)
    meta.unlink()
    os.mkfifo(meta)
    with pytest.raises(PairFolderError, match="is not a regular file"):
        read_pairs(tiny_pairs_copy)


# ---------------------------------------------------------------- model folders


@pytest.fixture
def model_copy(random_model, tmp_path) -> Path:
    return Path(shutil.copytree(random_model, tmp_path / "model"))


def test_a_file_linking_outside_the_model_folder_is_refused_unread(model_copy, tmp_path):
    secret = tmp_path / "secret.json"
    secret.write_text("{}")
    config = model_copy / "vae" / "config.json"
    shutil.copy(config, secret)
    config.unlink()
    config.symlink_to(secret)
    with pytest.raises(ModelError) as e:
        load_model(model_copy)
    assert str(e.value) == (f"Model folder {model_copy}: vae/config.json is a link to {secret}, outside the folder. "
                            "pedit only reads files inside a model folder; copy the file in instead.")


def test_a_linked_subfolder_outside_is_refused_and_a_link_inside_is_fine(model_copy, tmp_path):
    moved = Path(shutil.move(model_copy / "tokenizer", tmp_path / "tokenizer"))
    (model_copy / "tokenizer").symlink_to(moved, target_is_directory=True)
    with pytest.raises(ModelError, match="tokenizer is a link to .*, outside the folder"):
        load_model(model_copy)
    (model_copy / "tokenizer").unlink()
    shutil.move(moved, model_copy / "real-tokenizer")
    (model_copy / "tokenizer").symlink_to("real-tokenizer", target_is_directory=True)
    assert load_model(model_copy).resolution == 32


def test_a_base_folder_linking_outside_is_refused(tiny_base, tmp_path):
    base = Path(shutil.copytree(tiny_base, tmp_path / "base"))
    weights = next((base / "unet").glob("*.safetensors"))
    shutil.move(weights, tmp_path / "w.safetensors")
    weights.symlink_to(tmp_path / "w.safetensors")
    with pytest.raises(ModelError, match="is a link to .*, outside the folder"):
        load_base(base)


def test_a_fifo_in_a_model_folder_is_refused(model_copy):
    os.mkfifo(model_copy / "scheduler" / "extra.json")
    with pytest.raises(ModelError, match="scheduler/extra.json is not a regular file"):
        load_model(model_copy)


@pytest.mark.parametrize("value, why", [
    (10**9, "resolution must be an integer from 8 to 4096, got 1000000000"),
    (-32, "resolution must be an integer from 8 to 4096, got -32"),
    (32.5, "resolution must be an integer from 8 to 4096, got 32.5"),
    (36, "resolution 36 is not a multiple of the VAE's latent factor 8"),
])
def test_a_pedit_json_resolution_out_of_range_is_a_model_error(model_copy, value, why):
    meta = json.loads((model_copy / "pedit.json").read_text())
    meta["resolution"] = value
    (model_copy / "pedit.json").write_text(json.dumps(meta))
    with pytest.raises(ModelError) as e:
        load_model(model_copy)
    assert str(e.value) == f"{model_copy / 'pedit.json'}: {why}."


def test_pedit_json_mask_settings_are_validated(model_copy):
    meta = json.loads((model_copy / "pedit.json").read_text())
    meta["mask"] = {"strength": 0}
    (model_copy / "pedit.json").write_text(json.dumps(meta))
    with pytest.raises(ModelError) as e:
        load_model(model_copy)
    assert str(e.value) == f"{model_copy / 'pedit.json'}: \"mask\": strength must be in (0, 1], got 0."
