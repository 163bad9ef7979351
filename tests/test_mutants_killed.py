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
    """The difference map of N draws is their mean: more draws change it (a map of the first draw only would
    not), and the same N draws give the same map however they are split into calls."""
    from pedit.data.pairs import square_rgb
    from pedit.edit.editor import uint8_to_tensor

    cond = editor.conditions(uint8_to_tensor(square_rgb(portrait, 32)), editor.direction("laughing"))
    from pedit.edit.schedules import noise_scheduler

    sched = noise_scheduler(editor.model.parts.scheduler_config)

    def dmap(n, batch=0):
        return difference_map(editor.denoise, sched, cond, GuidanceScales(), MaskConfig(n_noise=n, batch=batch),
                              torch.Generator().manual_seed(7))

    one, four = dmap(1), dmap(4)
    assert not torch.allclose(one, four)
    torch.testing.assert_close(dmap(4, batch=1), four, atol=1e-6, rtol=1e-5)
