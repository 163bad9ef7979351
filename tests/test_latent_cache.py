"""The latent cache of `pedit train` and the training target: same training as the uncached loop,
no frozen network called per step, invalidated by what changes its answers; v_prediction bases."""

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from pedit.errors import ConfigError
from pedit.train.loop import TrainConfig, check_prediction_type, train, training_target


def _cfg(tiny_pairs, tiny_base, out, **kw):
    base = dict(data=str(tiny_pairs), output=str(out), base=str(tiny_base), batch_size=2, checkpoint_every=3,
                validate_every=0, ema_decay=0.9, learning_rate=1e-3, cache_dir=str(out.parent / "cache"))
    return TrainConfig(**{**base, **kw})


def _unet(folder):
    return load_file(str(folder / "unet" / "diffusion_pytorch_model.safetensors"))


def _losses(folder):
    return [float(r.split(",")[1]) for r in (folder / "loss.csv").read_text().splitlines()[1:]]


def test_cached_training_equals_training_that_encodes_every_step(tiny_pairs, tiny_base, tmp_path):
    cached = train(_cfg(tiny_pairs, tiny_base, tmp_path / "cached", max_steps=4))
    plain = train(_cfg(tiny_pairs, tiny_base, tmp_path / "plain", max_steps=4, cache=False))
    # Same draws, same tensors up to the VAE's batch-size-dependent rounding (8 images at once vs 2 + 2):
    # the losses agree to 1e-5; Adam's first steps amplify rounding in near-zero gradients, so the
    # weights (each moved up to 4e-3 by lr 1e-3) agree to 2e-4.
    a, b = _unet(cached), _unet(plain)
    assert np.allclose(_losses(cached), _losses(plain), atol=1e-5)
    assert all(torch.allclose(a[k], b[k], atol=2e-4) for k in a)
    folders = list((tmp_path / "cache").iterdir())
    assert len(folders) == 1
    manifest = json.loads((folders[0] / "manifest.json").read_text())
    assert manifest["pairs"] == 8 and manifest["shards"] == 1
    shard = load_file(str(folders[0] / "pairs-00000.safetensors"))
    assert shard["mean_A"].shape == (8, 4, 4, 4) and shard["clip_A"].shape[0] == 8
    assert (shard["std_A"] > 0).all() and not torch.equal(shard["mean_A"], shard["mean_B"])


def test_a_built_cache_is_reused_and_no_frozen_network_runs_per_step(tiny_pairs, tiny_base, tmp_path, monkeypatch):
    train(_cfg(tiny_pairs, tiny_base, tmp_path / "first", max_steps=1))
    calls = []
    from diffusers import AutoencoderKL
    from transformers import CLIPTextModel, CLIPVisionModel

    for cls in (AutoencoderKL, CLIPVisionModel, CLIPTextModel):
        original = cls.forward if cls is not AutoencoderKL else cls.encode

        def spy(self, *a, _original=original, _name=cls.__name__, **k):
            calls.append(_name)
            return _original(self, *a, **k)

        monkeypatch.setattr(cls, "encode" if cls is AutoencoderKL else "forward", spy)
    train(_cfg(tiny_pairs, tiny_base, tmp_path / "second", max_steps=5))
    assert calls == []  # 5 steps read tensors only (the cache exists; the prompt table is cached too)
    train(_cfg(tiny_pairs, tiny_base, tmp_path / "third", max_steps=2, cache=False))
    assert calls.count("AutoencoderKL") == 2  # the uncached loop: one VAE call per step


def test_changing_an_image_or_the_frozen_parts_makes_a_new_cache(tiny_pairs_copy, tiny_base, tmp_path):
    from pedit.toon.parts import TINY, build_base

    cache = tmp_path / "cache"
    train(_cfg(tiny_pairs_copy, tiny_base, tmp_path / "a", max_steps=1))
    img = tiny_pairs_copy / "images" / "000001_x_B.png"
    arr = np.asarray(Image.open(img)).copy()
    arr[0, 0] = 255 - arr[0, 0]
    Image.fromarray(arr).save(img)
    train(_cfg(tiny_pairs_copy, tiny_base, tmp_path / "b", max_steps=1))
    assert len(list(cache.iterdir())) == 2
    other_base = build_base(tmp_path / "other-base", TINY, seed=1)  # other frozen weights, same shapes
    train(_cfg(tiny_pairs_copy, other_base, tmp_path / "c", max_steps=1))
    assert len(list(cache.iterdir())) == 3


def test_an_interrupted_build_reuses_finished_shards_and_rebuilds_without_manifest(tiny_pairs, tiny_base, tmp_path):
    train(_cfg(tiny_pairs, tiny_base, tmp_path / "a", max_steps=1))
    folder = next((tmp_path / "cache").iterdir())
    before = load_file(str(folder / "pairs-00000.safetensors"))
    (folder / "manifest.json").unlink()
    (folder / "prompts.safetensors").unlink()
    train(_cfg(tiny_pairs, tiny_base, tmp_path / "b", max_steps=1))
    assert (folder / "manifest.json").exists()
    after = load_file(str(folder / "pairs-00000.safetensors"))
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_losses_are_logged_for_every_step_but_reported_every_n(tiny_pairs, tiny_base, tmp_path):
    reports = []
    out = train(_cfg(tiny_pairs, tiny_base, tmp_path / "m", max_steps=7, log_every=4, checkpoint_every=100),
                progress=reports.append)
    assert [r.split(",")[0] for r in (out / "loss.csv").read_text().splitlines()[1:]] == [str(i) for i in range(1, 8)]
    assert [r.step for r in reports if r.event == "step"] == [4, 7]
    assert any(r.event == "cache" and r.step == r.max_steps == 8 for r in reports)


def test_an_unwritable_cache_folder_is_a_clear_error(tiny_pairs, tiny_base, tmp_path):
    from pedit.errors import OutputError

    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(OutputError, match="--cache-dir"):
        train(_cfg(tiny_pairs, tiny_base, tmp_path / "m", max_steps=1, cache_dir=str(blocker / "cache")))
    assert not (tmp_path / "m").exists()  # failed before the output folder appeared


# ---------------------------------------------------------------- prediction types


def test_velocity_target_is_alpha_noise_minus_sigma_z0():
    from diffusers import DDPMScheduler

    sched = DDPMScheduler(num_train_timesteps=1000, prediction_type="v_prediction")
    z_0, noise = torch.randn(3, 4, 2, 2), torch.randn(3, 4, 2, 2)
    t = torch.tensor([0, 500, 999])
    a = sched.alphas_cumprod[t].sqrt().view(-1, 1, 1, 1)
    s = (1 - sched.alphas_cumprod[t]).sqrt().view(-1, 1, 1, 1)
    assert torch.allclose(training_target(sched, "v_prediction", z_0, noise, t), a * noise - s * z_0, atol=1e-6)
    assert torch.equal(training_target(sched, "epsilon", z_0, noise, t), noise)


def test_prediction_types_accepted_and_refused():
    assert check_prediction_type({}) == "epsilon"
    assert check_prediction_type({"prediction_type": "v_prediction"}) == "v_prediction"
    with pytest.raises(ConfigError, match="'sample'.*epsilon or v_prediction"):
        check_prediction_type({"prediction_type": "sample"})


def _base_with(tiny_base, tmp_path, prediction_type):
    base = tmp_path / f"base-{prediction_type}"
    shutil.copytree(tiny_base, base)
    f = base / "scheduler" / "scheduler_config.json"
    f.write_text(json.dumps({**json.loads(f.read_text()), "prediction_type": prediction_type}))
    return base


def test_a_v_prediction_base_is_trained_on_the_velocity(tiny_pairs, tiny_base, tmp_path, monkeypatch):
    import pedit.train.loop as t
    import pedit.train.steps as steps

    seen = {}
    real_target, real_mse = t.training_target, steps.F.mse_loss

    def target_spy(sched, kind, z_0, noise, tt):
        seen["kind"], seen["noise"] = kind, noise
        seen["target"] = real_target(sched, kind, z_0, noise, tt)
        return seen["target"]

    def mse_spy(pred, target):
        seen["regressed"] = target
        return real_mse(pred, target)

    monkeypatch.setattr(t, "training_target", target_spy)
    monkeypatch.setattr(steps.F, "mse_loss", mse_spy)
    out = train(_cfg(tiny_pairs, tiny_base, tmp_path / "v", max_steps=1, base=str(_base_with(tiny_base, tmp_path, "v_prediction"))))
    assert seen["kind"] == "v_prediction"
    assert seen["regressed"] is seen["target"] and not torch.allclose(seen["target"], seen["noise"])
    assert json.loads((out / "pedit.json").read_text())["prediction_type"] == "v_prediction"


def test_a_sample_prediction_base_is_refused_before_any_output(tiny_pairs, tiny_base, tmp_path):
    with pytest.raises(ConfigError, match="'sample'"):
        train(_cfg(tiny_pairs, tiny_base, tmp_path / "s", max_steps=1, base=str(_base_with(tiny_base, tmp_path, "sample"))))
    assert not (tmp_path / "s").exists()
