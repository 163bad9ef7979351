"""The editing mask noises E(x_A) (paper §3.4) in every method, also where the c_s condition is dropped
(no-c_s, the DiffEdit baseline): noising zeros there was a real bug of this project."""

import pytest
import torch
from diffusers import DDPMScheduler

from pedit.edit.editor import uint8_to_tensor
from pedit.edit.guidance import GuidanceScales
from pedit.edit.mask import MaskConfig
from pedit.eval.ground_truth import run_method



@pytest.mark.parametrize("method", ["ours", "no-c_s", "no-c_im", "diffedit"])
def test_the_mask_call_sees_E_x_A_noised_to_the_mask_strength(editor, method):
    from pedit.toon.world import render

    x_A = uint8_to_tensor(render(3, size=32))
    cond = editor.conditions(x_A, editor.direction("royal"))
    calls = []
    inner = editor.denoise
    editor.denoise = lambda z_in, t, context: calls.append((z_in.clone(), t)) or inner(z_in, t, context)
    try:
        run_method(editor, method, cond, 1, GuidanceScales(), 3, MaskConfig(n_noise=2))
    finally:
        editor.denoise = inner
    z_in, t = calls[0]  # the mask's one batched call: 5 row blocks of N = 2 draws
    ddpm = DDPMScheduler.from_config(editor.model.parts.scheduler_config)
    assert t.shape == (z_in.shape[0],) and bool((t == t[0]).all())  # one timestep a row, all the mask's level
    t = t[0]
    assert int(t) == int(0.5 * ddpm.config.num_train_timesteps) - 1
    g = torch.Generator().manual_seed(3)
    if method == "diffedit":
        torch.randn((1, 4, 4, 4), generator=g)  # the baseline draws its sampling noise first
    noise = torch.randn((2, 4, 4, 4), generator=g)
    expected = ddpm.add_noise(cond.c_s.repeat(2, 1, 1, 1), noise, torch.full((2,), int(t)))
    assert cond.c_s.abs().mean() > 0.1 * editor.model.parts.scaling_factor  # E(x_A) far from zeros: noised zeros could not pass
    torch.testing.assert_close(z_in[:2, :4], expected, atol=1e-5, rtol=0)
