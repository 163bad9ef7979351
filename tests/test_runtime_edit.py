"""`pedit edit --backend onnx` through the torch-free runtime (pedit.export.runtime_editor): its promise
and its errors.

The promise (docs/runtime.md, "Noise"): the runtime draws numpy noise from the seed, so it gives the
same bytes for the same seed in every process (the CLI and the server's Python model call the same
stages), and a different sample than `--backend torch`. Through the command line, the bundled models
(`-m toon`, the teacher, and `-m toon-fast`, its distilled student) edit without importing torch,
diffusers or transformers, on an exported folder and on the cache export from the second run on.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from pedit.cli import cli

pytestmark = pytest.mark.cpu_only("the runtime runs ONNX Runtime on the CPU here")

ROOT = Path(__file__).resolve().parents[1]
TOON = ROOT / "examples/toon.png"
HEAVY = ("torch", "diffusers", "transformers")


@pytest.fixture(scope="module")
def exports(tmp_path_factory) -> dict[str, Path]:
    """The two bundled models exported with `pedit export` (all five graphs and the runtime's files)."""
    from pedit.export.pipeline import ExportConfig, export_model

    out = {}
    for name in ("toon", "toon-fast"):
        out[name] = tmp_path_factory.mktemp(name)
        export_model(ExportConfig(model=name, output=str(out[name])))
    return out


def _digest(image) -> str:
    return hashlib.sha256(np.asarray(image).tobytes()).hexdigest()


def _run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], prog_name="pedit")


@pytest.mark.parametrize("model", ["toon", "toon-fast"])
def test_the_runtime_edits_the_same_bytes_for_a_seed_and_another_sample_for_another(exports, model):
    from pedit.export.runtime_editor import load_runtime_editor

    editor = load_runtime_editor(exports[model])
    photo = Image.open(TOON)
    first, again = editor.edit(photo, "laughing", seed=0), load_runtime_editor(exports[model]).edit(photo, "laughing", seed=0)
    assert _digest(first.image) == _digest(again.image) and np.array_equal(first.mask_latent, again.mask_latent)
    other = editor.edit(photo, "laughing", seed=1)
    assert _digest(other.image) != _digest(first.image)
    original = np.asarray(photo.convert("RGB").resize((128, 128), Image.LANCZOS))
    out, weight = np.asarray(first.image), np.asarray(first.mask)
    assert first.mask_latent.sum() > 0 and (out != original).any()  # it edits...
    assert np.array_equal(out[weight == 0], original[weight == 0])  # ...and keeps every pixel outside its mask


def test_the_runtime_edit_moves_toward_the_direction_like_the_torch_edit(exports):
    """A different sample than torch's, but the same edit: where the torch editor changes the photo
    the runtime does too (their masks overlap far beyond chance)."""
    from pedit.edit.editor import Editor
    from pedit.export.runtime_editor import load_runtime_editor

    photo = Image.open(TOON)
    ours = load_runtime_editor(exports["toon"]).edit(photo, "laughing", seed=0)
    torch_edit = Editor.from_pretrained(None, device="cpu").edit(photo, "laughing", seed=0)
    a, b = np.asarray(ours.mask) > 0, np.asarray(torch_edit.mask) > 0
    assert (a & b).sum() / (a | b).sum() > 0.5
    assert _digest(ours.image) != _digest(torch_edit.image)  # the runtime draws its own noise


def test_stages_by_hand_give_the_editors_bytes(exports):
    """What a server's Python model does (conditions, job, run, decode, finish) gives the bytes of the
    RuntimeEditor that `pedit edit --backend onnx` edits with."""
    from pedit.data.pairs import square_rgb
    from pedit.edit.job import run
    from pedit.export.runtime import Runtime
    from pedit.export.runtime_editor import RuntimeEditor, finish

    editor = RuntimeEditor(Runtime.load(exports["toon"]))
    [(direction, options)] = editor.plan_many(["laughing"])
    square = square_rgb(Image.open(TOON), editor.resolution)
    job = editor.job([editor.runtime.conditions(square, direction)], [options])
    run([job], editor.runtime.denoise)
    done = finish(square, editor.runtime.decode(job.z_0[0]), job, 0, editor.reconstruction(job))
    assert _digest(done.image) == _digest(editor.edit(Image.open(TOON), "laughing").image)


@pytest.mark.parametrize("model", ["toon", "toon-fast"])
@pytest.mark.parametrize("max_rows", [None, 3])
def test_jobs_interleaved_in_one_run_give_their_bytes_alone(exports, model, max_rows):
    """Photos' edits at different steps share U-Net calls (a server's batching), or have a tick split
    into calls of at most `max_rows` rows (an engine's profile), and still give the bytes each gives
    alone: ONNX Runtime computes a row the same whatever else is in its call, so the deployed paths are
    exact where eager torch is exact only up to rounding (tests/test_job.py). An expression and a
    costume, so both of a bundled model's mask refiners blend."""
    from pedit.data.pairs import square_rgb
    from pedit.edit.job import run
    from pedit.export.runtime_editor import finish, load_runtime_editor
    from pedit.toon.world import render

    editor = load_runtime_editor(exports[model])
    squares = [square_rgb(Image.open(TOON), 128), render(5, size=128)]
    directions = ["laughing", "royal"]

    def job(i):
        [(d, o)] = editor.plan_many([directions[i]], seed=i)
        return editor.job([editor.runtime.conditions(squares[i], d)], [o])

    alone = []
    for i in range(2):
        j = job(i)
        run([j], editor.runtime.denoise)
        alone.append(finish(squares[i], editor.runtime.decode(j.z_0[0]), j, 0, editor.reconstruction(j)))
    first, second = job(0), job(1)
    first.advance(editor.runtime.denoise(*_rows(first)))  # the first job one tick ahead
    calls, mixed = [], []

    def counted(z_in, t, context):
        calls.append(len(t))
        mixed.append(len(set(t.tolist())) > 1)  # rows of both jobs, at different steps, in one call
        return editor.runtime.denoise(z_in, t, context)

    run([first, second], counted, max_rows=max_rows)
    assert any(mixed) and max(calls) <= (max_rows or max(calls))
    for i, j in enumerate((first, second)):
        assert _digest(finish(squares[i], editor.runtime.decode(j.z_0[0]), j, 0, editor.reconstruction(j)).image) == \
            _digest(alone[i].image)


@pytest.mark.parametrize("model", ["toon", "toon-fast"])
@pytest.mark.parametrize("batch_steps", [False, True])
def test_directions_of_two_samplers_give_their_bytes_alone(exports, model, batch_steps):
    """An expression and a costume at two samplers (the costumes given one more step, the folder's
    "sampling_by_task" set in memory), edited together: one job per sampler, run one after another or
    ticked together (batch_steps); each direction gives the bytes it gives alone."""
    from pedit.export.runtime_editor import load_runtime_editor
    from pedit.model.sampling_settings import sampling_for

    editor = load_runtime_editor(exports[model])
    editor.meta["sampling_by_task"] = {"costume": {"steps": sampling_for(editor.meta, "expression").steps + 1}}
    assert editor.default_options("royal").steps == editor.default_options("laughing").steps + 1
    photo = Image.open(TOON)
    names = ["laughing", "royal", "angry"]
    together = editor.edit_many(photo, names, batch_steps=batch_steps)
    for d, many in zip(names, together):
        assert _digest(editor.edit(photo, d).image) == _digest(many.image)


def _rows(job):
    rows = job.rows()
    return rows.z_in, rows.t, rows.context


# --- no torch, through the command line ------------------------------------------------------------


def _edit_process(args: list[str], env_extra: dict, importtime: bool = False):
    """`pedit edit ARGS` in a fresh interpreter; (returncode, heavy modules it imported, stderr)."""
    code = ("import sys\nfrom pedit.cli import cli\ntry:\n    cli.main(args=sys.argv[1:], prog_name='pedit')\n"
            f"except SystemExit as e:\n    code = e.code\nprint('MODULES', sorted(m for m in {HEAVY!r} if m in sys.modules))\n"
            "sys.exit(code)")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", **env_extra}
    out = subprocess.run([sys.executable, *(["-X", "importtime"] if importtime else []), "-c", code, "edit", *args],
                         capture_output=True, text=True, env=env, cwd=ROOT)
    modules = json.loads(out.stdout.split("MODULES ")[-1].strip().replace("'", '"'))
    return out.returncode, modules, out.stderr


@pytest.mark.parametrize("model", ["toon", "toon-fast"])
def test_edit_on_an_exported_folder_imports_no_torch(exports, model, tmp_path):
    rc, modules, err = _edit_process([str(TOON), "-d", "laughing", "-m", str(exports[model]), "--backend", "onnx",
                                      "-o", str(tmp_path / "out.png"), "-q"], {}, importtime=True)
    assert rc == 0, err
    assert modules == [] and (tmp_path / "out.png").is_file()
    imported = {line.split("|")[-1].strip() for line in err.splitlines() if line.startswith("import time:")}
    assert {"onnxruntime", "tokenizers", "pedit.export.runtime"} <= imported  # -X importtime saw the run...
    assert not imported & set(HEAVY)  # ...and no torch, diffusers or transformers in it


def test_the_cache_export_edits_without_torch_from_the_second_run_on(tmp_path):
    env = {"PEDIT_CACHE": str(tmp_path / "cache")}
    args = [str(TOON), "-d", "laughing", "--backend", "onnx", "-q", "--overwrite"]
    rc, modules, err = _edit_process([*args, "-o", str(tmp_path / "first.png")], env)
    assert rc == 0, err
    assert modules == sorted(HEAVY)  # the first run exports the model with torch
    rc, modules, err = _edit_process([*args, "-o", str(tmp_path / "second.png")], env)
    assert rc == 0, err
    assert modules == []
    assert (tmp_path / "first.png").read_bytes() == (tmp_path / "second.png").read_bytes()


# --- bad input: one Error line each --------------------------------------------------------------------


def test_a_damaged_exported_folder_is_one_error_line(exports, tmp_path):
    folder = Path(shutil.copytree(exports["toon"], tmp_path / "export", copy_function=shutil.copy2))
    (folder / "image_projector.onnx").write_bytes(b"not a graph")
    result = _run("edit", TOON, "-d", "laughing", "-m", folder, "--backend", "onnx", "-o", tmp_path / "out.png")
    model = json.loads((folder / "manifest.json").read_text())["model"]
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert result.stderr == (f"Error: Exported folder {folder} is damaged: {folder / 'image_projector.onnx'} differs "
                             f"from the one exported (its sha256 is not the manifest's); export it again with "
                             f"`pedit export -m {model} -o {folder} --force`.\n")
    assert not (tmp_path / "out.png").exists()


def test_a_direction_the_export_does_not_hold_is_one_error_line(exports, tmp_path):
    result = _run("edit", TOON, "-d", "winking", "-m", exports["toon"], "--backend", "onnx", "-o", tmp_path / "o.png")
    assert result.exit_code == 1
    assert result.stderr == ("Error: Unknown direction 'winking'. Available: angry, crying, flower, laughing, royal, "
                             "santa, sheep, shocked.\n")


def test_a_students_scales_outside_its_range_are_one_error_line(exports, tmp_path):
    meta = json.loads((ROOT / "pedit/assets/toon-model-fast/pedit.json").read_text())
    lo, hi = meta["distilled"]["scale_range"]["s_p"]
    result = _run("edit", TOON, "-d", "laughing", "-m", exports["toon-fast"], "--backend", "onnx", "--s-p", hi + 1,
                  "-o", tmp_path / "o.png")
    assert result.exit_code == 1 and not (tmp_path / "o.png").exists()
    # the bundled student's note, then the one Error line
    assert result.stderr.splitlines()[-1] + "\n" == (f"Error: s_p = {hi + 1:g} is outside the range this distilled model was trained for "
                             f"({lo:g} to {hi:g}); pass a value inside it, or edit with its teacher model.\n")


def test_an_exported_folder_with_the_torch_backend_or_another_scheduler(exports, tmp_path):
    result = _run("edit", TOON, "-d", "laughing", "-m", exports["toon"], "-o", tmp_path / "o.png")
    assert result.exit_code == 1
    assert result.stderr == (f"Error: -m {exports['toon']} is an exported folder (`pedit export`): it edits with "
                             "--backend onnx or trt, without torch; for another backend pass the model folder it "
                             "was exported from.\n")
    result = _run("edit", TOON, "-d", "laughing", "-m", exports["toon"], "--backend", "onnx", "--scheduler", "dpm",
                  "-o", tmp_path / "o.png")
    assert result.exit_code == 1  # after the bundled model's note, one Error line
    assert result.stderr.splitlines()[-1] + "\n" == ("Error: The torch-free runtime samples with ddim only, not 'dpm'; pass --scheduler ddim, "
                             "or edit with --backend torch.\n")


def test_trt_without_the_tensorrt_provider_is_one_error_line_before_any_export(tmp_path, monkeypatch):
    monkeypatch.setenv("PEDIT_CACHE", str(tmp_path / "cache"))
    result = _run("edit", TOON, "-d", "laughing", "--backend", "trt", "-o", tmp_path / "o.png")
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert re.fullmatch(r"Error: --backend trt runs the exported graphs through ONNX Runtime's TensorRT provider, "
                        r"which this onnxruntime does not have \(it offers .*\); install onnxruntime-gpu with TensorRT "
                        r"on an NVIDIA machine, or use --backend onnx\.\n", result.stderr)
    assert not (tmp_path / "cache").exists()  # nothing was exported first


def test_a_runtime_only_install_without_an_export_says_what_to_do(tmp_path, monkeypatch):
    import importlib.util

    from pedit.errors import MissingPackageError
    from pedit.export.runtime_folder import cache_folder, export_for
    from pedit.model.paths import bundled_model_path

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "torch" else real(name, *a))
    monkeypatch.setenv("PEDIT_CACHE", str(tmp_path))
    with pytest.raises(MissingPackageError) as e:
        export_for(None)
    assert str(e.value) == (f"{cache_folder(bundled_model_path())} holds no current export of {bundled_model_path()}, "
                            "and exporting one needs torch, which this install leaves out: pass -m a folder "
                            "`pedit export` wrote, or pip install 'pedit[torch]'.")
    assert not (tmp_path / "engines").exists()


def test_sessions_from_the_optimised_graph_cache_edit_the_same_bytes(exports, tmp_path, monkeypatch):
    import onnxruntime as ort

    from pedit.export.runtime_editor import load_runtime_editor

    monkeypatch.setenv("PEDIT_CACHE", str(tmp_path))
    loaded = []
    real = ort.InferenceSession
    monkeypatch.setattr(ort, "InferenceSession", lambda path, *a, **k: loaded.append(Path(path).suffix) or real(path, *a, **k))
    photo = Image.open(TOON)
    first = load_runtime_editor(exports["toon"]).edit(photo, "laughing")  # from the graphs, saving their optimised form
    saved = sorted((tmp_path / "ort").iterdir())
    assert len(saved) == 5 and loaded == [".onnx"] * 5
    loaded.clear()
    again = load_runtime_editor(exports["toon"]).edit(photo, "laughing")
    assert loaded == [".ort"] * 5 and _digest(again.image) == _digest(first.image)
    saved[0].write_bytes(b"damaged")  # a damaged copy: the graph is loaded instead and the copy made again
    loaded.clear()
    third = load_runtime_editor(exports["toon"]).edit(photo, "laughing")
    assert sorted(loaded) == [".onnx"] + [".ort"] * 5 and _digest(third.image) == _digest(first.image)
    assert saved[0].stat().st_size > 1000
