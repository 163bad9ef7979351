"""An edit as a state that can be stepped beside others (paper §3.4 in its deployment form).

    job = EditJob([cond], [settings], scheduler_for, noise_scheduler, new_noise, rows_for(meta))
    run([job], denoise)                 # or many jobs at different steps, one denoise call a tick
    job.z_0[0], job.model_masks[0]      # the clean latent and the binary latent mask

EditJob holds one photo toward K >= 1 directions: the editing mask's noise draws (pedit.edit.mask.MaskJob,
shared by directions that draw the same noise), then the sampler's steps (pedit.edit.steps.SampleJob).
Whether the model is a teacher or a guidance-distilled student is its row builder's business
(pedit.edit.rows), never a flag here. Array-generic: torch tensors, or numpy in the torch-free runtime.
"""

from __future__ import annotations

from typing import Callable

from pedit.arrays import cat, tile_rows, to_host, to_like
from pedit.edit.mask import MaskJob, binarize, composite, keep_outside
from pedit.edit.options import sampler_groups
from pedit.edit.steps import Rows, SampleJob, run, tick
from pedit.edit.user_mask import combine_latent, combine_weight
from pedit.errors import ConfigError

__all__ = ["EditJob", "MaskJob", "Rows", "SampleJob", "jobs_by_sampler", "run", "run_by_sampler", "sampling_job", "tick"]


class EditJob:
    """One photo toward K >= 1 directions of one model, in phases: each group of directions whose masks
    draw the same noise gets one MaskJob (a fresh generator of the seed: the mask noise, then z_T);
    then the sampling, one SampleJob per direction (the same bytes as K separate edits) or, with
    `batch_steps`, one for all K (5K rows a step; equal to separate edits up to float rounding).

    conds: K EditConditions of the same image (B = 1). settings: K EditOptions of one sampler, differing
    only in their mask settings (a ConfigError otherwise: directions of several samplers are several
    jobs, `jobs_by_sampler`). scheduler_for(settings): a fresh
    scheduler. new_noise(seed): a fresh draw function of the seed, `draw(shape) -> array`.
    user: a user's mask (pedit.edit.user_mask.UserMask): its latent cells are combined with each model
    mask by the settings' mask_mode before sampling, its pixels blend the result (Editor.finish).
    """

    def __init__(self, conds: list, settings: list, scheduler_for: Callable, noise_scheduler, new_noise: Callable,
                 builder, batch_steps: bool = False, user=None,
                 callback: Callable[[int, int], None] | None = None):
        if len(sampler_groups(settings)) > 1:
            raise ConfigError("An EditJob's directions share one sampler (steps, seed, scales, scheduler, guidance "
                              "interval, mask use and mode); edit the others as their own jobs (jobs_by_sampler).")
        self.conds, self.settings, self.builder = conds, settings, builder
        self.scheduler_for, self.batch_steps = scheduler_for, batch_steps
        self.user = user
        self.callback = callback
        self.error: Exception | None = None  # set by the driver (pedit.edit.steps.tick) when a step failed
        k = len(conds)
        self.maps: list = [None] * k  # each direction's difference map (1, h, w), None without a mask
        self.model_masks: list = [None] * k  # (1, 1, h, w) binary, None without a mask
        self.masks: list = [None] * k  # what sampling used (with a user's mask combined in)
        self.z_T: list = [None] * k
        self.z_0: list = [None] * k
        mask_jobs = []  # (MaskJob, member indices); dropped from the queue, and memory, once run
        groups: dict[tuple, list[int]] = {}
        for i, s in enumerate(settings):
            key = (s.seed,) + ((s.mask.n_noise, s.mask.strength, s.mask.batch) if s.use_mask else ())
            groups.setdefault(key, []).append(i)
        for members in groups.values():
            s = settings[members[0]]
            draw = new_noise(s.seed)
            if s.use_mask:
                mask_jobs.append((MaskJob([conds[i] for i in members], s.scales, s.mask, noise_scheduler,
                                                draw, builder), members))
            z_T = draw(conds[0].c_s.shape)
            for i in members:
                self.z_T[i] = z_T
        self._sample_groups = [list(range(k))] if batch_steps else [[i] for i in range(k)]
        self._phase = None
        self._queue = [("mask", job) for job in mask_jobs] + [("sample", g) for g in self._sample_groups]
        self._steps_done = 0
        self._next_phase()

    @property
    def done(self) -> bool:
        return self.error is not None or self._phase is None

    @property
    def phase(self) -> str | None:
        """"mask" while the mask's draws run, "sample" during the steps, None when done."""
        return None if self._phase is None else self._phase[0]

    @property
    def total_steps(self) -> int:
        return self.settings[0].steps * len(self._sample_groups)

    def rows(self) -> Rows:
        return self._phase[1].rows()

    def advance(self, eps) -> None:
        kind, job, members = self._phase
        job.advance(eps)
        if not job.done:
            return
        if kind == "mask":
            for i, diff in zip(members, job.maps):
                self.maps[i] = diff[None] if diff.ndim == 2 else diff
                self.model_masks[i] = binarize(diff, self.settings[i].mask.ratio, self.settings[i].mask.threshold)
        else:
            for j, i in enumerate(members):
                self.z_0[i] = job.z[j: j + 1]
        self._next_phase()

    def _next_phase(self) -> None:
        while self._queue:
            kind, what = self._queue.pop(0)
            if kind == "mask":
                job, members = what
                self._phase = ("mask", job, members)
                return
            if what == self._sample_groups[0]:  # the masks are all known: combine the user's in, once
                self.masks = self._with_user(self.model_masks)
            self._phase = ("sample", self._sample_job(what), what)
            return
        self._phase = None

    def blend(self, i: int, original, raw, reconstruction=None):
        """Direction i's final image and blend weight: `raw` (R, R, 3) uint8 inside its mask, `original`'s
        exact bytes outside (pedit.edit.mask.keep_outside; a "pixel" refinement reads the difference map
        and may read `reconstruction`, the decoded c_s), a user's mask blended at pixel precision.
        Returns (image (R, R, 3) uint8, weight (R, R) float32): what the torch and runtime editors finish with."""
        options = self.settings[i]
        diff = None if self.maps[i] is None else to_host(self.maps[i])[0]  # (h, w)
        if self.user is None:
            return keep_outside(original, raw, self.masks[i], options.mask, diff, reconstruction)
        model = None if self.model_masks[i] is None else keep_outside(original, raw, self.model_masks[i], options.mask,
                                                                      diff, reconstruction)[1]
        weight = combine_weight(model, self.user.pixels, options.mask_mode)
        return composite(original, raw, weight), weight

    def _with_user(self, masks: list) -> list:
        if self.user is None:
            return masks
        mode = self.settings[0].mask_mode
        return [combine_latent(m, self.user.latent, mode) for m in masks]

    def _sample_job(self, members: list[int]) -> SampleJob:
        """One sampling loop over the members' latents (k, 4, h, w) of one image: their conditions stacked."""
        from pedit.model.conditions import EditConditions

        conds = [self.conds[i] for i in members]
        k, s = len(conds), self.settings[members[0]]
        stacked = EditConditions(tile_rows(conds[0].c_s, k), tile_rows(conds[0].c_im, k),
                                 *(cat([getattr(c, f) for c in conds]) for f in ("c_p_b", "c_p_a", "c_p_null")))
        mask = None if self.masks[members[0]] is None else cat([self.masks[i] for i in members])  # (k, 1, h, w)
        done_before = self._steps_done
        callback = None if self.callback is None else (
            lambda i, n: self.callback(done_before + i, self.total_steps))
        self._steps_done += s.steps
        return sampling_job(self.builder, self.scheduler_for(s), stacked, cat([self.z_T[i] for i in members]), mask,
                            s, callback)


def jobs_by_sampler(job_for: Callable, conds: list, settings: list, callback: Callable[[int, int], None] | None = None,
                    batch_steps: bool = False) -> list[tuple[EditJob, list[int]]]:
    """[(EditJob, member indices)]: one job per group of directions that share a sampler
    (pedit.edit.options.sampler_groups; a folder's "sampling_by_task" can give two tasks two samplers),
    made by `job_for(conds, settings, callback, batch_steps)` (an editor's `job`). Each job is what its
    directions alone would run, so a direction's bytes do not depend on the others' samplers; the jobs
    can run one after another or be ticked together (`run`). `callback(step, total)` counts the steps
    of all the jobs, as one job's did: one count of steps done that every job's steps add to, so it
    never goes back and ends at (total, total) whether the jobs run in turn or in the same ticks."""
    groups = sampler_groups(settings)
    total = sum(settings[g[0]].steps * (1 if batch_steps else len(g)) for g in groups)
    done = [0]  # steps done by all the jobs together
    jobs = []
    for members in groups:
        report = None if callback is None else _adding_to(done, total, callback)
        job = job_for([conds[i] for i in members], [settings[i] for i in members], report, batch_steps)
        jobs.append((job, members))
    return jobs


def _adding_to(done: list, total: int, callback: Callable[[int, int], None]) -> Callable[[int, int], None]:
    """A job's progress callback (its own steps done, its total) that adds its new steps to the shared
    count `done[0]` and reports that count against `total` (jobs_by_sampler)."""
    mine = [0]  # this job's steps already counted

    def report(i: int, n: int) -> None:
        done[0] += i - mine[0]
        mine[0] = i
        callback(done[0], total)

    return report


def run_by_sampler(jobs: list[tuple[EditJob, list[int]]], denoise: Callable, together: bool = False) -> None:
    """Run `jobs_by_sampler`'s jobs: one after another (each sampler's U-Net calls are the ones its
    directions make alone, so eager torch's batch-size-dependent rounding cannot reach across samplers),
    or with `together` ticked as one (`run`: fewer, larger calls, what `batch_steps` asks for)."""
    if together:
        run([job for job, _ in jobs], denoise)
        return
    for job, _ in jobs:
        run([job], denoise)


def sampling_job(builder, scheduler, cond, z_T, mask, settings, callback=None) -> SampleJob:
    """The sampler's steps of an edit from z_T (B, 4, h, w) under `mask` (B, 1, h, w) or None: the model's
    rows (`builder`, pedit.edit.rows) at the settings' scales and guidance interval. What EditJob runs
    after the mask, and what `pedit eval` runs for ours and its ablations."""
    mask = None if mask is None else to_like(mask, cond.c_s)
    plan = builder.plan(cond, settings.scales, mask, settings.guidance_interval, scheduler)
    return SampleJob(scheduler, z_T, plan, settings.steps, callback=callback)


