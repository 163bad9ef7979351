"""The CPU cold-start path of `pedit edit` (docs/deployment.md, "CPU cold start") changes no result.

Two speed-ups are pinned here against the code they replace: the light DDIM/DDPM schedulers
(pedit.edit.schedules) against diffusers' own classes, and the TorchScript cache of a model folder
(pedit.model.traced) against the eager model — same bytes out, the same refusals, a new key when
anything it was made from changes, and no diffusers or transformers import in a cached process.
Timings are benchmarks (docs/deployment.md), never asserted here.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from pedit.cli import cli
from pedit.data.directions import Direction
from pedit.edit import editor as editor_module
from pedit.edit.editor import Editor
from pedit.edit.schedules import LightDDIM, LightDDPMNoise, ddim_scheduler, noise_scheduler
from pedit.errors import OutputError, UnsafeModelError
from pedit.model import traced

pytestmark = pytest.mark.cpu_only("the cold-start path and its TorchScript cache are the CPU's (Editor.from_pretrained cache=True)")

ROOT = Path(__file__).resolve().parents[1]
ENTRY = ("model.pt", "prompts.pt", "scheduler_config.json")  # a TorchScript cache entry's files
SD_CONFIG = {"num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
             "clip_sample": False, "set_alpha_to_one": False, "steps_offset": 1, "prediction_type": "epsilon",
             "timestep_spacing": "leading", "trained_betas": None, "rescale_betas_zero_snr": False}


# --- light schedulers vs diffusers -----------------------------------------------------------------


@pytest.mark.parametrize("changes", [
    {},  # the bundled model's schedule (Stable Diffusion's)
    {"beta_schedule": "linear", "beta_start": 0.0001, "beta_end": 0.02, "steps_offset": 0},
    {"timestep_spacing": "trailing", "set_alpha_to_one": True},
    {"timestep_spacing": "linspace", "num_train_timesteps": 500},
])
@pytest.mark.parametrize("steps", [20, 7])
def test_light_ddim_is_bit_identical_to_diffusers(changes, steps):
    from diffusers import DDIMScheduler

    config = {**SD_CONFIG, **changes}
    light, ref = ddim_scheduler(config), DDIMScheduler.from_config(config)
    assert isinstance(light, LightDDIM)
    light.set_timesteps(steps)
    ref.set_timesteps(steps)
    assert torch.equal(light.timesteps, ref.timesteps)
    gen = torch.Generator().manual_seed(steps)
    z_light = z_ref = torch.randn((2, 4, 8, 8), generator=gen)
    for t in ref.timesteps:
        eps = torch.randn((2, 4, 8, 8), generator=gen)  # the same eps into both: only the step rule differs
        z_light = light.step(eps, t, light.scale_model_input(z_light, t)).prev_sample
        z_ref = ref.step(eps, t, ref.scale_model_input(z_ref, t)).prev_sample
        assert torch.equal(z_light, z_ref), f"step at t={int(t)}"
    assert light.init_noise_sigma == ref.init_noise_sigma


@pytest.mark.parametrize("beta_schedule", ["scaled_linear", "linear"])
def test_light_noise_is_bit_identical_to_diffusers_ddpm(beta_schedule):
    from diffusers import DDPMScheduler

    config = {**SD_CONFIG, "beta_schedule": beta_schedule, "clip_sample": True}  # clip_sample: irrelevant to noising
    light, ref = noise_scheduler(config), DDPMScheduler.from_config(config)
    assert isinstance(light, LightDDPMNoise)
    gen = torch.Generator().manual_seed(1)
    x, noise = torch.randn((6, 4, 8, 8), generator=gen), torch.randn((6, 4, 8, 8), generator=gen)
    t = torch.tensor([0, 1, 249, 499, 500, 999])
    assert torch.equal(light.add_noise(x, noise, t), ref.add_noise(x, noise, t))
    assert light.config.num_train_timesteps == ref.config.num_train_timesteps


def test_schedules_the_light_classes_do_not_cover_come_from_diffusers():
    from diffusers import DDIMScheduler, DDPMScheduler

    assert isinstance(ddim_scheduler({**SD_CONFIG, "prediction_type": "v_prediction"}), DDIMScheduler)
    assert isinstance(ddim_scheduler({**SD_CONFIG, "clip_sample": True}), DDIMScheduler)
    assert isinstance(ddim_scheduler({**SD_CONFIG, "rescale_betas_zero_snr": True}), DDIMScheduler)
    assert isinstance(noise_scheduler({**SD_CONFIG, "beta_schedule": "squaredcos_cap_v2"}), DDPMScheduler)


def test_an_edit_with_the_light_schedulers_equals_one_with_diffusers(random_model, monkeypatch):
    """The unmodified path (diffusers' classes) and the light one give the same bytes."""
    from diffusers import DDIMScheduler, DDPMScheduler

    editor = Editor.from_pretrained(random_model, device="cpu")
    image = _portrait()
    light = editor.edit(image, "laughing", seed=3, steps=4)
    monkeypatch.setattr(editor_module, "make_noise_scheduler", DDPMScheduler.from_config)
    monkeypatch.setattr(editor_module, "make_scheduler", lambda name, config: DDIMScheduler.from_config(config))
    ref = editor.edit(image, "laughing", seed=3, steps=4)
    assert np.array_equal(np.asarray(light.raw), np.asarray(ref.raw))
    assert np.array_equal(np.asarray(light.image), np.asarray(ref.image))
    assert torch.equal(light.mask_latent, ref.mask_latent)


# --- the TorchScript cache -------------------------------------------------------------------------


def _portrait(size: int = 32) -> Image.Image:
    from pedit.toon.world import render

    return Image.fromarray(render(3, size=size))


@pytest.fixture
def cache_root(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("PEDIT_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "traced"


def _same(a, b) -> None:
    assert np.array_equal(np.asarray(a.image), np.asarray(b.image))
    assert np.array_equal(np.asarray(a.mask), np.asarray(b.mask))
    assert np.array_equal(np.asarray(a.raw), np.asarray(b.raw))


def test_cached_editor_gives_the_eager_bytes(random_model, cache_root):
    eager = Editor.from_pretrained(random_model, device="cpu")
    built = Editor.from_pretrained(random_model, device="cpu", cache=True)
    assert built.cache_status.startswith("wrote") and not built.cache_failed
    cached = Editor.from_pretrained(random_model, device="cpu", cache=True)
    assert cached.cache_status.startswith("loaded")
    assert isinstance(cached.model, traced.TracedModel)  # really the TorchScript model, not a reload
    image = _portrait()
    cases = [dict(seed=0, steps=3), dict(seed=5, steps=2, use_mask=False), dict(seed=1, steps=3, scheduler="dpm"),
             dict(seed=2, steps=2, scheduler="euler")]  # euler: fractional timesteps take the eager model
    for kw in cases:
        _same(cached.edit(image, "royal", **kw), eager.edit(image, "royal", **kw))
    # a mask batch of another size than the traced one (5 rows): 7 draws → 35 rows
    options = eager.default_options()
    from dataclasses import replace

    options = replace(options, mask=replace(options.mask, n_noise=7), steps=2)
    _same(cached.edit(image, "angry", options), eager.edit(image, "angry", options))


def test_prompt_outside_the_cache_is_encoded_by_the_text_encoder(random_model, cache_root):
    Editor.from_pretrained(random_model, device="cpu", cache=True)
    cached = Editor.from_pretrained(random_model, device="cpu", cache=True)
    eager = Editor.from_pretrained(random_model, device="cpu")
    custom = Direction("wizard", "custom", "a woman", "a woman dressed as a wizard", "the same woman")
    assert custom.p_b not in cached.model.parts._prompts
    _same(cached.edit(_portrait(), custom, seed=4, steps=2), eager.edit(_portrait(), custom, seed=4, steps=2))


def test_key_follows_content_not_location(random_model, tmp_path):
    copy = Path(shutil.copytree(random_model, tmp_path / "copy"))
    key = traced.model_key(random_model)
    assert traced.model_key(copy) == key
    weights = next((copy / "unet").glob("*.safetensors"))
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1  # one bit of one weight
    weights.write_bytes(bytes(data))
    assert traced.model_key(copy) != key
    meta = json.loads((copy / "pedit.json").read_text())
    shutil.copy(random_model / "unet" / weights.name, weights)
    assert traced.model_key(copy) == key
    meta["directions"][0]["p_b"] += " (changed)"  # a prompt the cache holds
    (copy / "pedit.json").write_text(json.dumps(meta))
    assert traced.model_key(copy) != key


def test_key_reads_only_changed_files_again(random_model, tmp_path, cache_root, monkeypatch):
    import pedit.cache

    copy = Path(shutil.copytree(random_model, tmp_path / "copy"))
    read = []
    real = pedit.cache.file_sha256
    monkeypatch.setattr(pedit.cache, "file_sha256", lambda p: read.append(p.name) or real(p))
    key = traced.model_key(copy)
    n_files = len(read)
    assert n_files > 5
    read.clear()
    assert traced.model_key(copy) == key and len(read) == n_files  # files written just now: not trusted yet
    monkeypatch.setattr(pedit.cache, "RACY_SECONDS", -1.0)  # as if they had been written long ago
    traced.model_key(copy)
    assert (traced.cache_dir().parent / "hashes").is_dir()
    read.clear()
    assert traced.model_key(copy) == key and read == []  # a new process: nothing read again
    (copy / "pedit.json").write_text((copy / "pedit.json").read_text() + " ")
    assert traced.model_key(copy) != key and read == ["pedit.json"]

    def unwritable(*args, **kwargs):
        raise OutputError("Cannot write into folder: permission denied.")

    import pedit.files

    monkeypatch.setattr(pedit.files, "write_text_atomic", unwritable)  # a read-only cache costs time, not the key
    (copy / "pedit.json").write_text((copy / "pedit.json").read_text().rstrip(" "))
    assert traced.model_key(copy) == key


def test_pickle_weights_are_refused_with_a_cache_too(random_model, tmp_path, cache_root):
    model = Path(shutil.copytree(random_model, tmp_path / "pickled"))
    from safetensors.torch import load_file

    proj = model / "image_projector"
    weights = next(proj.glob("*.safetensors"))
    torch.save(load_file(weights), proj / "diffusion_pytorch_model.bin")
    weights.unlink()
    built = Editor.from_pretrained(model, device="cpu", allow_pickle=True, cache=True)
    assert built.cache_status.startswith("wrote")
    with pytest.raises(UnsafeModelError, match="pickle"):
        Editor.from_pretrained(model, device="cpu", cache=True)  # the cache exists, the rule still holds


@pytest.mark.parametrize("broken", ["model.pt", "prompts.pt"])
def test_unreadable_cache_is_rebuilt(random_model, cache_root, broken):
    Editor.from_pretrained(random_model, device="cpu", cache=True)
    folder = cache_root / traced.model_key(random_model)
    (folder / broken).write_bytes(b"not what was written")
    again = Editor.from_pretrained(random_model, device="cpu", cache=True)
    assert again.cache_status.startswith("wrote")
    assert Editor.from_pretrained(random_model, device="cpu", cache=True).cache_status.startswith("loaded")


def test_a_trace_that_differs_is_not_cached_and_the_edit_goes_on(random_model, cache_root, monkeypatch, tmp_path):
    real_trace = torch.jit.trace_module

    def off_by_a_bit(module, inputs, **kw):
        other = copy.deepcopy(module)  # a trace that no longer matches the model
        with torch.no_grad():
            next(other.parameters()).add_(1e-3)
        return real_trace(other, inputs, **kw)

    monkeypatch.setattr(torch.jit, "trace_module", off_by_a_bit)
    photo = tmp_path / "in.png"
    _portrait().save(photo)
    result = CliRunner().invoke(cli, ["edit", str(photo), "-d", "royal", "-m", str(random_model), "--steps", "2",
                                      "--mask-noises", "2", "--device", "cpu"], env={"COLUMNS": "1000"})
    assert result.exit_code == 0, result.output
    assert "no TorchScript cache" in result.stderr and "does not reproduce" in result.stderr
    assert (tmp_path / "in_royal.png").exists()
    assert not cache_root.exists() or not any(cache_root.iterdir())


def test_a_model_over_the_size_limit_is_never_traced(random_model, cache_root, monkeypatch):
    """An SD-size folder (weights over MAX_TRACED_BYTES) edits from its folder: no trace, no hashing of gigabytes."""
    assert traced.worth_tracing(random_model) is None  # the tiny model is traced
    monkeypatch.setattr(traced, "MAX_TRACED_BYTES", traced.weights_bytes(random_model) - 1)
    monkeypatch.setattr(traced, "model_key", lambda path: pytest.fail("hashed a model that is not traced"))
    editor = Editor.from_pretrained(random_model, device="cpu", cache=True)
    assert editor.cache_status.startswith("no TorchScript cache: the model's weights are")
    assert not editor.cache_failed and not isinstance(editor.model, traced.TracedModel)
    assert not cache_root.exists() or not any(cache_root.rglob("model.pt"))
    eager = Editor.from_pretrained(random_model, device="cpu")
    _same(editor.edit(_portrait(), "royal", seed=0, steps=2), eager.edit(_portrait(), "royal", seed=0, steps=2))


def test_bundled_toon_edit_same_bytes_cached_or_not(tmp_path, cache_root):
    """The command of the cold-start target, on the bundled model: eager, cache writing, cache reading."""
    outs = []
    for i, extra in enumerate((["--no-cache"], [], [])):
        out = tmp_path / f"out{i}.png"
        result = CliRunner().invoke(cli, ["edit", str(ROOT / "examples" / "toon.png"), "-d", "laughing", "-o", str(out),
                                          "--device", "cpu", "-q", *extra])
        assert result.exit_code == 0, result.output
        outs.append(out.read_bytes())
    assert outs[0] == outs[1] == outs[2]
    assert (cache_root / traced.model_key(traced_bundled())).is_dir()


def traced_bundled() -> Path:
    """The model `pedit edit` runs without -m (pedit.model.paths.DEFAULT_EDIT_MODEL)."""
    from pedit.model.paths import DEFAULT_EDIT_MODEL, model_path

    return model_path(DEFAULT_EDIT_MODEL)


def test_a_cached_edit_imports_neither_diffusers_nor_transformers(random_model, cache_root, tmp_path):
    Editor.from_pretrained(random_model, device="cpu", cache=True)
    photo = tmp_path / "in.png"
    _portrait().save(photo)
    code = (
        "import sys\n"
        "from pedit.model.sampling_settings import SamplingSettings\n"
        "from pedit.photos.edit_files import EditFilesConfig, edit_files\n"
        f"items = edit_files(EditFilesConfig(inputs=({str(photo)!r},), direction='royal', model={str(random_model)!r},"
        " sampling=SamplingSettings(steps=2, mask_noises=2), device='cpu'))\n"
        "assert items[0].error is None, items[0].error\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'diffusers', 'transformers', 'peft', 'accelerate'}))\n"
        "print(len([m for m in sys.modules if m.startswith('torch._dynamo')]))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[:2] == ["[]", "0"], done.stdout
    assert (tmp_path / "in_royal.png").exists()


@pytest.mark.parametrize("how", ["swapped", "linked", "whole entry linked"])
def test_a_cache_entry_of_another_model_is_never_used(random_model, tmp_path, cache_root, how, monkeypatch):
    """Issue 27, class 1: another model's trace put into this model's entry (its files copied over, or linked
    there, or the whole entry a link to the other's) is rebuilt, never edited with; the bytes are this model's."""
    import pedit.cache

    other = Path(shutil.copytree(random_model, tmp_path / "other"))
    weights = next((other / "unet").glob("*.safetensors"))
    from safetensors.torch import load_file, save_file

    save_file({k: v * 1.5 for k, v in load_file(weights).items()}, weights)  # another model, same shapes
    for model in (random_model, other):
        assert Editor.from_pretrained(model, device="cpu", cache=True).cache_status.startswith("wrote")
    mine, theirs = cache_root / traced.model_key(random_model), cache_root / traced.model_key(other)
    if how == "swapped":
        for name in ENTRY:
            shutil.copy(theirs / name, mine / name)
    elif how == "linked":
        (mine / "model.pt").unlink()
        (mine / "model.pt").symlink_to(theirs / "model.pt")
    else:
        shutil.rmtree(mine)
        mine.symlink_to(theirs, target_is_directory=True)
    again = Editor.from_pretrained(random_model, device="cpu", cache=True)
    assert again.cache_status.startswith("wrote")
    eager = Editor.from_pretrained(random_model, device="cpu")
    _same(again.edit(_portrait(), "royal", seed=0, steps=2), eager.edit(_portrait(), "royal", seed=0, steps=2))
    # Cheap: once its files' hashes are remembered (written long enough ago), a load reads no file to check them.
    monkeypatch.setattr(pedit.cache, "RACY_SECONDS", -1.0)
    assert Editor.from_pretrained(random_model, device="cpu", cache=True).cache_status.startswith("loaded")
    read = []
    real = pedit.cache.file_sha256
    monkeypatch.setattr(pedit.cache, "file_sha256", lambda p: read.append(p.name) or real(p))
    assert Editor.from_pretrained(random_model, device="cpu", cache=True).cache_status.startswith("loaded")
    assert not set(read) & set(ENTRY)
