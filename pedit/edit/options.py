"""How to edit: EditOptions, the settings of one edit, and how they are made from a model folder's
defaults and a caller's SamplingSettings. Imports no torch, so the torch Editor (pedit.edit.editor)
and the torch-free runtime (pedit.export.runtime_editor) build them with the same code.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np

from pedit.data.directions import check_subject
from pedit.edit.guidance import GuidanceScales
from pedit.edit.user_mask import check_user_mask
from pedit.errors import ConfigError
from pedit.model.mask_settings import MaskConfig, mask_config_for
from pedit.model.sampling_settings import (SamplingSettings, check_edit_scale, check_sampling_fields, check_scheduler,
                                           sampling_for)


@dataclass(frozen=True)
class EditOptions:
    """How to edit; CLI flags map 1:1 to these fields."""

    steps: int = 20
    seed: int = 0
    scales: GuidanceScales = field(default_factory=GuidanceScales)
    use_mask: bool = True
    mask: MaskConfig = field(default_factory=MaskConfig)
    scheduler: str = "ddim"
    user_mask: np.ndarray | None = field(default=None, compare=False)  # (H, W) in [0, 1], any size; 1 = may change
    mask_mode: str = "replace"  # how user_mask combines with the model's mask: replace, intersect, union
    subject: str | None = None  # fills "person" in the direction's template prompts ("old man"); None: as recorded
    # Guidance only where it matters: (lo, hi) noise levels t / T (T the schedule's training timesteps);
    # a step outside takes every scale at 1, 2 rows instead of 5 (pedit.edit.guidance.unguided_eps).
    # None: every step guided (the paper's sampler).
    guidance_interval: tuple[float, float] | None = None

    def __post_init__(self):
        from pedit.validate import check_int, check_seed

        check_int("steps", self.steps, 1)
        check_seed("seed", self.seed)
        if not isinstance(self.scales, GuidanceScales) or not isinstance(self.mask, MaskConfig):
            raise ConfigError("scales must be a GuidanceScales and mask a MaskConfig")
        check_scheduler(self.scheduler)  # never None here
        check_user_mask(self.user_mask, self.mask_mode)
        if self.subject is not None:
            check_subject(self.subject)
        check_edit_scale(self.scales.s_p)
        check_sampling_fields(self)


def default_options(meta: dict, direction=None, folder=None) -> EditOptions:
    """EditOptions with a model folder's settings (its pedit.json `meta`) for `direction` (a Direction or
    None): the editing mask's ("mask", then "mask_by_task", then "mask_by_direction";
    pedit.model.mask_settings; `folder`: the model folder a learned refiner's file is in) and the sampling
    ones ("sampling", then "sampling_by_task" for the direction's task: steps, scheduler, interval, scales)."""
    sampling = sampling_for(meta, getattr(direction, "task", None))
    return EditOptions(mask=mask_config_for(meta, direction, folder=folder), steps=sampling.steps,
                       scheduler=sampling.scheduler, guidance_interval=sampling.guidance_interval,
                       scales=GuidanceScales(sampling.s_s, sampling.s_im, sampling.s_p))


def options_for(defaults: EditOptions, settings: SamplingSettings | None = None, **fields) -> EditOptions:
    """`settings` (what a command's flags, the app or the caller set) laid over a folder's `defaults` for a
    direction: each field set wins, each None keeps the folder's. `fields`: EditOptions fields outside
    the sampling settings (mask_mode, subject, ...)."""
    d = defaults
    s = settings or SamplingSettings()

    def given(value, default):
        return default if value is None else value

    scales = GuidanceScales(given(s.s_s, d.scales.s_s), given(s.s_im, d.scales.s_im), given(s.s_p, d.scales.s_p))
    return dataclasses.replace(d, steps=given(s.steps, d.steps), seed=s.seed, scheduler=given(s.scheduler, d.scheduler),
                               guidance_interval=given(s.guidance_interval, d.guidance_interval), scales=scales,
                               use_mask=s.use_mask, mask=mask_for(d.mask, s), **fields)


def mask_for(mask: MaskConfig, settings: SamplingSettings | None = None) -> MaskConfig:
    """`settings`' mask draws and split laid over a folder's mask settings for a direction (each None
    keeps the folder's): what options_for does to the mask, for callers that size a U-Net call from a
    folder's pedit.json before any model loads."""
    s = settings or SamplingSettings()
    return dataclasses.replace(mask, n_noise=mask.n_noise if s.mask_noises is None else s.mask_noises,
                               batch=mask.batch if s.mask_batch is None else s.mask_batch)


# What one EditJob's directions share: its mask draws' seed and its sampler (the loop every direction
# of the job runs). Directions that differ in any of these run as separate jobs (sampler_groups).
SAMPLER_FIELDS = ("steps", "seed", "scales", "use_mask", "scheduler", "mask_mode", "guidance_interval")


def sampler_key(options: EditOptions) -> tuple:
    """What a direction's EditOptions must share with the others of its EditJob (SAMPLER_FIELDS)."""
    return tuple(getattr(options, name) for name in SAMPLER_FIELDS)


def sampler_groups(options: list, key=sampler_key) -> list[list[int]]:
    """The directions' indices grouped by sampler (`key` of each: sampler_key of EditOptions; eval passes
    Sampling objects, their own key), each group in the given order and the groups in order of their first
    direction: one EditJob per group (pedit.edit.job.jobs_by_sampler), one run per group in eval.
    A model folder's "sampling_by_task" gives an expression and a costume different samplers."""
    groups: dict = {}
    for i, o in enumerate(options):
        groups.setdefault(key(o), []).append(i)
    return list(groups.values())


def check_folder_samplers(meta: dict, where, scheduler, schedulers, backend: str) -> None:
    """ModelError naming `where` (the model's pedit.json, or an export's model.json), the entry and the
    field when a sampler the folder can resolve ("sampling", each task's "sampling_by_task" block laid
    over it; pedit.model.sampling_settings.folder_samplers) cannot run on `backend`: a scheduler outside
    `schedulers`, steps its noise schedule cannot give (`scheduler(sampling)` raises ConfigError), scales
    the folder sets outside a student's trained range (a student whose range leaves out the default
    scales it does not set still loads: its caller passes scales, pedit distill makes such students).
    Checked once at load (the torch Editor, the runtime editor, `pedit export`), so a folder that would
    fail every edit of a task fails there, before any work; the scales' bound is checked where pedit.json
    is read (check_sampling_settings)."""
    from pedit.errors import ModelError
    from pedit.model.distilled import check_meta_scales
    from pedit.model.sampling_settings import DEFAULT_SCALES, folder_samplers

    for name, sampling, fields in folder_samplers(meta):
        if sampling.scheduler not in schedulers:
            raise ModelError(f"{where}: \"{name}\": scheduler {sampling.scheduler!r} cannot run here: {backend} "
                             f"samples with {', '.join(schedulers)} only.")
        try:
            scheduler(sampling)
            if fields & set(DEFAULT_SCALES):
                check_meta_scales(meta, (sampling.s_s, sampling.s_im, sampling.s_p), sampling.guidance_interval)
        except ConfigError as e:
            raise ModelError(f"{where}: \"{name}\": {e}") from None


def plan_many(editor, directions, options=None, **overrides) -> list:
    """[(Direction, EditOptions)] for an editor's `edit_many` (the torch Editor's and the runtime's alike),
    checked before any work: unknown or repeated directions, steps a schedule cannot give, a student's
    scale range. `options`: one for all, one per direction, or None (each direction's
    `editor.default_options`). Directions whose samplers differ are edited as separate jobs
    (sampler_groups). The editor gives `direction`, `default_options`, `scheduler`, `distilled` and
    `distillation`."""
    from pedit.data.directions import Direction

    if isinstance(directions, (str, Direction)) or not directions:
        raise ConfigError("edit_many takes a non-empty list of directions")
    resolved = [editor.direction(d) for d in directions]  # DirectionError for an unknown name
    names = [d.name for d in resolved]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ConfigError(f"Direction(s) {', '.join(repeated)} given more than once; list each direction once.")
    if isinstance(options, (list, tuple)) and len(options) != len(resolved):
        raise ConfigError(f"edit_many got {len(options)} options for {len(resolved)} directions")
    per = options if isinstance(options, (list, tuple)) else [options] * len(resolved)
    plans = [(d, dataclasses.replace(o or editor.default_options(d), **overrides)) for d, o in zip(resolved, per)]
    plans = [(d.for_subject(o.subject), o) for d, o in plans]  # the prompts the text encoder sees
    for _, o in plans:
        editor.scheduler(o)  # steps the schedule cannot give fail here, before any work
        if editor.distilled:  # a student knows the scales it was distilled on, no others
            editor.distillation.check_edit(o.scales, o.guidance_interval)
    return plans
