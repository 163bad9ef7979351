"""What the student regresses in one micro-batch (pedit.train.distill.distill_inputs), checked on behaviour with
Stable Diffusion's own constants (issue 27, "tests that bite"): a VAE scaling factor of 0.18215, not 1.0,
so a latent left unscaled shows; scales drawn over a whole range, so a draw that ignores the range or
feeds one value shows; rows of both prompts, so a student trained toward one branch only shows."""

from __future__ import annotations

from types import SimpleNamespace

import torch
from diffusers import DDPMScheduler

from pedit.edit.guidance import multi_cfg
from pedit.model.distilled import SCALE_NAMES
from pedit.noise import rand, randint, randn
from pedit.train.distill import distill_inputs

SD_SCALING = 0.18215  # Stable Diffusion 1.x's VAE scaling factor
RANGE = torch.tensor([[1.0, 2.5], [1.0, 2.0], [1.0, 7.5]])  # the CLI's default --scale-range
N, K, D = 64, 2, 8


class Teacher(torch.nn.Module):
    """A teacher whose rows' outputs depend on everything a row carries: its latent, its c_s, its context
    and its timestep, so any row fed the wrong input gives another target."""

    dtype = torch.float32

    def __init__(self):
        super().__init__()
        self.image_projector = lambda c_s, clip: clip[:, :K, :D] + c_s.mean(dim=(1, 2, 3))[:, None, None]

    def forward(self, z_in, t, context):
        n = z_in.shape[0]
        ctx = context.mean(dim=(1, 2)).view(n, 1, 1, 1)
        return z_in[:, :4] * 0.9 + z_in[:, 4:] * 0.3 + ctx + t.view(n, 1, 1, 1).float() / 1000


def _batch(g):
    latent = (N, 4, 4, 4)
    return {"mean_A": randn(latent, g), "std_A": rand(latent, g) + 0.1, "mean_B": randn(latent, g) + 3,
            "std_B": rand(latent, g) + 0.1, "clip_A": randn((N, 1 + K, D), g),
            "p_a": torch.full((N,), 1), "p_b": torch.full((N,), 2)}


def test_the_students_inputs_and_target_follow_the_teachers_conventions():
    scheduler = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    prompts = randn((3, 77, D), torch.Generator().manual_seed(9))  # row 0: the empty prompt
    batch = _batch(torch.Generator().manual_seed(1))
    parts = SimpleNamespace(scaling_factor=SD_SCALING)
    got = distill_inputs(batch, prompts, parts, Teacher(), scheduler, RANGE, torch.Generator().manual_seed(5), "cpu")

    # The draws, in distill_inputs' documented order from the one generator.
    g = torch.Generator().manual_seed(5)
    noise, posterior = randn((N, 4, 4, 4), g), randn((N, 4, 4, 4), g)
    t = randint(0, 1000, (N,), g)
    from_b = (rand(N, g) < 0.5).view(-1, 1, 1, 1)
    to_b = rand(N, g) < 0.5
    assert torch.equal(got.t, t)

    # c_s is E(x_A) times the scaling factor (as train and edit take it), beside the noised target latent.
    assert torch.allclose(got.z_in[:, 4:], batch["mean_A"] * SD_SCALING)
    mean = torch.where(from_b, batch["mean_B"], batch["mean_A"])
    std = torch.where(from_b, batch["std_B"], batch["std_A"])
    z_0 = (mean + std * posterior) * SD_SCALING  # a posterior sample, on the scaled latent's scale
    assert torch.allclose(got.z_in[:, :4], scheduler.add_noise(z_0, noise, t), atol=1e-6)
    assert from_b.any() and (~from_b).any()

    # Each row's prompt: p_b or p_a as drawn, both present.
    assert torch.equal(got.c_p, prompts[torch.where(to_b, batch["p_b"], batch["p_a"])])
    assert to_b.any() and (~to_b).any()

    # Scales: each row its own, spread over the whole range and inside it.
    s = got.scales
    assert s.shape == (N, len(SCALE_NAMES))
    for i in range(len(SCALE_NAMES)):
        lo, hi = RANGE[i]
        assert lo <= s[:, i].min() and s[:, i].max() <= hi
        assert s[:, i].max() - s[:, i].min() > 0.8 * (hi - lo)  # many values, not one

    # The target: the teacher's nested guidance at each row's scales (the 4 rows of Eq. 1, per row).
    teacher, n = Teacher(), N
    c_s = batch["mean_A"] * SD_SCALING
    c_im = teacher.image_projector(c_s, batch["clip_A"])
    zeros_im, null = torch.zeros_like(c_im), prompts[:1].expand(n, -1, -1)
    rows = [(torch.zeros_like(c_s), torch.cat([null, zeros_im], 1)), (c_s, torch.cat([null, zeros_im], 1)),
            (c_s, torch.cat([null, c_im], 1)), (c_s, torch.cat([got.c_p, c_im], 1))]
    e = [teacher(torch.cat([got.z_in[:, :4], cs], 1), t, ctx) for cs, ctx in rows]
    weights = SimpleNamespace(**{name: s[:, i].view(-1, 1, 1, 1) for i, name in enumerate(SCALE_NAMES)})
    assert torch.allclose(got.target, multi_cfg(*e, weights), atol=1e-5)
