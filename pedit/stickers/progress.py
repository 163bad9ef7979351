"""What sticker-pack reports as it goes: one event type for every stage (the pipeline's and the cartoon's)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

STAGES = ("augment", "fine-tune", "cartoonize", "edit", "pack")


@dataclass(frozen=True)
class StageProgress:
    stage: str  # one of STAGES
    done: int
    total: int
    info: str = ""
    skipped: bool = False


Progress = Callable[[StageProgress], None]
