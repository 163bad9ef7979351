"""The editor the photo path runs with `--backend onnx|trt`: the runtime's stages behind the Editor's surface.

`pedit edit` (pedit.photos.edit_files) and the app call an editor's `default_options`, `plan_many`
and `edit_many`; `RuntimeEditor` gives them those over a Runtime (pedit.export.runtime) with the same
steps as the torch Editor's single edit, in numpy:

    1. conditions   c_s, c_im of the photo once, c_p of each direction's prompts (Runtime.conditions)
    2. job          the EditJob (pedit.edit.job) with the export's schedule table, numpy noise from the
                    seed (pedit.export.runtime.noise) and the model's row builder (pedit.edit.rows)
    3. steps        pedit.edit.job.run: one U-Net call (ONNX Runtime) a tick
    4. decode       the VAE decoder graph
    5. keep outside the composite (pedit.edit.mask), with a user's mask as the Editor combines it

`load_runtime_editor(model, backend, engines)` finds the exported folder (pedit.export.runtime_folder.
export_for: `-m` an exported folder, `--engines`, or the cache export, made with torch on first use).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable

import numpy as np

from pedit.errors import ConfigError
from pedit.export.runtime import Runtime, noise


@dataclass
class RuntimeResult:
    """What the photo path reads of an edit (the Editor's EditResult, without torch)."""

    image: object  # PIL RGB at the model's resolution; the input's bytes where `mask` is 0
    mask: object  # PIL L: the blend weight used
    raw: object  # PIL RGB: the decoded sample before compositing
    mask_latent: np.ndarray | None  # (1, 1, h, w) binary, None without a mask


class RuntimeEditor:
    """A Runtime with the Editor's surface: plan, then edit one photo toward one or more directions."""

    cache_failed = False
    cache_status = None

    def __init__(self, runtime: Runtime):
        from pedit.edit.options import check_folder_samplers
        from pedit.edit.rows import rows_for
        from pedit.export.runtime_files import MODEL_JSON
        from pedit.model.distilled import distilled_for

        self.runtime = runtime
        self.meta = runtime.meta
        self.directions = runtime.directions
        self.rows = rows_for(self.meta)  # a teacher's 5 rows a step, a student's 2
        self.distillation = distilled_for(self.meta)
        # every sampler the export's model.json can resolve runs here, checked once (ModelError naming the entry)
        check_folder_samplers(self.meta, runtime.export.folder / MODEL_JSON, self.scheduler, ("ddim",),
                              "the torch-free runtime")

    @property
    def resolution(self) -> int:
        return self.runtime.resolution

    @property
    def is_bundled(self) -> bool:
        return self.runtime.is_bundled

    @property
    def distilled(self) -> bool:
        return self.distillation is not None

    def direction(self, direction):
        return self.runtime.direction(direction)

    def default_options(self, direction=None):
        """The model's settings for `direction` (pedit.json's "mask…" and "sampling"), as the Editor's."""
        from pedit.edit.options import default_options

        return default_options(self.meta, None if direction is None else self.direction(direction),
                               self.runtime.export.folder)

    def options_for(self, direction, settings=None, **fields):
        """A caller's SamplingSettings laid over the model's defaults for `direction`, as the Editor's."""
        from pedit.edit.options import options_for

        return options_for(self.default_options(direction), settings, **fields)

    def scheduler(self, options):
        """DDIM over the export's alphas_cumprod table (the torch path's, bit for bit)."""
        from pedit.edit.sampler import check_steps
        from pedit.edit.schedules import ddim_scheduler

        if options.scheduler != "ddim":
            raise ConfigError(f"The torch-free runtime samples with ddim only, not {options.scheduler!r}; pass "
                              "--scheduler ddim, or edit with --backend torch.")
        export = self.runtime.export
        # clip_sample off, as pedit.edit.sampler.make_scheduler sets it for latents
        scheduler = ddim_scheduler({**export.scheduler_config, "clip_sample": False}, export.arrays["alphas_cumprod"])
        check_steps(options.steps, scheduler)
        return scheduler

    def plan_many(self, directions, options=None, **overrides):
        """[(Direction, EditOptions)] for `edit_many`, checked before any work (pedit.edit.options.plan_many)."""
        from pedit.edit.options import plan_many

        return plan_many(self, directions, options, **overrides)

    def job(self, conds: list, options: list, callback: Callable | None = None, batch_steps: bool = False):
        """The EditJob of one photo's conditions toward len(conds) directions, over numpy arrays."""
        from pedit.edit.job import EditJob
        from pedit.edit.schedules import noise_scheduler
        from pedit.edit.user_mask import user_mask_at

        first = options[0]
        user = None if first.user_mask is None else user_mask_at(first.user_mask, self.resolution,
                                                                 conds[0].c_s.shape[-1])
        export = self.runtime.export
        return EditJob(conds, options, self.scheduler,
                       noise_scheduler(export.scheduler_config, export.arrays["alphas_cumprod"]),
                       noise, self.rows, batch_steps, user, callback)

    def edit_many(self, image, directions, options=None, callback: Callable | None = None,
                  batch_steps: bool = False, **overrides) -> list[RuntimeResult]:
        """Edit `image` (PIL, any size; resized to the model's square) toward each of `directions`."""
        from pedit.data.pairs import square_rgb
        from pedit.edit.job import jobs_by_sampler, run_by_sampler

        plans = self.plan_many(directions, options, **overrides)
        original = square_rgb(image, self.resolution)  # (R, R, 3) uint8
        shared = self.runtime.image_conditions(original)
        conds = [self.runtime.conditions(shared, d) for d, _ in plans]
        jobs = jobs_by_sampler(self.job, conds, [o for _, o in plans], callback, batch_steps)
        run_by_sampler(jobs, self.runtime.denoise, together=batch_steps)
        results: list = [None] * len(plans)
        reconstruction = None  # decoded once a photo, for the first job that reads it
        for job, members in jobs:
            reconstruction = self.reconstruction(job) if reconstruction is None else reconstruction
            for j, i in enumerate(members):
                results[i] = finish(original, self.runtime.decode(job.z_0[j]), job, j, reconstruction)
        return results

    def reconstruction(self, job) -> np.ndarray | None:
        """The decoded c_s of the job's photo when a direction's mask refinement reads it, else None."""
        from pedit.edit.pixel_mask import needs_reconstruction

        if any(o.use_mask and needs_reconstruction(o.mask) for o in job.settings):
            return self.runtime.decode(job.conds[0].c_s)
        return None

    def edit(self, image, direction, options=None, callback: Callable | None = None, **overrides) -> RuntimeResult:
        return self.edit_many(image, [direction], options, callback, **overrides)[0]


def finish(original: np.ndarray, raw: np.ndarray, job, i: int, reconstruction: np.ndarray | None = None) -> RuntimeResult:
    """The result of the job's direction i: `raw` composited onto `original` by its blend weight, with
    the torch Editor's code (EditJob.blend).
    `reconstruction`: the decoded c_s of the photo, which a "pixel" mask refinement with change_from
    "reconstruction" reads (pedit.edit.pixel_mask.needs_reconstruction; `RuntimeEditor.reconstruction`)."""
    from PIL import Image

    out, weight = job.blend(i, original, raw, reconstruction)
    return RuntimeResult(image=Image.fromarray(out), mask=Image.fromarray(np.rint(weight * 255).astype(np.uint8)),
                         raw=Image.fromarray(raw), mask_latent=job.masks[i])


def load_runtime_editor(model=None, backend: str = "onnx", engines=None, log: Callable[[str], None] = lambda m: None,
                        allow_pickle: bool = False) -> RuntimeEditor:
    """The RuntimeEditor of `-m model` (a model folder, a bundled name, or an exported folder) for backend onnx|trt."""
    from pedit.export.runtime import check_backend
    from pedit.export.runtime_folder import export_for, refuse_other_backend

    refuse_other_backend(model, backend)
    check_backend(backend)  # before any export work
    return RuntimeEditor(Runtime.load(export_for(model, engines, log, allow_pickle), backend))
