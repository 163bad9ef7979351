"""pedit's optional extras: each one docs/getting-started.md lists is in pyproject.toml, and a command that needs
one that is missing says, in one `Error:` line, what to install (no traceback, nothing written)."""

from __future__ import annotations

import sys
import tomllib
import types
from pathlib import Path

import numpy as np
from click.testing import CliRunner
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
EXTRAS = ("torch", "faces", "onnx", "lora", "pose", "trt", "app", "datasets", "docs", "serve")


def test_getting_started_lists_every_extra_with_what_it_enables():
    readme = (ROOT / "docs" / "getting-started.md").read_text(encoding="utf-8")
    table = readme.split("## Optional extras", 1)[1].split("\n## ", 1)[0]
    rows = {line.split("|")[1].strip().strip("`"): line for line in table.splitlines() if line.startswith("| `")}
    assert set(rows) == set(EXTRAS)
    for name, row in rows.items():
        brings, enables = (cell.strip() for cell in row.split("|")[2:4])
        assert brings and len(enables) > 20, f"{name}: say what it brings and what it enables"


def test_pyproject_declares_the_extras_getting_started_lists():
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert {"faces", "onnx", "lora", "pose", "trt", "app", "docs"} <= set(extras)  # datasets: with `pedit train --data` hub support
    assert any(req.startswith("controlnet_aux") for req in extras["pose"])
    assert {"gradio", "gradio_client", "selenium"} <= {req.split(">")[0].split("=")[0] for req in extras["app"]}


def _gen_pairs_with_photo_poses(tiny_base, tmp_path, *extra):
    photos = tmp_path / "pose-photos"
    photos.mkdir()
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(photos / "p.png")
    from pedit.cli import cli

    return CliRunner().invoke(cli, ["gen-pairs", "--source", "sd", "--base", str(tiny_base), "-o", str(tmp_path / "p"),
                                    "-n", "1", "--pose", str(photos), "-q", *map(str, extra)])


def _one_error_line(result, out: Path) -> str:
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    assert not (out / "metadata.jsonl").exists()
    return lines[0]


def test_gen_pairs_from_photos_without_controlnet_aux_names_the_pose_extra(tiny_base, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "controlnet_aux", None)  # import controlnet_aux → ImportError
    line = _one_error_line(_gen_pairs_with_photo_poses(tiny_base, tmp_path), tmp_path / "p")
    assert "need controlnet_aux, which is not installed: pip install 'pedit[pose]'" in line


def test_gen_pairs_from_photos_without_annotator_weights_says_where_to_get_them(tiny_base, tmp_path, monkeypatch):
    fake = types.ModuleType("controlnet_aux")  # the package there, its weights not
    fake.OpenposeDetector = type("OpenposeDetector", (), {})
    monkeypatch.setitem(sys.modules, "controlnet_aux", fake)
    (tmp_path / "annotators").mkdir()
    line = _one_error_line(_gen_pairs_with_photo_poses(tiny_base, tmp_path, "--pose-annotators", tmp_path / "annotators"),
                           tmp_path / "p")
    assert "needs body_pose_model.pth in" in line and "lllyasviel/Annotators" in line and "--pose-annotators" in line
