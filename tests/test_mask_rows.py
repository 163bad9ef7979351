"""The editing mask from rows 3-4 only (2 U-Net rows a draw instead of 5): the same mask as the
paper's formula on the full 5-row batch, and on the bundled model the same binary mask and the
same output bytes."""

import dataclasses

import pytest
import torch

from pedit.edit.guidance import GuidanceScales, branch_difference, branch_eps
from pedit.edit.mask import MaskConfig, expand


def test_branch_difference_is_the_difference_of_the_guided_branches():
    g = torch.Generator().manual_seed(0)
    rows = torch.randn(5 * 2, 4, 3, 3, generator=g)  # 5 blocks of B = 2
    for scales in (GuidanceScales(), GuidanceScales(2.0, 0.5, 7.5), GuidanceScales(1, 1, -3.0)):
        eps_b, eps_a = branch_eps(rows, scales)
        torch.testing.assert_close(branch_difference(rows[6:], scales), eps_b - eps_a, rtol=1e-5, atol=1e-5)


def test_prompt_rows_are_rows_three_and_four_of_the_guidance_layout(editor, portrait):
    from pedit.data.pairs import square_rgb
    from pedit.edit.editor import uint8_to_tensor

    cond = expand(editor.conditions(uint8_to_tensor(square_rgb(portrait, 32)), editor.direction("royal")), 3)
    c_s5, ctx5 = cond.guidance_rows()  # (15, ...): 5 blocks of B = 3
    c_s2, ctx2 = cond.prompt_rows()
    assert torch.equal(c_s2, c_s5[9:]) and torch.equal(ctx2, ctx5[9:])


def _five_row_difference(denoise, noise_scheduler, cond, scales, cfg, generator):
    """The paper's formula as written: both guided branches from all 5 rows of each draw, one call."""
    z_A = cond.c_s
    b, n = z_A.shape[0], cfg.n_noise
    noise = torch.randn((n * b, *z_A.shape[1:]), generator=generator, dtype=torch.float32).to(z_A)
    t_index = max(0, int(cfg.strength * noise_scheduler.config.num_train_timesteps) - 1)
    t = torch.full((n * b,), t_index, dtype=torch.long)
    z_t = noise_scheduler.add_noise(z_A.repeat(n, 1, 1, 1), noise, t)
    c_s_rows, context = expand(cond, n).guidance_rows()
    eps_b, eps_a = branch_eps(denoise(torch.cat([z_t.repeat(5, 1, 1, 1), c_s_rows], dim=1), t[0], context), scales)
    return (eps_b - eps_a).float().abs().mean(dim=1).view(n, b, *z_A.shape[-2:]).mean(dim=0)


@pytest.fixture(scope="module")
def bundled():
    from pedit.edit.editor import Editor

    return Editor.from_pretrained(None, device="cpu")


@pytest.mark.parametrize("direction", ["laughing", "royal", "crying"])
def test_the_bundled_model_gives_the_same_mask_and_bytes_as_the_five_row_formula(bundled, direction):
    from PIL import Image

    import pedit.edit.editor as editor_module
    from pedit.edit.mask import difference_map

    image = Image.open("examples/toon.png")
    options = bundled.default_options(direction)  # the paper's sampler: 20 steps, all guided, 10 draws
    options = dataclasses.replace(options, steps=20, guidance_interval=None,
                                  mask=dataclasses.replace(options.mask, n_noise=10))
    calls = []
    inner = bundled.denoise
    bundled.denoise = lambda z, t, c: calls.append(z.shape[0]) or inner(z, t, c)
    try:
        two_rows = bundled.edit(image, direction, options, seed=3)
    finally:
        bundled.denoise = inner
    assert calls[0] == 2 * options.mask.n_noise and set(calls[1:]) == {5}  # 20 rows for the 10 draws, not 50

    # The mask the five-row formula gives from the same draws (the seed's generator draws the mask's
    # noise first) is the edit's mask exactly; the sampling after it is the same code either way, so
    # the edit's bytes are the five-row formula's too.
    from pedit.data.pairs import square_rgb
    from pedit.edit.editor import uint8_to_tensor
    from pedit.edit.mask import binarize
    from pedit.edit.schedules import noise_scheduler

    cond = bundled.conditions(uint8_to_tensor(square_rgb(image, bundled.resolution)), bundled.direction(direction))
    ddpm = noise_scheduler(bundled.model.parts.scheduler_config)
    five = _five_row_difference(bundled.denoise, ddpm, cond, options.scales, options.mask, torch.Generator().manual_seed(3))
    five_rows_mask = binarize(five, options.mask.ratio, options.mask.threshold)
    assert torch.equal(two_rows.mask_latent, five_rows_mask) and 0 < two_rows.mask_latent.mean() < 1

    # And the difference maps themselves agree to float32 rounding (the threshold did not hide a change).
    cfg = dataclasses.replace(options.mask, n_noise=4)
    new = difference_map(bundled.denoise, ddpm, cond, options.scales, cfg, torch.Generator().manual_seed(1))
    old = _five_row_difference(bundled.denoise, ddpm, cond, options.scales, cfg, torch.Generator().manual_seed(1))
    assert new.abs().max() > 0
    torch.testing.assert_close(new, old, rtol=1e-4, atol=1e-6)


def test_unet_rows_counts_two_rows_a_draw():
    from pedit.edit.mask import unet_rows

    assert unet_rows(MaskConfig()) == 20  # the default 10-draw mask call
