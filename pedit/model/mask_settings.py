"""The editing-mask settings a model folder carries in pedit.json: for all directions, per task, per direction.

    "mask": {"strength": 0.7, "dilate": 0.5},                 every direction
    "mask_by_task": {"expression": {"ratio": 4.0}},           overrides for a task
    "mask_by_direction": {"laughing": {"threshold": 0.6}}     overrides for one direction

Later levels override earlier ones field by field; anything unset is MaskConfig's default.
Settings are chosen on training identities only (docs/toon-model.md, scripts/tune_masks.py).
"""

from __future__ import annotations

import dataclasses

from pedit.edit.mask import MaskConfig
from pedit.errors import ConfigError

LEVELS = ("mask", "mask_by_task", "mask_by_direction")
SETTABLE = tuple(f for f in MaskConfig.__dataclass_fields__ if f != "batch")  # batch bounds memory: the runtime's choice


def check_mask_settings(meta: dict, where) -> None:
    """ValueError naming the bad entry when pedit.json's mask settings are malformed."""
    groups = [("mask", meta.get("mask", {}))]
    for level in LEVELS[1:]:
        by = meta.get(level, {})
        if not isinstance(by, dict):
            raise ValueError(f"{where}: \"{level}\" must map names to mask settings.")
        groups += [(f"{level}.{name}", v) for name, v in by.items()]
    for name, settings in groups:
        if not isinstance(settings, dict) or set(settings) - set(SETTABLE):
            raise ValueError(f"{where}: \"{name}\" may only set {', '.join(SETTABLE)}.")
        try:
            MaskConfig(**settings)  # its own validation of each value
        except ConfigError as e:
            raise ValueError(f"{where}: \"{name}\": {e}.") from None


def mask_config_for(meta: dict, direction=None, base: MaskConfig | None = None) -> MaskConfig:
    """MaskConfig for `direction` (a Direction with .name and .task, or None): base ← mask ← task ← direction."""
    settings = dict(meta.get("mask", {}))
    if direction is not None:
        settings.update(meta.get("mask_by_task", {}).get(getattr(direction, "task", None), {}))
        settings.update(meta.get("mask_by_direction", {}).get(direction.name, {}))
    return dataclasses.replace(base or MaskConfig(), **settings)
