"""The torch-free runtime's exported folder (pedit.export.runtime_folder, runtime_files) and its stages.

Oracles: transformers' CLIPTokenizer for the exported tokenizer's ids, the torch editor's own
conditions and decoder for the graphs the runtime runs, torch's F.interpolate for the stored
CLIP resize. Bad folders: one exact `ModelError` each, raised before any session loads.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pedit.errors import ModelError

pytestmark = pytest.mark.cpu_only("the runtime runs ONNX Runtime on the CPU here")

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "diffusers", "transformers")


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> Path:
    """The bundled toon model exported with `pedit export` (all five graphs and the runtime's files)."""
    from pedit.export.pipeline import ExportConfig, export_model

    out = tmp_path_factory.mktemp("toon-export")
    export_model(ExportConfig(output=str(out)))
    return out


@pytest.fixture
def copy_of(exported, tmp_path):
    def make() -> Path:
        dst = tmp_path / "export"
        shutil.copytree(exported, dst, copy_function=shutil.copy2)
        return dst
    return make


def test_export_writes_the_runtime_files_and_records_them(exported):
    from pedit.export.pipeline import read_manifest

    runtime = read_manifest(exported)["runtime"]
    # the bundled model's learned mask refiners travel with it: each task's "refiner" ("mask_by_task") and the
    # wide ones flower, royal and angry blend with ("mask_by_direction")
    assert set(runtime["files"]) == {"tokenizer.json", "runtime.npz", "model.json", "mask_refiner.npz",
                                     "mask_refiner_expression.npz", "mask_refiner_costume_wide.npz",
                                     "mask_refiner_expression_wide.npz"}
    for name, rec in runtime["files"].items():
        import hashlib

        assert rec["sha256"] == hashlib.sha256((exported / name).read_bytes()).hexdigest()
    described = json.loads((exported / "model.json").read_text())
    bundled = json.loads((ROOT / "pedit/assets/toon-model/pedit.json").read_text())
    assert described["meta"] == bundled and described["dims"]["resolution"] == 128


def test_the_stored_schedule_is_the_torch_paths_table(exported):
    from pedit.edit.sampler import make_scheduler
    from pedit.export.runtime_folder import read_export
    from pedit.model.loading import read_model_folder

    folder, _ = read_model_folder(None)
    config = json.loads((folder / "scheduler/scheduler_config.json").read_text())
    table = make_scheduler("ddim", config).alphas_cumprod.numpy()
    stored = read_export(exported).arrays["alphas_cumprod"]
    assert stored.dtype == np.float32 and np.array_equal(stored, table)  # bit for bit


def test_the_stored_clip_resize_is_torchs_antialiased_bicubic():
    import torch
    import torch.nn.functional as F

    from pedit.export.runtime_files import clip_resize_matrix

    a = torch.from_numpy(clip_resize_matrix(128, 64))
    x = torch.rand(2, 3, 128, 128, generator=torch.Generator().manual_seed(0)) * 2 - 1
    want = F.interpolate(x, size=(64, 64), mode="bicubic", antialias=True, align_corners=False)
    assert torch.allclose(a @ x @ a.T, want, atol=1e-5)


@pytest.mark.parametrize("prompt", ["a cartoon person, laughing expression", "", "A  Cartoon PERSON!! laughing?",
                                    "a person, sheep costume " * 30])  # the last one is truncated at 77
def test_exported_tokenizer_gives_clip_tokenizers_ids(exported, prompt):
    from tokenizers import Tokenizer
    from transformers import CLIPTokenizer

    oracle = CLIPTokenizer.from_pretrained(ROOT / "pedit/assets/toon-model/tokenizer", local_files_only=True,
                                           model_max_length=77)
    want = oracle([prompt], padding="max_length", max_length=77, truncation=True).input_ids[0]
    assert Tokenizer.from_file(str(exported / "tokenizer.json")).encode(prompt).ids == want


def test_runtime_conditions_and_decoder_match_the_torch_editor(exported):
    import torch
    from PIL import Image

    from pedit.data.pairs import square_rgb
    from pedit.edit.editor import Editor, tensor_to_uint8, uint8_to_tensor
    from pedit.export.runtime import Runtime

    rt = Runtime.load(exported)
    square = square_rgb(Image.open(ROOT / "examples/toon.png"), rt.resolution)
    got = rt.conditions(square, "laughing")
    editor = Editor.from_pretrained(None, device="cpu")
    want = editor.conditions(uint8_to_tensor(square), editor.direction("laughing"))
    for field in ("c_s", "c_im", "c_p_b", "c_p_a", "c_p_null"):
        a, b = getattr(got, field), getattr(want, field).numpy()
        assert a.shape == b.shape and np.abs(a - b).max() < 1e-4 * max(1.0, np.abs(b).max()), field
    assert not np.array_equal(got.c_p_b, got.c_p_a)  # the two prompts differ, and so do their embeddings
    z = np.random.default_rng(0).standard_normal((1, 4, 16, 16)).astype(np.float32)
    diff = rt.decode(z).astype(int) - tensor_to_uint8(editor.model.parts.decode(torch.from_numpy(z))).astype(int)
    assert np.abs(diff).max() <= 1  # float rounding may move a byte by one level


def test_noise_is_numpys_pcg64_stream_from_the_seed():
    from pedit.export.runtime import noise

    draw = noise(7)
    first, second = draw((2, 4, 3, 3)), draw((1, 4, 3, 3))
    ref = np.random.Generator(np.random.PCG64(7))
    assert first.dtype == np.float32 and np.array_equal(first, ref.standard_normal((2, 4, 3, 3), dtype=np.float32))
    assert np.array_equal(second, ref.standard_normal((1, 4, 3, 3), dtype=np.float32))  # the stream continues
    assert not np.array_equal(noise(8)((2, 4, 3, 3)), first)


# --- bad exported folders: one ModelError each ---------------------------------------------------------


def _message(folder, backend="onnx") -> str:
    from pedit.export.runtime_folder import read_export

    with pytest.raises(ModelError) as e:
        read_export(folder, backend)
    return str(e.value)


def test_a_folder_without_manifest_is_not_an_export(tmp_path):
    assert _message(tmp_path) == (f"{tmp_path} is not a `pedit export` folder (no readable manifest.json); write one "
                                  f"with `pedit export -m MODEL -o {tmp_path}`.")
    assert _message(tmp_path / "nope").startswith(f"Exported folder {tmp_path / 'nope'} does not exist")


def test_a_missing_graph_is_named(copy_of):
    folder = copy_of()
    (folder / "vae_decoder.onnx").unlink()
    model = json.loads((folder / "manifest.json").read_text())["model"]
    assert _message(folder) == (f"Exported folder {folder} is damaged: {folder / 'vae_decoder.onnx'} is missing; "
                                f"export it again with `pedit export -m {model} -o {folder} --force`.")


def test_an_altered_graph_is_caught_by_its_hash(copy_of):
    folder = copy_of()
    graph = folder / "unet.onnx"
    data = bytearray(graph.read_bytes())
    data[-100] ^= 0xFF  # one byte of the weights
    graph.write_bytes(bytes(data))
    model = json.loads((folder / "manifest.json").read_text())["model"]
    assert _message(folder) == (f"Exported folder {folder} is damaged: {graph} differs from the one exported (its "
                                f"sha256 is not the manifest's); export it again with `pedit export -m {model} -o "
                                f"{folder} --force`.")


def test_an_altered_runtime_file_is_caught(copy_of):
    folder = copy_of()
    path = folder / "model.json"
    path.write_text(path.read_text().replace("laughing", "giggling"))  # a direction renamed by hand
    assert "model.json differs from the one exported" in _message(folder)


def test_an_export_without_the_runtime_files_or_a_graph(copy_of):
    folder = copy_of()
    manifest = json.loads((folder / "manifest.json").read_text())
    model = manifest["model"]
    del manifest["networks"]["text_encoder"]
    (folder / "manifest.json").write_text(json.dumps(manifest))
    assert _message(folder) == (f"{folder} holds no text_encoder graph; the runtime needs all five (unet, "
                                f"image_projector, text_encoder, vae_encoder, vae_decoder): export it again with "
                                f"`pedit export -m {model} -o {folder} --force`.")
    del manifest["runtime"]
    (folder / "manifest.json").write_text(json.dumps(manifest))
    assert _message(folder) == (f"{folder} was exported without the runtime's files (tokenizer.json, runtime.npz, "
                                f"model.json: an older pedit, or not all five networks); export it again with "
                                f"`pedit export -m {model} -o {folder} --force`.")


# --- no torch ----------------------------------------------------------------------------------------


def _modules_after(code: str, env_extra: dict | None = None) -> list[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), **(env_extra or {})}
    out = subprocess.run([sys.executable, "-c", code + "\nimport sys\nprint(sorted(m for m in "
                          f"{HEAVY!r} if m in sys.modules))"], capture_output=True, text=True, env=env, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1].replace("'", '"'))


def test_loading_a_runtime_and_its_stages_import_no_torch(exported):
    code = (f"from pedit.export.runtime import Runtime\nimport numpy as np\nrt = Runtime.load({str(exported)!r})\n"
            "sq = np.zeros((rt.resolution, rt.resolution, 3), np.uint8)\nc = rt.conditions(sq, 'laughing')\n"
            "rt.decode(c.c_s)")
    assert _modules_after(code) == []


def test_the_cache_export_imports_no_torch_from_the_second_run_on(tmp_path):
    code = "from pedit.export.runtime_folder import export_for\nexport_for(None)"
    env = {"PEDIT_CACHE": str(tmp_path)}
    assert _modules_after(code, env) == sorted(HEAVY)  # the first run exports with torch
    assert _modules_after(code, env) == []


def test_model_json_naming_an_unknown_direction_in_its_mask_settings_is_refused(copy_of):
    """The exported description is checked as the torch loader checks pedit.json: a "mask_by_direction" entry for
    a direction the model does not have (misspelled: its settings would silently never apply) is one ModelError."""
    from pedit.export.runtime_folder import _model_json

    folder = copy_of()
    path = folder / "model.json"
    data = json.loads(path.read_text())
    data["meta"].setdefault("mask_by_direction", {})["giggling"] = {"refiner_threshold": 0.5}
    path.write_text(json.dumps(data))
    with pytest.raises(ModelError, match="giggling"):
        _model_json(folder)
