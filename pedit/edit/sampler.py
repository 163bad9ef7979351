"""Schedulers, and the denoising loop as one plain function over a `denoise(z_in, t, context) -> eps` callable.

The loop is the edit job's (pedit.edit.steps.SampleJob): it never knows the backend (eager, compiled,
ONNX Runtime, TensorRT, a Triton model) that provides `denoise`, nor how the guidance rows are
combined: `guide` maps the raw output to the noise the scheduler steps with (pedit.edit.guidance).
Every backend is one `denoise(z_in, t, context) -> eps` callable (docs/design-notes.md, "Samplers and backends").
"""

from __future__ import annotations

from typing import Callable

from pedit.edit.guidance import N_ROWS
from pedit.edit.steps import RowPlan, SampleJob, StepRows, check_steps, run  # noqa: F401 (check_steps: its old home)
from pedit.errors import ConfigError

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


def sample(denoise: Callable, scheduler, z, c_s_rows, context, guide: Callable, num_steps: int,
           callback: Callable[[int, int], None] | None = None, start=None, strength: float = 1.0,
           rows: int = N_ROWS):
    """Denoise `z` (B, 4, h, w), unit-variance noise, to a clean latent: one `SampleJob`
    (pedit.edit.job) run alone, the same rows every step.

    c_s_rows: (rows·B, 4, h, w) and context: (rows·B, 77 + K, D), e.g. `EditConditions.guidance_rows`;
    `guide` maps the raw (rows·B, 4, h, w) output to the (B, 4, h, w) noise the scheduler steps with.
    `rows` per latent (5 for the MCDM; gen-pairs' Eq. 2 uses 4); `c_s_rows=None` for a U-Net without
    the spatial condition (a plain Stable Diffusion base). `strength` < 1 starts from `start` noised
    to that level (SDEdit). An edit's own rows (per step, per kind of model) come from pedit.edit.rows.
    """
    job = SampleJob(scheduler, z, RowPlan(StepRows(c_s_rows, context, rows, guide)), num_steps, start, strength,
                    callback)
    run([job], denoise)
    return job.z
