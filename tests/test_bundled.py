"""The model that ships with pedit: loads offline, says it is the bundled one, edits a toon portrait."""

import json

import numpy as np
from click.testing import CliRunner
from PIL import Image

from pedit.cli import cli
from pedit.model.loading import bundled_base_path, bundled_model_path


def test_bundled_model_is_complete_small_and_safetensors_only():
    folder = bundled_model_path()
    meta = json.loads((folder / "pedit.json").read_text())
    assert meta["bundled"] is True and meta["resolution"] == 128 and len(meta["directions"]) == 8
    files = [p for p in folder.parent.rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in files) < 25 * 2**20
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
