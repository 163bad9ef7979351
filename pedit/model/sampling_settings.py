"""The sampling settings a model folder carries in pedit.json, chosen by measurement (issue 18, item 2):

    "sampling": {"scheduler": "dpm", "steps": 8, "guidance_interval": [0.2, 0.8],
                 "chosen_by": "what was measured, on which pairs"}

They are the defaults of `pedit edit`, `eval`, `bench`, the web app and `Editor.edit` for that model;
a flag or an EditOptions field given explicitly wins. Absent: 20 DDIM steps, every step guided (the
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
SETTABLE = ("scheduler", "steps", "guidance_interval", "chosen_by")


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

    def __post_init__(self):
        from pedit.validate import check_int

        check_scheduler(self.scheduler)  # never None here
        check_int("steps", self.steps, 1, 1000)
        check_sampling_fields(self)


def sampling_for(meta: dict) -> Sampling:
    """The model folder's sampling defaults (pedit.json "sampling"; absent: the paper's sampler)."""
    settings = {k: v for k, v in meta.get("sampling", {}).items() if k != "chosen_by"}
    return Sampling(**settings)


def check_sampling_settings(meta: dict, where) -> None:
    """ValueError naming the bad entry when pedit.json's "sampling" is malformed."""
    settings = meta.get("sampling", {})
    if not isinstance(settings, dict) or set(settings) - set(SETTABLE):
        raise ValueError(f"{where}: \"sampling\" may only set {', '.join(SETTABLE)}.")
    try:
        sampling_for(meta)
    except ConfigError as e:
        raise ValueError(f"{where}: \"sampling\": {e}.") from None
