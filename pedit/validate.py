"""Field checks shared by the config dataclasses' `__post_init__` (every config validates itself).

Each raises ConfigError naming the field, what it must be and what it got, so the CLI, the Python
API and the tests share one gate and nothing NaN, infinite, negative or mistyped reaches the work.
"""

from __future__ import annotations

import math
import numbers
import re

from pedit.errors import ConfigError

SEED_MAX = 2**64 - 1  # torch.Generator.manual_seed takes 0 .. 2**64 - 1


def check_int(name: str, value, lo: int | None = None, hi: int | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ConfigError(f"{name} must be an integer, got {value!r}")
    _check_range(name, value, lo, hi)


def check_number(name: str, value, lo: float | None = None, hi: float | None = None,
                 lo_open: bool = False, hi_open: bool = False) -> None:
    """A finite real number in [lo, hi] (or an open end where asked)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ConfigError(f"{name} must be a number, got {value!r}")
    if not math.isfinite(value):
        raise ConfigError(f"{name} must be a finite number, got {value!r}")
    _check_range(name, value, lo, hi, lo_open, hi_open)


def check_seed(name: str, value, hi: int = SEED_MAX) -> None:
    check_int(name, value, 0, hi)


def _check_range(name, value, lo, hi, lo_open=False, hi_open=False) -> None:
    below = lo is not None and (value <= lo if lo_open else value < lo)
    above = hi is not None and (value >= hi if hi_open else value > hi)
    if below or above:
        left = "(" if lo_open else "["
        right = ")" if hi_open else "]"
        span = f"{left}{'-inf' if lo is None else lo}, {'inf' if hi is None else hi}{right}"
        raise ConfigError(f"{name} must be in {span}, got {value!r}")


BACKENDS = ("torch", "compile", "onnx", "trt")  # what runs the U-Net (pedit.export.backends)
PRECISIONS = ("fp32", "fp16", "bf16")  # pedit.edit.editor.PRECISIONS maps them to torch dtypes
_DEVICE = re.compile(r"(cpu|cuda|mps)(:\d+)?")


def check_choice(name: str, value, choices: tuple, what: str, optional: bool = False) -> None:
    if optional and value is None:
        return
    if not isinstance(value, str) or value not in choices:
        raise ConfigError(f"Unknown {what} {value!r} for {name}; choose from {', '.join(choices)}.")


def check_backend(name: str, value) -> None:
    check_choice(name, value, BACKENDS, "backend")


def check_precision(name: str, value, optional: bool = True) -> None:
    """fp32 | fp16 | bf16; None (where `optional`) means the device's default."""
    check_choice(name, value, PRECISIONS, "precision", optional)


def check_device(name: str, value, optional: bool = True) -> None:
    """cpu, cuda, cuda:N, mps (whether this machine has one is checked when the model loads)."""
    if optional and value is None:
        return
    if isinstance(value, str) and _DEVICE.fullmatch(value):
        return
    import torch  # only on the way to an error: which message fits

    try:
        torch.device(value)
    except (RuntimeError, TypeError):
        raise ConfigError(f"Unknown device {value!r}; use cpu, cuda or cuda:N.") from None
    raise ConfigError(f"Device {value!r} cannot run an edit; use cpu, cuda or cuda:N.")  # meta, xla, ...
