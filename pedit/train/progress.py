"""What `pedit train` reports while it runs (the command line draws it; pedit.train.loop sends it)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class TrainProgress:
    step: int
    max_steps: int
    loss: float
    steps_per_s: float
    event: str = "step"  # "step", "checkpoint", "validation", "resumed", "cache" (step = pairs encoded),
    # "dataset" (step = rows of a datasets source written to its pair folder)
    path: str | None = None
