"""How an edit samples: the settings a model folder carries in pedit.json, and the one object a caller sets.

    "sampling": {"scheduler": "dpm", "steps": 8, "guidance_interval": [0.2, 0.8], "s_p": 5.0,
                 "chosen_by": "what was measured, on which pairs"},
    "sampling_by_task": {"expression": {"steps": 6, "chosen_by": "..."}}   laid over "sampling" for a task

`Sampling` is a folder's defaults; `SamplingSettings` is what a caller sets (every command's flags, the
app's request, the Python API), validated once, each field None where the model's own setting stands.
Editor.options_for lays a SamplingSettings over the folder's defaults for a direction; a field given wins. Absent: 20 DDIM steps, every step guided (the
paper's sampler). `guidance_interval`: the noise levels t / T whose steps are guided; the others
take every scale at 1, where the nested CFG telescopes to its fully conditioned row (2 U-Net rows
instead of 5, pedit.edit.guidance.unguided_eps). The mask's draws are a mask setting ("mask":
{"n_noise": 2}, pedit.model.mask_settings).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from pedit.errors import ConfigError

SCHEDULERS = ("ddim", "dpm", "euler")  # the samplers pedit.edit.sampler.make_scheduler builds
DEFAULT_SCALES = {"s_s": 1.5, "s_im": 1.0, "s_p": 4.0}  # (s_s, s_im, s_p) where nothing sets them: the one place
SETTABLE = ("scheduler", "steps", "guidance_interval", *DEFAULT_SCALES, "chosen_by")
MAX_DRAWS = 1024  # the editing mask's noise draws: the most an exported U-Net's mask profile is built for
# The largest |scale| a model folder's pedit.json may set. No real folder comes near it: the bundled ones
# keep the defaults (at most 4.0), scripts/tune_sampling.py writes no scales, and a student is trained on
# scales of at most 15 (pedit.model.distilled.MAX_SCALE). The guided prediction weights differences of
# unit-size predictions by each scale (pedit.edit.guidance.multi_cfg), so a scale of 1e300 ends in
# NaN or infinity after the work; 100 leaves room for any guidance choice and none of that.
MAX_FOLDER_SCALE = 100.0


def check_draws(name: str, value, low: int = 1) -> None:
    """ConfigError unless `value` is a whole number of mask draws in [low, MAX_DRAWS]: the one bound (and
    message) of the mask's draws for every caller: the settings, a folder's mask settings, `pedit export
    --n-noise` and the largest U-Net call an engine is sized for (pedit.export.backends.engines_for)."""
    from pedit.validate import check_int

    check_int(name, value, low, MAX_DRAWS)


def check_scheduler(name) -> None:
    """ConfigError unless `name` is a sampler pedit builds."""
    if name not in SCHEDULERS:
        raise ConfigError(f"scheduler must be one of {', '.join(SCHEDULERS)}, got {name!r}")


def check_guidance_interval(interval) -> tuple[float, float]:
    """(lo, hi) with 0 <= lo < hi <= 1: the noise levels t / T whose steps are guided; returned as a
    tuple of floats (a list from JSON or the Python API becomes hashable like the rest of the options)."""
    ok = (isinstance(interval, (tuple, list)) and len(interval) == 2
          and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in interval)
          and 0 <= interval[0] < interval[1] <= 1)
    if not ok:
        raise ConfigError(f"guidance_interval must be two noise levels lo,hi with 0 <= lo < hi <= 1 (t / T of the "
                          f"steps that are guided), got {interval!r}")
    return (float(interval[0]), float(interval[1]))


def check_sampling_fields(cfg) -> None:
    """The sampling fields a config may carry, each optional (None: the model folder's own): `scheduler`
    checked, `guidance_interval` checked and made a tuple in place (frozen dataclasses too). EditOptions,
    Sampling, and the edit, eval, bench and app configs all check through this."""
    if getattr(cfg, "scheduler", None) is not None:
        check_scheduler(cfg.scheduler)
    if getattr(cfg, "guidance_interval", None) is not None:
        object.__setattr__(cfg, "guidance_interval", check_guidance_interval(cfg.guidance_interval))


def guided_at(t, interval: tuple[float, float] | None, num_train_timesteps: int) -> bool:
    """Whether the step at timestep t (int, or Euler's float) is guided: its noise level t / T in `interval`."""
    if interval is None:
        return True
    return interval[0] <= float(t) / num_train_timesteps <= interval[1]


@dataclass(frozen=True)
class Sampling:
    """A model's default sampler: what an edit uses unless told otherwise."""

    scheduler: str = "ddim"
    steps: int = 20
    guidance_interval: tuple[float, float] | None = None
    s_s: float = DEFAULT_SCALES["s_s"]
    s_im: float = DEFAULT_SCALES["s_im"]
    s_p: float = DEFAULT_SCALES["s_p"]

    def __post_init__(self):
        from pedit.validate import check_int

        check_scheduler(self.scheduler)  # never None here
        check_int("steps", self.steps, 1, 1000)
        check_sampling_fields(self)
        check_scales(self)


def check_scales(cfg) -> None:
    """Each of cfg's s_s, s_im, s_p that is set: a finite number, and s_p not 0 (the text term is the
    only one that names the direction: at 0 the editing mask is empty and the edit changes nothing)."""
    from pedit.validate import check_number

    for name in DEFAULT_SCALES:
        if getattr(cfg, name) is not None:
            check_number(name, getattr(cfg, name))
    check_edit_scale(cfg.s_p)


def check_edit_scale(s_p) -> None:
    """An edit needs s_p != 0: the text term is the only one that differs between the two branches of
    Eq. 3 (p_b and p_a), so at 0 the editing mask is empty and the edit returns the input unchanged."""
    if s_p == 0:
        raise ConfigError("s_p = 0 removes the text condition, the only one that names the direction: the editing "
                          "mask comes out empty and the edit would change nothing. Use a non-zero --s-p (default 4.0).")


@dataclass(frozen=True)
class SamplingSettings:
    """What a caller sets about how an edit samples, validated here once for every command, the app and
    the Python API. None (a flag not given) leaves the model folder's setting for the direction (its
    pedit.json "sampling" and mask settings), else the paper's: 20 DDIM steps, every step guided,
    scales DEFAULT_SCALES, 10 mask draws, all in one call. Editor.options_for applies it; it is embedded
    whole in the configs of edit (EditFilesConfig), eval (EvalConfig, PhotoEvalConfig), bench
    (BenchConfig), the app's request and the serving request (pedit.serve.protocol)."""

    steps: int | None = None
    seed: int = 0
    scheduler: str | None = None
    guidance_interval: tuple[float, float] | None = None
    s_s: float | None = None
    s_im: float | None = None
    s_p: float | None = None
    use_mask: bool = True  # False: plain MCDM sampling, no editing mask (the paper's "w/o mask")
    mask_noises: int | None = None  # the editing mask's noise draws
    mask_batch: int | None = None  # draws per U-Net call of the mask (bounds memory; same mask); 0 = all in one call

    def __post_init__(self):
        from pedit.validate import check_int, check_seed

        if self.steps is not None:  # its upper bound is the model's noise schedule (pedit.edit.steps.check_steps)
            check_int("steps", self.steps, 1)
        check_seed("seed", self.seed)
        check_sampling_fields(self)  # scheduler, guidance_interval
        check_scales(self)
        if not isinstance(self.use_mask, bool):
            raise ConfigError(f"use_mask must be True or False, got {self.use_mask!r}")
        if self.mask_noises is not None:
            check_draws("mask_noises", self.mask_noises)
        if self.mask_batch is not None:
            check_draws("mask_batch", self.mask_batch, 0)


def check_settings(settings) -> None:
    """ConfigError unless `settings` is a SamplingSettings (what every config embeds whole)."""
    if not isinstance(settings, SamplingSettings):
        raise ConfigError(f"sampling must be a SamplingSettings, got {type(settings).__name__}")


def resolved(settings: SamplingSettings, model: Sampling) -> Sampling:
    """The sampler an edit runs: each of `settings`' scheduler, steps, guidance interval and scales that
    is given, else the model folder's (`model`, sampling_for(meta))."""
    def given(name):
        value = getattr(settings, name)
        return getattr(model, name) if value is None else value

    return Sampling(**{name: given(name) for name in ("scheduler", "steps", "guidance_interval", *DEFAULT_SCALES)})


def sampling_for(meta: dict, task: str | None = None) -> Sampling:
    """The model folder's sampling defaults for a direction of `task` (pedit.json "sampling", with
    "sampling_by_task"[task] laid over it; task None or absent there: "sampling" alone; absent: the
    paper's sampler). What a direction's edit, eval and bench run unless a caller's setting wins."""
    settings = dict(meta.get("sampling", {}))
    if task is not None:
        settings.update(meta.get("sampling_by_task", {}).get(task, {}))
    return Sampling(**{k: v for k, v in settings.items() if k != "chosen_by"})


def check_sampling_settings(meta: dict, where) -> None:
    """ValueError naming the bad entry when pedit.json's "sampling" or "sampling_by_task" is malformed: a
    section that is not an object, a setting that is not one of SETTABLE, a task that is not one, a bad
    value (each task's settings are checked laid over "sampling", as an edit reads them)."""
    from pedit.data.directions import TASKS
    from pedit.validate import check_names

    settings = meta.get("sampling", {})
    by_task = meta.get("sampling_by_task", {})
    if not isinstance(by_task, dict):
        raise ValueError(f"{where}: \"sampling_by_task\" must map task names to sampling settings, got "
                         f"{'null' if by_task is None else type(by_task).__name__}.")
    check_names(where, "sampling_by_task", by_task, TASKS, "task")
    for task, entry in [(None, settings), *by_task.items()]:
        name = "sampling" if task is None else f"sampling_by_task.{task}"
        if not isinstance(entry, dict) or set(entry) - set(SETTABLE):
            raise ValueError(f"{where}: \"{name}\" may only set {', '.join(SETTABLE)}.")
        try:
            check_folder_scales(sampling_for(meta, task))
        except ConfigError as e:
            raise ValueError(f"{where}: \"{name}\": {e}.") from None


def check_folder_scales(sampling: Sampling) -> None:
    """ConfigError unless each of a folder's sampler's scales is within +-MAX_FOLDER_SCALE."""
    from pedit.validate import check_number

    for name in DEFAULT_SCALES:
        check_number(name, getattr(sampling, name), -MAX_FOLDER_SCALE, MAX_FOLDER_SCALE)


def folder_samplers(meta: dict) -> list[tuple[str, Sampling, set]]:
    """[(pedit.json entry, Sampling, the fields the folder sets for it)] for every sampler a model folder
    can resolve: "sampling", and each task's "sampling_by_task" block laid over it (sampling_for); what a
    backend checks once at load (pedit.edit.options.check_folder_samplers)."""
    base = set(meta.get("sampling", {}))
    return [("sampling", sampling_for(meta), base)] + [
        (f"sampling_by_task.{task}", sampling_for(meta, task), base | set(entry))
        for task, entry in meta.get("sampling_by_task", {}).items()]
