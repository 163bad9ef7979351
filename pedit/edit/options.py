"""How to edit: EditOptions, the settings of one edit. Imports no torch, so the torch-free runtime
(pedit.export.runtime_editor) and the photo path build them as the Editor does.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from pedit.data.directions import check_subject
from pedit.edit.guidance import GuidanceScales, check_edit_scale
from pedit.edit.user_mask import check_user_mask
from pedit.errors import ConfigError
from pedit.model.mask_settings import MaskConfig
from pedit.model.sampling_settings import check_sampling_fields, check_scheduler


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
