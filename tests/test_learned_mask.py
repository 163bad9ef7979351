"""The learned mask refiner (MaskConfig.refine "learned"; pedit.edit.learned_mask, pedit.model.mask_refiner):
its numpy network against torch's convolutions, its file's checks, and a model folder using it in the
torch editor (a folder naming a refiner it cannot run is one Error: line)."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from pedit.edit import learned_mask as lm
from pedit.edit.mask import MaskConfig
from pedit.errors import ConfigError, ModelError
from pedit.model.mask_refiner import FEATURES, check_refiners, load_refiner, refiner_files, save_refiner
from conftest import TEST_DEVICE


def _net(resolution=32, seed=0, width=4, dilations=(1, 2, 4)):
    """A random refiner as torch layers and as the file's (weight, bias, dilation) list."""
    torch.manual_seed(seed)
    convs, c = [], len(FEATURES)
    for d in dilations:
        convs.append(torch.nn.Conv2d(c, width, 3, padding=d, dilation=d))
        c = width
    convs.append(torch.nn.Conv2d(c, 1, 1))
    layers = [(m.weight.detach().numpy(), m.bias.detach().numpy(), m.dilation[0]) for m in convs]
    return convs, layers


def test_the_modules_import_no_torch():
    code = "import sys, pedit.edit.learned_mask, pedit.model.mask_refiner; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_the_numpy_network_is_torchs(tmp_path):
    convs, layers = _net()
    save_refiner(tmp_path / "r.npz", 32, layers)
    refiner = load_refiner(tmp_path / "r.npz", 32)
    x = np.random.default_rng(0).random((len(FEATURES), 32, 32)).astype(np.float32)
    t = torch.from_numpy(x)[None]
    with torch.no_grad():
        for n, conv in enumerate(convs):
            t = conv(t)
            t = torch.relu(t) if n < len(convs) - 1 else torch.sigmoid(t)
    assert np.allclose(lm.probability(refiner, x), t[0, 0].numpy(), atol=1e-5)
    assert refiner.parameters == sum(p.numel() for c in convs for p in c.parameters())


def test_features_are_what_the_edit_has():
    rng = np.random.default_rng(1)
    diff = rng.random((4, 4))
    original = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    raw = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    latent = (diff > 0.5).astype(np.float32)
    f = lm.features(diff, original, raw, latent, 3.0)
    assert f.shape == (len(FEATURES), 32, 32) and f.dtype == np.float32
    from pedit.edit.pixel_mask import colour_change, soft_prior, upsample

    assert np.allclose(f[0], upsample(soft_prior(diff, 3.0), 32), atol=1e-6)
    assert np.allclose(f[1], colour_change(raw, original) / 255, atol=1e-6)
    assert np.allclose(f[2:5], original.transpose(2, 0, 1) / 255, atol=1e-6)
    assert np.allclose(f[5:8], raw.transpose(2, 0, 1) / 255, atol=1e-6)
    assert np.array_equal(f[8], np.kron(latent, np.ones((8, 8))))  # each latent cell is 8x8 pixels


def test_extra_features_are_the_change_at_coarser_scales_and_the_position(tmp_path):
    rng = np.random.default_rng(3)
    diff, latent = rng.random((4, 4)), np.ones((4, 4))
    original = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    raw = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    names = FEATURES + ("change_r2", "change_r8", "row", "col")
    f = lm.features(diff, original, raw, latent, 3.0, names)
    assert f.shape == (len(names), 32, 32) and np.array_equal(f[:len(FEATURES)], lm.features(diff, original, raw, latent, 3.0))
    change = np.abs(raw.astype(int) - original).max(axis=2) / 255
    for k, r in ((9, 2), (10, 8)):  # the mean over the window, clipped at the border
        for y, x in ((0, 0), (5, 30), (16, 16), (31, 3)):
            assert np.isclose(f[k, y, x], change[max(y - r, 0): y + r + 1, max(x - r, 0): x + r + 1].mean(), atol=1e-6)
    assert f[11, 0, 5] == 0 and f[11, 31, 5] == 1 and np.allclose(f[12], f[11].T)
    torch.manual_seed(4)  # a file that reads them runs in the weight, and its network is torch's
    conv = torch.nn.Conv2d(len(names), 1, 3, padding=1)
    save_refiner(tmp_path / "r.npz", 32, [(conv.weight.detach().numpy(), conv.bias.detach().numpy(), 1)], names)
    refiner = load_refiner(tmp_path / "r.npz", 32)
    assert refiner.features == names
    with torch.no_grad():
        want = torch.sigmoid(conv(torch.from_numpy(f)[None]))[0, 0].numpy()
    assert np.allclose(lm.probability(refiner, f), want, atol=1e-5)
    cfg = MaskConfig(refine="learned", refiner=str(tmp_path / "r.npz"), refiner_threshold=0.5, refiner_band=0.0,
                     refiner_feather=0.0, refiner_change_below=0.0)
    assert np.array_equal(lm.learned_weight(cfg, diff, original, raw, latent), (want > 0.5).astype(np.float32))


def test_the_weight_is_the_thresholded_probability_and_zero_keeps_the_input(tmp_path):
    _, layers = _net(seed=2)
    save_refiner(tmp_path / "r.npz", 32, layers)
    rng = np.random.default_rng(2)
    diff, latent = rng.random((4, 4)), np.ones((1, 1, 4, 4))
    original = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    raw = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    cfg = MaskConfig(refine="learned", refiner=str(tmp_path / "r.npz"), refiner_threshold=0.5, refiner_band=0.0,
                     refiner_feather=0.0, refiner_change_below=0.0)
    w = lm.learned_weight(cfg, diff, original, raw, latent)
    p = lm.probability(load_refiner(tmp_path / "r.npz", 32), lm.features(diff, original, raw, latent[0, 0], 3.0))
    assert np.array_equal(w, (p > 0.5).astype(np.float32))
    from pedit.edit.mask import keep_outside

    out, weight = keep_outside(original, raw, torch.from_numpy(latent), cfg, diff)
    assert np.array_equal(weight, w)
    assert np.array_equal(out[w == 0], original[w == 0]) and np.array_equal(out[w == 1], raw[w == 1])
    raw[:16] = original[:16] + (original[:16] < 250) * 4  # the top half changed by at most 4 levels
    gated = lm.learned_weight(MaskConfig(**{**cfg.__dict__, "refiner_change_below": 16.0}), diff, original, raw, latent)
    assert (gated[:16] == 0).all()  # under change_below / 2 the input is kept
    p = lm.probability(load_refiner(tmp_path / "r.npz", 32), lm.features(diff, original, raw, latent[0, 0], 3.0))
    change = np.abs(raw.astype(int) - original).max(axis=2)
    assert np.array_equal(gated[16:], ((p > 0.5) * np.clip((change - 8) / 8, 0, 1))[16:].astype(np.float32))


def _write(path, **over):
    _, layers = _net()
    save_refiner(path, 32, layers)
    if over:
        with np.load(path) as z:
            arrays = {k: z[k] for k in z.files}
        arrays.update(over)
        with open(path, "wb") as f:
            np.savez(f, **arrays)


@pytest.mark.parametrize("over, message", [
    (None, "does not exist"),
    ({"kind": np.array("something-else")}, "kind"),
    ({"resolution": np.array(64)}, "trained for 64 px"),
    ({"features": np.array(["prior", "change"])}, "reads the features"),
    ({"features": np.array(FEATURES + ("change_r3",))}, "reads the features"),
    ({"w1": np.zeros((4, 3, 3, 3), np.float32)}, "layer 1"),
])
def test_a_refiner_pedit_cannot_run_is_refused(tmp_path, over, message):
    path = tmp_path / "r.npz"
    if over is not None:
        _write(path, **over)
    with pytest.raises(ModelError, match=message):
        load_refiner(path, 32)
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(ModelError, match="not a readable"):
        load_refiner(tmp_path / "junk.npz", 32)


def test_the_settings_name_the_refiner():
    with pytest.raises(ConfigError, match="needs \"refiner\""):
        MaskConfig(refine="learned")
    meta = {"mask": {"refiner": "a.npz"}, "mask_by_task": {"expression": {"refine": "learned", "refiner": "b.npz"}},
            "mask_by_direction": {"angry": {"refiner": "a.npz"}}}
    assert refiner_files(meta) == ["a.npz", "b.npz"]
    with pytest.raises(ModelError, match="must be a file name"):
        check_refiners({"resolution": 32, "mask": {"refine": "learned", "refiner": "../x.npz"}}, ".")
    for name in ("runtime.npz", "model.json", "unet.onnx"):  # an export's own files: copied beside them, it would clash
        with pytest.raises(ModelError, match="must be an .npz file other than runtime.npz"):
            check_refiners({"resolution": 32, "mask_by_direction": {"angry": {"refine": "learned", "refiner": name}}},
                           ".")


def _learned_model(random_model, tmp_path, name="refiner.npz", resolution=32):
    model = Path(shutil.copytree(random_model, tmp_path / "learned-model"))
    _, layers = _net(resolution=resolution, seed=3)
    save_refiner(model / name, resolution, layers)
    meta = json.loads((model / "pedit.json").read_text())
    meta["mask_by_task"] = {"expression": {"refine": "learned", "refiner": "refiner.npz", "refiner_threshold": 0.5,
                                           "refiner_band": 0.1, "refiner_feather": 0.5}}
    (model / "pedit.json").write_text(json.dumps(meta))
    return model


def test_the_editor_blends_with_the_learned_weight(random_model, tmp_path):
    from PIL import Image

    from pedit.edit.editor import Editor
    from pedit.toon.world import render

    learned = Editor.from_pretrained(_learned_model(random_model, tmp_path), device=TEST_DEVICE)
    latent = Editor.from_pretrained(random_model, device=TEST_DEVICE)
    image = Image.fromarray(render(3, size=32))
    a, b = learned.edit(image, "laughing", steps=2), latent.edit(image, "laughing", steps=2)
    assert np.array_equal(np.asarray(a.raw), np.asarray(b.raw))  # the same sampling, another blend
    options = learned.default_options("laughing")
    assert options.mask.refine == "learned" and Path(options.mask.refiner).is_file()
    weight = np.asarray(a.mask)
    original = np.asarray(image)
    assert np.array_equal(np.asarray(a.image)[weight == 0], original[weight == 0])
    assert learned.default_options("royal").mask.refine == "latent"  # costumes keep the folder's other kind


@pytest.mark.parametrize("damage, message", [("missing", "does not exist"), ("resolution", "trained for 64 px"),
                                             ("kind", "unknown-kind")])
def test_a_model_folder_naming_a_refiner_it_cannot_run_is_one_error_line(random_model, tmp_path, damage, message):
    from click.testing import CliRunner
    from PIL import Image

    from pedit.cli import cli
    from pedit.toon.world import render

    model = _learned_model(random_model, tmp_path, resolution=64 if damage == "resolution" else 32)
    if damage == "missing":
        (model / "refiner.npz").unlink()
    if damage == "kind":
        meta = json.loads((model / "pedit.json").read_text())
        meta["mask_by_task"]["expression"]["refine"] = "unknown-kind"
        (model / "pedit.json").write_text(json.dumps(meta))
    Image.fromarray(render(3, size=32)).save(tmp_path / "in.png")
    r = CliRunner().invoke(cli, ["edit", str(tmp_path / "in.png"), "-d", "laughing", "-m", str(model),
                                 "-o", str(tmp_path / "out.png"), "-q"])
    assert r.exit_code == 1 and r.stderr.count("Error:") == 1 and message in r.stderr
    assert "Traceback" not in r.stderr and not (tmp_path / "out.png").exists()


@pytest.mark.cpu_only("the runtime runs ONNX Runtime on the CPU here")
def test_the_torch_free_runtime_blends_with_the_exported_refiner(random_model, tmp_path):
    """`pedit export` carries the refiner's file; the runtime editor's weight is the learned one, and an
    export that lost the file is one Error: line."""
    from click.testing import CliRunner
    from PIL import Image

    from pedit.arrays import to_host
    from pedit.cli import cli
    from pedit.data.pairs import square_rgb
    from pedit.edit.job import run
    from pedit.export.pipeline import ExportConfig, export_model
    from pedit.export.runtime_editor import finish, load_runtime_editor
    from pedit.toon.world import render

    out = tmp_path / "export"
    export_model(ExportConfig(model=str(_learned_model(random_model, tmp_path)), output=str(out)))
    assert (out / "refiner.npz").is_file()
    editor = load_runtime_editor(out)
    [(direction, options)] = editor.plan_many(["laughing"], steps=2)
    assert options.mask.refine == "learned" and Path(options.mask.refiner).parent == out
    image = Image.fromarray(render(3, size=32))
    square = square_rgb(image, editor.resolution)
    job = editor.job([editor.runtime.conditions(square, direction)], [options])
    run([job], editor.runtime.denoise)
    done = finish(square, editor.runtime.decode(job.z_0[0]), job, 0)
    raw = np.asarray(done.raw)
    want = lm.learned_weight(options.mask, to_host(job.maps[0])[0], square, raw, to_host(job.model_masks[0]))
    assert np.array_equal(np.asarray(done.mask), np.rint(want * 255).astype(np.uint8))
    (out / "refiner.npz").unlink()
    image.save(tmp_path / "in.png")
    r = CliRunner().invoke(cli, ["edit", str(tmp_path / "in.png"), "-d", "laughing", "-m", str(out), "--backend", "onnx",
                                 "-o", str(tmp_path / "out.png"), "-q"])
    assert r.exit_code == 1 and r.stderr.count("Error:") == 1 and "refiner.npz" in r.stderr
    assert "Traceback" not in r.stderr and not (tmp_path / "out.png").exists()


def test_a_student_distilled_from_a_teacher_with_a_refiner_falls_back_to_the_pixel_kind():
    """The refiner was trained on the teacher's edits and its file stays with the teacher."""
    from pedit.train.distill import without_learned_refiner

    teacher = json.loads((Path(__file__).resolve().parents[1] / "pedit/assets/toon-model/pedit.json").read_text())
    assert teacher["mask_by_task"]["costume"]["refine"] == "learned"
    kept = without_learned_refiner(teacher)
    costume = kept["mask_by_task"]["costume"]
    assert costume["refine"] == "pixel" and not any(k.startswith("refiner") for k in costume)
    assert costume["prior_threshold"] == teacher["mask_by_task"]["costume"]["prior_threshold"]  # its pixel settings
    for task, settings in teacher["mask_by_task"].items():  # every other setting as the teacher chose it
        assert {k: v for k, v in kept["mask_by_task"][task].items() if k != "refine"} == \
            {k: v for k, v in settings.items() if k != "refine" and not k.startswith("refiner")}
    assert refiner_files(teacher) and refiner_files(kept) == []


def test_the_refiner_cache_keeps_the_recently_used_files_and_is_shared_by_threads(tmp_path, monkeypatch):
    """load_refiner's cache drops the least recently used file, not the first one read, and many threads
    loading a rotating set of files (a server's edits, more files than the cache holds) all get their own
    file's refiner, with no error."""
    from concurrent.futures import ThreadPoolExecutor

    from pedit.model import mask_refiner as mr

    monkeypatch.setattr(mr, "_CACHE", type(mr._CACHE)())
    monkeypatch.setattr(mr, "CACHE_SIZE", 3)
    paths = []
    for i in range(5):
        save_refiner(tmp_path / f"r{i}.npz", 32, _net(seed=i)[1])
        paths.append(tmp_path / f"r{i}.npz")
    first = load_refiner(paths[0], 32)
    load_refiner(paths[1], 32)
    load_refiner(paths[2], 32)
    assert load_refiner(paths[0], 32) is first  # used again: now the most recent
    load_refiner(paths[3], 32)  # evicts r1, the least recently used
    assert load_refiner(paths[0], 32) is first
    assert len(mr._CACHE) == 3 and not any(str(paths[1].resolve()) == k[0] for k in mr._CACHE)

    expected = [_net(seed=i)[1][0][0] for i in range(5)]

    def load(n):
        i = n % 5
        return i, load_refiner(paths[i], 32)

    with ThreadPoolExecutor(8) as pool:
        for i, refiner in pool.map(load, range(400)):
            np.testing.assert_array_equal(refiner.layers[0][0], expected[i])
    assert len(mr._CACHE) <= 3
