"""The denoising loop: one plain function over a `denoise(z_in, t, context) -> eps` callable.

The loop never knows the backend (eager, compiled, ONNX Runtime, TensorRT) that provides
`denoise`, nor how the 5 guidance rows are combined: `guide` maps the raw (5B, 4, h, w) output to
the (B, 4, h, w) noise the scheduler steps with (pedit.edit.guidance). Every backend is one
`denoise(z_in, t, context) -> eps` callable (docs/design-notes.md, "Samplers and backends").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from pedit.edit.guidance import N_ROWS
from pedit.errors import ConfigError, NonFiniteError

from pedit.model.sampling_settings import SCHEDULERS  # noqa: E402  (listed with the model folder's settings)


def make_scheduler(name: str, config: dict):
    """A scheduler from the model's noise-schedule config: DDIM default, DPM-Solver++ for few steps.

    DDIM comes without importing diffusers where the config allows (pedit.edit.schedules).
    """
    if name == "ddim":
        from pedit.edit.schedules import ddim_scheduler

        # A base's config may lack clip_sample, and DDIM's default (True) clips the predicted
        # latent to [-1, 1]: right for pixels, wrong for VAE latents (diffusers' latent pipelines
        # set it off too). Set explicitly, whatever the config says.
        return ddim_scheduler({**config, "clip_sample": False})
    from diffusers import DPMSolverMultistepScheduler, EulerDiscreteScheduler

    if name == "dpm":
        return DPMSolverMultistepScheduler.from_config(config, algorithm_type="dpmsolver++")
    if name == "euler":
        return EulerDiscreteScheduler.from_config(config)
    raise ValueError(f"unknown scheduler {name!r}; choose from {', '.join(SCHEDULERS)}")


@dataclass(frozen=True)
class PlainSteps:
    """Steps sampled with fewer rows (outside the guidance interval): which, and with what.

    is_plain(t) for each host timestep t (a 0-d tensor; Euler's are fractional); at those steps the U-Net sees `rows` rows per latent,
    c_s_rows / context in the same block-wise layout, and `guide` combines them (pedit.edit.guidance.unguided_eps).
    """

    is_plain: Callable[[int], bool]
    c_s_rows: torch.Tensor | None
    context: torch.Tensor
    rows: int
    guide: Callable[[torch.Tensor], torch.Tensor]


def sample(
    denoise: Callable,
    scheduler,
    z: torch.Tensor,
    c_s_rows: torch.Tensor | None,
    context: torch.Tensor,
    guide: Callable[[torch.Tensor], torch.Tensor],
    num_steps: int,
    callback: Callable[[int, int], None] | None = None,
    start: torch.Tensor | None = None,
    strength: float = 1.0,
    after_step: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    rows: int = N_ROWS,
    plain: PlainSteps | None = None,
) -> torch.Tensor:
    """Denoise `z` (B, 4, h, w), unit-variance noise, to a clean latent.

    c_s_rows: (5B, 4, h, w) and context: (5B, 77 + K, D), the guidance rows of
    `EditConditions.guidance_rows`. One `denoise` call per step on the 5-row batch.
    `strength` < 1 starts from the clean latent `start` noised with `z` to that level and runs
    the last `strength` of the schedule (SDEdit). `after_step(z, t)` may replace the latent after
    each step (DiffEdit-style blending); both serve the baselines of `pedit eval`. The scheduler
    and `after_step` see each timestep `t` as a 0-d int64 tensor on the host, `denoise` on z's device.
    `rows` guidance rows per latent (5 for the MCDM; gen-pairs' Eq. 2 uses 4) and `c_s_rows=None`
    for a U-Net without the spatial condition (a plain Stable Diffusion base). `plain`: the steps
    that take fewer rows and another guide (guidance on an interval of noise levels only).
    """
    check_steps(num_steps, scheduler)
    # The schedule stays on the host: the scheduler's table lookups and its branches on the timestep
    # (`prev_timestep >= 0`) then never wait for the GPU. A timestep on the GPU made each step a
    # device-to-host sync (issue 17, item 6). The U-Net gets its own copy, moved once, up front.
    scheduler.set_timesteps(num_steps, device="cpu")
    timesteps = scheduler.timesteps[num_steps - max(1, round(num_steps * strength)):]  # (S,) int64 on the host
    unet_timesteps = timesteps.to(z.device)
    if strength < 1.0:
        z = scheduler.add_noise(start, z, timesteps[:1])
    else:
        z = z * scheduler.init_noise_sigma
    full = (c_s_rows, context, rows, guide)
    for i, t in enumerate(timesteps):
        step_c_s, step_context, step_rows, step_guide = (
            full if plain is None or not plain.is_plain(t) else (plain.c_s_rows, plain.context, plain.rows, plain.guide))
        z_model = scheduler.scale_model_input(z, t)
        z_in = z_model.repeat(step_rows, 1, 1, 1)  # (rows·B, 4, h, w), block-wise like the guidance rows
        if step_c_s is not None:
            z_in = torch.cat([z_in, step_c_s], dim=1)  # (5B, 8, h, w)
        eps = step_guide(denoise(z_in, unet_timesteps[i], step_context))  # (rows·B, 4, h, w) → (B, 4, h, w)
        z = scheduler.step(eps, t, z).prev_sample
        if after_step is not None:
            z = after_step(z, t)
        if callback is not None:
            callback(i + 1, len(timesteps))
    # NaN and inf survive every later step, so one check at the end catches any non-finite step
    # without a device sync per step. A non-finite latent decodes to black or grey: never a result.
    if not torch.isfinite(z).all():
        raise NonFiniteError("Sampling produced NaN or infinite values; check the guidance scales, and for a "
                             "half-precision GPU run try --device cpu (fp32).")
    return z


def check_steps(num_steps: int, scheduler) -> None:
    """Steps must fit the model's noise schedule (at most one per training timestep)."""
    limit = int(scheduler.config.num_train_timesteps)
    if not 1 <= num_steps <= limit:
        raise ConfigError(f"steps must be between 1 and {limit} (this model's noise schedule has {limit} "
                          f"timesteps), got {num_steps}")
