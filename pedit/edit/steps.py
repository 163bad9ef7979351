"""The stepping core of an edit: the rows a job asks for, the sampler's steps as a job, and the driver.

A job says which U-Net rows it needs next (`rows()`: z_in, one timestep per row, context) and
advances from their output (`advance(eps)`). `run` steps one job for the CLI, or many at different
steps through ONE `denoise` call per tick: a batch of photos, or a server's concurrent requests,
whose rows then share the U-Net call. The edit itself (mask draws, then sampling) is
pedit.edit.job.EditJob; the mask's draws are pedit.edit.mask.MaskJob.

Array-generic (pedit.arrays): torch tensors on any device, or numpy arrays in the torch-free runtime.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from pedit.arrays import all_finite, blocks, cat, on_device_of, tile_rows, to_like, xp_of
from pedit.errors import ConfigError, NonFiniteError


@dataclass(frozen=True)
class Rows:
    """The U-Net rows a job needs next."""

    z_in: object  # (N, 8, h, w) [z_t | c_s], or (N, 4, h, w) for a U-Net without c_s
    t: object  # (N,) one timestep per row (int64; Euler's are float)
    context: object  # (N, 77 + K, D)

    def __len__(self) -> int:
        return int(self.z_in.shape[0])


@dataclass(frozen=True)
class StepRows:
    """What one step evaluates: `rows` rows per latent, c_s and contexts block-wise, and `guide`
    mapping the U-Net output (rows·B, 4, h, w) to the noise the scheduler steps with (B, 4, h, w)."""

    c_s_rows: object  # (rows·B, 4, h, w), or None for a U-Net without the spatial condition
    context: object  # (rows·B, 77 + K, D)
    rows: int
    guide: Callable


@dataclass(frozen=True)
class RowPlan:
    """The rows of every step: `guided` inside the guidance interval, `plain` (fewer rows, every scale
    at 1) outside it; `is_guided(t)` says which (None: every step guided)."""

    guided: StepRows
    plain: StepRows | None = None
    is_guided: Callable | None = None

    def at(self, t) -> StepRows:
        return self.guided if self.plain is None or self.is_guided(t) else self.plain


def _timestep_rows(t_1, n: int):
    """(1,) timestep → (n,): the step's timestep on every row."""
    return tile_rows(t_1, n)


class SampleJob:
    """The denoising loop from z (B, 4, h, w), unit-variance noise, to a clean latent, one step a call.

    `strength` < 1 starts from the clean latent `start` noised with z to that level and runs the last
    `strength` of the schedule (SDEdit, img2img). The scheduler sees each timestep on the host; the
    U-Net gets its own copy on z's device, moved once, up front (a timestep on the GPU would make each
    scheduler step a device-to-host sync).
    """

    def __init__(self, scheduler, z, plan: RowPlan, num_steps: int, start=None, strength: float = 1.0,
                 callback: Callable[[int, int], None] | None = None):
        check_steps(num_steps, scheduler)
        scheduler.set_timesteps(num_steps, device="cpu")
        self.scheduler, self.plan, self.callback = scheduler, plan, callback
        self.timesteps = scheduler.timesteps[num_steps - max(1, round(num_steps * strength)):]  # (S,) on the host
        self._unet_t = xp_of(z).asarray(self.timesteps, **on_device_of(z))
        if strength < 1.0:
            z = scheduler.add_noise(start, z, self.timesteps[:1])
        else:
            z = z * scheduler.init_noise_sigma
        self.z = z
        self.i = 0

    @property
    def done(self) -> bool:
        return self.i >= len(self.timesteps)

    @property
    def total(self) -> int:
        return len(self.timesteps)

    def rows(self) -> Rows:
        t = self.timesteps[self.i]
        step = self.plan.at(t)
        z_model = self.scheduler.scale_model_input(self.z, t)
        z_in = tile_rows(z_model, step.rows)  # (rows·B, 4, h, w), block-wise like the guidance rows
        if step.c_s_rows is not None:
            z_in = cat([z_in, step.c_s_rows], axis=1)  # (rows·B, 8, h, w)
        return Rows(z_in, _timestep_rows(self._unet_t[self.i: self.i + 1], z_in.shape[0]), step.context)

    def advance(self, eps) -> None:
        t = self.timesteps[self.i]
        eps = self.plan.at(t).guide(eps)  # (rows·B, 4, h, w) → (B, 4, h, w)
        self.z = self.scheduler.step(eps, t, self.z).prev_sample
        self.i += 1
        if self.callback is not None:
            self.callback(self.i, self.total)
        # NaN and inf survive every later step, so one check at the end catches any non-finite step
        # without a device sync per step. A non-finite latent decodes to black or grey: never a result.
        if self.done and not all_finite(self.z):
            raise NonFiniteError("Sampling produced NaN or infinite values; check the guidance scales, and for a "
                                 "half-precision GPU run try --device cpu (fp32).")


def run(jobs: list, denoise: Callable) -> None:
    """Step every job to the end, ONE `denoise(z_in, t, context)` call per tick over the rows of every
    unfinished job (concatenated in job order; t one timestep per row), each job advanced by its own
    slice of the output. A single job runs exactly the calls it would alone."""
    while True:
        active = [job for job in jobs if not job.done]
        if not active:
            return
        wanted = [job.rows() for job in active]
        if len(wanted) == 1:
            active[0].advance(denoise(wanted[0].z_in, wanted[0].t, wanted[0].context))
            continue
        eps = denoise(cat([r.z_in for r in wanted]), cat([r.t for r in wanted]), cat([r.context for r in wanted]))
        start = 0
        for job, r in zip(active, wanted):
            job.advance(eps[start: start + len(r)])
            start += len(r)


def check_steps(num_steps: int, scheduler) -> None:
    """Steps must fit the model's noise schedule (at most one per training timestep)."""
    limit = int(scheduler.config.num_train_timesteps)
    if not 1 <= num_steps <= limit:
        raise ConfigError(f"steps must be between 1 and {limit} (this model's noise schedule has {limit} "
                          f"timesteps), got {num_steps}")
