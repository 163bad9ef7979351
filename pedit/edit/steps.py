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
        self.error: Exception | None = None  # set by the driver when a step of this job failed

    @property
    def done(self) -> bool:
        return self.error is not None or self.i >= len(self.timesteps)

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


def tick(jobs: list, denoise: Callable, max_rows: int | None = None) -> None:
    """One step of every unfinished job: the rows they need, concatenated in job order (t one timestep a
    row), through ONE `denoise(z_in, t, context)` call (or calls of at most `max_rows` rows, what an
    engine's profile holds), each job advanced by its own slice of the output.

    A job whose rows or advance raise (its input, a NaN, a progress callback whose client left) gets
    the exception as `job.error` and is done; the others go on. A failed U-Net call fails the jobs that
    were in it. A single job makes exactly the calls it would alone."""
    wanted = []
    for job in jobs:
        if job.done:
            continue
        try:
            wanted.append((job, job.rows()))
        except Exception as e:  # noqa: BLE001 (the job's own failure, kept on it)
            job.error = e
    if not wanted:
        return
    try:
        eps = _denoise_rows([r for _, r in wanted], denoise, max_rows)
    except Exception as e:  # noqa: BLE001 (every job of this call failed with it)
        for job, _ in wanted:
            job.error = e
        return
    start = 0
    for job, r in wanted:
        try:
            job.advance(eps[start: start + len(r)])
        except Exception as e:  # noqa: BLE001
            job.error = e
        start += len(r)


def _denoise_rows(wanted: list[Rows], denoise: Callable, max_rows: int | None):
    """The U-Net's output for the concatenated rows, in calls of at most max_rows rows."""
    if len(wanted) == 1 and (max_rows is None or len(wanted[0]) <= max_rows):
        return denoise(wanted[0].z_in, wanted[0].t, wanted[0].context)
    z_in, t, context = (cat([getattr(r, f) for r in wanted]) for f in ("z_in", "t", "context"))
    n = z_in.shape[0]
    size = n if max_rows is None else max_rows
    if size >= n:
        return denoise(z_in, t, context)
    return cat([denoise(z_in[i: i + size], t[i: i + size], context[i: i + size]) for i in range(0, n, size)])


def run(jobs: list, denoise: Callable, max_rows: int | None = None, raise_errors: bool = True) -> None:
    """Step every job to the end, one `tick` at a time. raise_errors: then raise the first failed job's
    error (the CLI's one edit); False leaves each failure on its job (`job.error`) for the caller."""
    while any(not job.done for job in jobs):
        tick(jobs, denoise, max_rows)
    failed = [job.error for job in jobs if job.error is not None]
    if raise_errors and failed:
        raise failed[0]


def check_steps(num_steps: int, scheduler) -> None:
    """Steps must fit the model's noise schedule (at most one per training timestep)."""
    limit = int(scheduler.config.num_train_timesteps)
    if not 1 <= num_steps <= limit:
        raise ConfigError(f"steps must be between 1 and {limit} (this model's noise schedule has {limit} "
                          f"timesteps), got {num_steps}")
