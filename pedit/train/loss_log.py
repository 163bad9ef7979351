"""loss.csv of a training run, kept exact across a resume (pedit.train.loop writes it)."""

from __future__ import annotations

import time
from pathlib import Path

import torch

from pedit.files import write_text_atomic


class LossLog:
    """loss.csv: one row per step, its loss kept on the device until a flush (one host sync per
    log interval). A resumed run keeps the rows up to its checkpoint's step: a run killed after
    logging steps its last checkpoint did not reach logs them again, once."""

    HEADER = "step,loss,lr,seconds\n"

    def __init__(self, path: Path, start: int, enabled: bool):
        self.path, self.enabled = path, enabled
        self.pending = []  # (step, loss tensor on the device, lr, seconds) until the next flush
        self.t0 = self.last = time.perf_counter()
        if enabled:
            kept = _rows_up_to(path, start) if start else []
            write_text_atomic(path, self.HEADER + "".join(kept), overwrite=True)

    def add(self, step: int, loss: torch.Tensor, lr: float) -> None:
        self.pending.append((step, loss, lr, time.perf_counter() - self.t0))

    def flush(self, accelerator, max_minutes: float | None) -> tuple[float, float, bool]:
        """Writes the pending rows; returns the last loss (mean over processes), steps/s since the
        last flush, and whether max_minutes of training have passed (all ranks agree)."""
        losses = accelerator.gather(torch.stack([p[1] for p in self.pending])[None]).mean(dim=0).tolist()
        now = time.perf_counter()
        rate = len(self.pending) / max(now - self.last, 1e-9)
        self.last = now
        if self.enabled:
            with open(self.path, "a") as fh:
                fh.writelines(f"{s},{l_:.6f},{lr:.3e},{sec:.2f}\n" for (s, _, lr, sec), l_ in zip(self.pending, losses))
        self.pending = []
        out_of_time = False
        if max_minutes is not None:  # all ranks must agree to stop at the same step
            late = torch.tensor([now - self.t0 > 60 * max_minutes], device=accelerator.device)
            out_of_time = bool(accelerator.gather(late).any())
        return losses[-1], rate, out_of_time


def _rows_up_to(path: Path, step: int) -> list[str]:
    """The data rows of a loss.csv whose step is at most `step` (unreadable rows are dropped)."""
    try:
        lines = path.read_text().splitlines()[1:]
    except (OSError, UnicodeDecodeError):
        return []
    kept = []
    for line in lines:
        head = line.split(",", 1)[0]
        if head.isdigit() and int(head) <= step:
            kept.append(line + "\n")
    return kept
