"""The editing-mask settings a model folder carries in pedit.json: for all directions, per task, per direction.

    "mask": {"strength": 0.7, "dilate": 0.5},                 every direction
    "mask_by_task": {"expression": {"ratio": 4.0}},           overrides for a task
    "mask_by_direction": {"laughing": {"threshold": 0.6}}     overrides for one direction

Later levels override earlier ones field by field; anything unset is MaskConfig's default.
MaskConfig lives here, below the editor (pedit.edit.mask uses it), because a model folder's
pedit.json carries it: loading validates it without importing the editing wing.
Settings are chosen on training identities only (docs/toon-model.md, scripts/tune_masks.py,
scripts/tune_pixel_mask.py).

"refine" says how the latent mask becomes the pixel blend weight: "latent" (the paper's binary
latent mask upsampled, dilated and feathered; pedit.edit.mask.pixel_mask) or "pixel" (the
difference map before binarisation, upsampled, softly thresholded and gated by where the decoded
edit changes colour, at pixel resolution; pedit.edit.pixel_mask) or "learned" (a small network,
whose weights are the file "refiner" in the model folder, predicts the edited region at pixel
resolution from the same inputs; pedit.edit.learned_mask, pedit.model.mask_refiner). A name pedit
cannot run, or a refiner file it cannot run, is refused when the model folder loads.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from pedit.errors import ConfigError


REFINEMENTS = ("latent", "pixel", "learned")  # how the pixel blend weight is made (module docstring)
CHANGE_FROM = ("input", "reconstruction")


@dataclass(frozen=True)
class MaskConfig:
    """How pedit.edit.mask draws the editing mask (paper §3.4) and blends the edit back in."""

    n_noise: int = 10  # N noise draws, all in one U-Net call
    strength: float = 0.5  # noise level as a fraction of the training timesteps
    ratio: float = 3.0  # clamp the difference map at mean x ratio before normalising
    threshold: float = 0.5
    dilate: float = 1.0  # in latent cells, before feathering
    feather: float = 0.5  # Gaussian sigma in latent cells
    keep_below: float = 0.0  # inside the mask, keep input pixels the edit changed by < keep_below / 2 levels (0: off)
    batch: int = 0  # noise draws per U-Net call (2 rows each); 0 = all N in one call. Bounds memory, same mask
    # The pixel blend weight: "latent" (dilate, feather, keep_below above, on the binary latent mask) or
    # "pixel" (pedit.edit.pixel_mask: the fields below). Each kind reads its own fields only, so switching
    # `refine` back gives the latent mask exactly as the folder set it.
    refine: str = "latent"
    prior_threshold: float = 0.6  # "pixel": the soft threshold of the upsampled difference map (scaled as binarize does)
    prior_band: float = 0.2  # "pixel": the ramp from prior_threshold - band (weight 0) to + band (weight 1)
    change_below: float = 48.0  # "pixel": a pixel takes the whole edit from this change (levels), none below half (0: off)
    change_from: str = "input"  # "pixel": change_below measures the edit's change from the input or its "reconstruction"
    edge_feather: float = 1.5  # "pixel": Gaussian sigma of the weight's outline, in pixels
    guide_radius: int = 0  # "pixel": guided-filter the upsampled map by the input, radius in px (0: off)
    # "learned" (pedit.edit.learned_mask): the refiner's file in the model folder (pedit.json: a file name; the
    # options an editor makes hold its path, mask_config_for's `folder`), and its own fields below, so the
    # pixel kind's settings stay as the folder chose them.
    refiner: str = ""
    refiner_threshold: float = 0.6  # "learned": the soft threshold of the refiner's probability
    refiner_band: float = 0.2  # "learned": the ramp from refiner_threshold - band (weight 0) to + band (weight 1)
    refiner_change_below: float = 0.0  # "learned": the pixel kind's change gate, from the input (0: off)
    refiner_feather: float = 1.0  # "learned": Gaussian sigma of the weight's outline, in pixels

    def __post_init__(self):
        from pedit.validate import check_int, check_number

        from pedit.model.sampling_settings import check_draws

        check_draws("n_noise", self.n_noise)
        check_draws("batch", self.batch, 0)
        check_number("strength", self.strength, 0, 1, lo_open=True)  # 0 noises nothing: no signal
        check_number("ratio", self.ratio, 0, lo_open=True)
        check_number("threshold", self.threshold, 0, 1, hi_open=True)  # 1: nothing could pass
        check_number("dilate", self.dilate, 0, 64)
        check_number("feather", self.feather, 0, 64)
        check_number("keep_below", self.keep_below, 0, 255)
        if self.refine not in REFINEMENTS:
            raise ConfigError(f"refine {self.refine!r} is not a mask refinement pedit can run; "
                              f"choose from {', '.join(REFINEMENTS)}")
        check_number("prior_threshold", self.prior_threshold, 0, 1)
        check_number("prior_band", self.prior_band, 0, 1)
        check_number("change_below", self.change_below, 0, 255)
        check_number("edge_feather", self.edge_feather, 0, 64)
        if self.change_from not in CHANGE_FROM:
            raise ConfigError(f"change_from must be one of {', '.join(CHANGE_FROM)}, got {self.change_from!r}")
        check_int("guide_radius", self.guide_radius, 0, 64)
        if not isinstance(self.refiner, str):
            raise ConfigError(f"refiner must be a file name, got {self.refiner!r}")
        check_number("refiner_threshold", self.refiner_threshold, 0, 1)
        check_number("refiner_band", self.refiner_band, 0, 1)
        check_number("refiner_change_below", self.refiner_change_below, 0, 255)
        check_number("refiner_feather", self.refiner_feather, 0, 64)
        if self.refine == "learned" and not self.refiner:
            raise ConfigError("refine \"learned\" needs \"refiner\": the refiner's file in the model folder")


LEVELS = ("mask", "mask_by_task", "mask_by_direction")
SETTABLE = tuple(f for f in MaskConfig.__dataclass_fields__ if f != "batch")  # batch bounds memory: the runtime's choice


def check_mask_settings(meta: dict, where, directions=None) -> None:
    """ValueError naming the bad entry when pedit.json's mask settings are malformed: a section that is not an
    object, a setting name that is not MaskConfig's (misspelled: the valid ones named), a task that is not
    one, a direction the model does not have (`directions`: its names; None: not checked), a null or bad value."""
    from pedit.data.directions import TASKS
    from pedit.validate import check_names, check_section

    from pedit.validate import NUMBER

    kinds = {"n_noise": int, "guide_radius": int, "refine": str, "change_from": str, "refiner": str}
    settable = {name: kinds.get(name, NUMBER) for name in SETTABLE}  # MaskConfig checks the ranges and names
    groups = []
    if "mask" in meta:
        groups.append(("mask", meta["mask"]))
    for level, names, what in (("mask_by_task", TASKS, "task"), ("mask_by_direction", directions, "direction")):
        if level not in meta:
            continue
        by = meta[level]
        if not isinstance(by, dict):
            raise ValueError(f"{where}: \"{level}\" must map {what} names to mask settings, got "
                             f"{'null' if by is None else type(by).__name__}.")
        if names is not None:
            check_names(where, level, by, names, what)
        groups += [(f"{level}.{name}", v) for name, v in by.items()]
    for name, settings in groups:
        check_section(where, name, settings, settable)
        try:
            MaskConfig(**settings)  # its own validation of each value
        except ConfigError as e:
            raise ValueError(f"{where}: \"{name}\": {e}.") from None


def mask_config_for(meta: dict, direction=None, base: MaskConfig | None = None, folder=None) -> MaskConfig:
    """MaskConfig for `direction` (a Direction with .name and .task, or None): base ← mask ← task ← direction.
    `folder`: the model folder, whose path a "refiner" file name is joined to (what an edit reads)."""
    settings = dict(meta.get("mask", {}))
    if direction is not None:
        settings.update(meta.get("mask_by_task", {}).get(getattr(direction, "task", None), {}))
        settings.update(meta.get("mask_by_direction", {}).get(direction.name, {}))
    if folder is not None and settings.get("refiner"):
        from pathlib import Path

        settings["refiner"] = str(Path(folder) / settings["refiner"])
    return dataclasses.replace(base or MaskConfig(), **settings)
