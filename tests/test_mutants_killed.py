"""Behaviour the mutation pass found unguarded (scripts/mutation_pass.py, docs/reliability.md): each test
states the property the surviving one-line bug broke, not the line it changed."""

from __future__ import annotations

import pytest
import torch

from pedit.edit.guidance import GuidanceScales
from pedit.edit.mask import MaskConfig, difference_map
from pedit.model.distilled import MAX_SCALE, scale_features
from pedit.model.sampling_settings import guided_at


def test_scale_features_tell_every_scale_apart_up_to_the_maximum_and_repeat_beyond():
    """The student's scale embedding reads sin/cos features whose longest period is 16 (why MAX_SCALE is 15):
    two scales within [0, MAX_SCALE] never share features, s and s + 16 do. A trained student (the bundled
    toon-model-fast) depends on exactly these features: another period edits with features it never saw."""
    s = torch.linspace(0, MAX_SCALE, 61)
    rows = torch.stack([s, s, s], dim=1)
    f = scale_features(rows)
    distance = torch.cdist(f, f) + torch.eye(len(s)) * 1e9
    assert distance.min() > 1e-3
    assert torch.allclose(scale_features(rows + 16), f, atol=1e-4)
    assert not torch.allclose(scale_features(rows + 8), f, atol=1e-2)


@pytest.mark.parametrize("interval", [(0.25, 0.75), (0.0, 0.5), (0.5, 1.0)])
def test_the_guidance_interval_includes_both_ends(interval):
    """An interval [lo, hi] of noise levels guides the steps at t / T = lo and t / T = hi (closed, as documented),
    and not those just outside."""
    lo, hi = interval
    total = 1000
    assert guided_at(int(lo * total), interval, total) and guided_at(int(hi * total), interval, total)
    assert guided_at(lo * total, interval, total) and guided_at(hi * total, interval, total)  # Euler's float t
    if lo > 0:
        assert not guided_at(int(lo * total) - 1, interval, total)
    if hi < 1:
        assert not guided_at(int(hi * total) + 1, interval, total)


def test_the_mask_averages_its_draws(editor, portrait):
    """The difference map of N draws is the mean of the N one-draw maps (each with that draw's noise), however
    the draws are split into calls."""
    from pedit.data.pairs import square_rgb
    from pedit.edit.editor import uint8_to_tensor
    from pedit.edit.schedules import noise_scheduler

    cond = editor.conditions(uint8_to_tensor(square_rgb(portrait, 32)), editor.direction("laughing"))
    sched = noise_scheduler(editor.model.parts.scheduler_config)
    draws = torch.randn((4, *cond.c_s.shape[1:]), generator=torch.Generator().manual_seed(7))  # (4, 4, h, w)

    def dmap(noise, batch=0):  # the draws given as they are (difference_map takes a draw function)
        return difference_map(editor.denoise, sched, cond, GuidanceScales(), MaskConfig(n_noise=len(noise), batch=batch),
                              lambda shape: noise.reshape(shape))

    singles = [dmap(draws[k:k + 1]) for k in range(4)]
    want = torch.stack(singles).mean(dim=0)
    torch.testing.assert_close(dmap(draws), want, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(dmap(draws, batch=1), want, atol=1e-6, rtol=1e-5)
    assert not torch.allclose(singles[0], want)  # the draws differ: a map of one draw would show


def test_an_unguided_step_of_a_student_asks_for_unit_scales(editor, portrait):
    """Outside the guidance interval a student's rows carry the scale token (1, 1, 1) (the teacher's plain
    rows at unit scales), inside it the edit's scales."""
    from pedit.edit.editor import EditOptions, Editor
    from pedit.model.distilled import split_scale_token

    model = editor.model
    meta = {**model.meta, "distilled": {"kind": "guidance", "rows_per_branch": 1,
                                        "scale_range": {"s_s": [1.0, 2.5], "s_im": [1.0, 2.0], "s_p": [1.0, 7.5]}}}
    seen = []

    def denoise(z_in, t, context):
        t = torch.as_tensor(t).flatten()  # one timestep per row
        assert torch.all(t == t[0])  # one edit: its rows share the step
        seen.append((int(t[0]), split_scale_token(context)[1]))
        return torch.zeros_like(z_in[:, :4])

    student = Editor(type(model)(model.mcdm, model.parts, meta, model.path), denoise)
    options = EditOptions(steps=4, seed=3, guidance_interval=(0.6, 1.0), scales=GuidanceScales(2.0, 1.5, 5.0),
                          mask=MaskConfig(n_noise=2))
    student.edit(portrait, "laughing", options)
    total = model.parts.scheduler_config["num_train_timesteps"]
    steps = seen[1:]  # seen[0]: the mask's call
    guided = [s for t, s in steps if 0.6 <= t / total <= 1.0]
    plain = [s for t, s in steps if not 0.6 <= t / total <= 1.0]
    assert guided and plain
    assert all(torch.equal(s, torch.tensor([[2.0, 1.5, 5.0]] * len(s))) for s in guided)
    assert all(torch.equal(s, torch.ones_like(s)) for s in plain)


def test_a_file_rewritten_with_its_old_size_and_mtime_is_hashed_again(tmp_path, monkeypatch):
    """`cp -p` and `rsync -a` write new bytes of the same size under the old mtime: the remembered hash of a
    file must not survive that (its ctime moved), or a cache keyed by content keeps a stale entry."""
    import os

    import pedit.cache

    monkeypatch.setattr(pedit.cache, "RACY_SECONDS", -1.0)  # as if written long ago: hashes are remembered
    folder = tmp_path / "model"
    (folder / "unet").mkdir(parents=True)
    weights = folder / "unet" / "w.bin"
    weights.write_bytes(b"a" * 64)
    st = weights.stat()
    first = pedit.cache.content_hash(folder, ("unet",))
    weights.write_bytes(b"b" * 64)  # same size
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns))  # the old mtime back
    assert pedit.cache.content_hash(folder, ("unet",)) != first


def test_the_torchscript_key_follows_the_models_noise_schedule(random_model, tmp_path):
    """The cache holds the scheduler config an edit samples with: another schedule in the folder is another key."""
    import json
    import shutil
    from pathlib import Path

    from pedit.model import traced

    copy = Path(shutil.copytree(random_model, tmp_path / "copy"))
    key = traced.model_key(copy)
    config = copy / "scheduler" / "scheduler_config.json"
    changed = {**json.loads(config.read_text()), "beta_end": 0.02}
    config.write_text(json.dumps(changed))
    assert traced.model_key(copy) != key


def test_the_latent_cache_holds_each_images_own_posterior(tiny_base):
    """mean and std of x_A and of x_B are each the VAE posterior of that image (diffusers' own encode is the
    oracle), never one image's statistics under the other's name."""
    from pedit.model.loading import load_base
    from pedit.train.latent_cache import encode_pairs

    _, parts = load_base(tiny_base)
    g = torch.Generator().manual_seed(0)
    x_A = torch.rand((2, 3, 32, 32), generator=g) * 2 - 1
    x_B = -x_A.flip(-1)
    got = encode_pairs(parts, x_A, x_B)
    with torch.no_grad():
        for x, tag in ((x_A, "A"), (x_B, "B")):
            post = parts.vae.encode(x).latent_dist
            torch.testing.assert_close(got[f"mean_{tag}"], post.mean, atol=1e-5, rtol=1e-4)
            torch.testing.assert_close(got[f"std_{tag}"], post.std, atol=1e-5, rtol=1e-4)
    assert not torch.allclose(got["std_A"], got["std_B"])


def test_c_s_is_the_vae_mode_times_its_scaling_factor(editor, portrait):
    """c_s = E(x_A) x the VAE's scaling factor (paper §3.3 as this project fixes it), diffusers' encode the
    oracle. With the tiny base's Stable Diffusion factor (0.18215) an unscaled c_s fails here; with a factor
    of 1.0 it could not (scripts/mutation_pass.py pairs the two)."""
    from pedit.data.pairs import square_rgb
    from pedit.edit.editor import uint8_to_tensor

    x = uint8_to_tensor(square_rgb(portrait, 32))
    cond = editor.conditions(x, editor.direction("laughing"))
    parts = editor.model.parts
    assert parts.vae.config.scaling_factor == pytest.approx(0.18215)
    with torch.no_grad():
        want = parts.vae.encode(x.to(parts.device)).latent_dist.mode() * parts.vae.config.scaling_factor
    torch.testing.assert_close(cond.c_s, want)
