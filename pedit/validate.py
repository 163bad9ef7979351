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


# ---- sections of a JSON settings file (pedit.json): names and types, checked at load (issue 27) ----------
# A section's spec maps each valid name to its type: a Python type or a tuple of them (JSON numbers: int
# and float; a bool is never a number), or a callable(value) -> bool for anything richer. None is never a
# value unless NoneType is listed. Reuse it for any section: pedit.model.loading checks the top level,
# "mask", "mask_by_task", "mask_by_direction" and "distilled" through it.
NUMBER = (int, float)


def check_section(where: str, name: str, value, spec: dict, required: tuple = ()) -> dict:
    """`value` (the section `name` of the file `where`) as a dict, or ValueError in one line: not a JSON object,
    a name not in `spec` (the closest valid one suggested, all of them listed), a required one missing, or a
    value of the wrong type (null included). name "": the file's top level."""
    label = f"\"{name}\"" if name else "the top level"
    if not isinstance(value, dict):
        raise ValueError(f"{where}: {label} must be a JSON object of {', '.join(spec)}, got {_json_name(value)}.")
    for key in value:
        if key not in spec:
            raise ValueError(f"{where}: {label} has no setting {key!r}{_did_you_mean(key, spec)}; "
                             f"the valid names are {', '.join(spec)}.")
    missing = [key for key in required if key not in value]
    if missing:
        raise ValueError(f"{where}: {label} is missing {', '.join(missing)}.")
    for key, v in value.items():
        if not _is(v, spec[key]):
            raise ValueError(f"{where}: \"{f'{name}.{key}' if name else key}\" must be {_type_name(spec[key])}, "
                             f"got {_json_name(v)}.")
    return value


def check_names(where: str, name: str, value: dict, valid, what: str) -> None:
    """ValueError when a key of the mapping `name` is not one of `valid` (e.g. task or direction names)."""
    valid = list(valid)
    for key in value:
        if key not in valid:
            raise ValueError(f"{where}: \"{name}\" names {what} {key!r}{_did_you_mean(key, valid)}, which this "
                             f"model does not have; the {what}s are {', '.join(valid)}.")


def _is(value, kind) -> bool:
    if callable(kind) and not isinstance(kind, type):
        return bool(kind(value))
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if isinstance(value, bool):
        return bool in kinds
    return isinstance(value, kinds)


def _type_name(kind) -> str:
    if callable(kind) and not isinstance(kind, type):
        return getattr(kind, "__doc__", None) or "valid"
    kinds = kind if isinstance(kind, tuple) else (kind,)
    names = {int: "an integer", float: "a number", str: "a string", bool: "true or false", dict: "a JSON object",
             list: "a list", type(None): "null"}
    if set(kinds) == {int, float}:
        return "a number"
    return " or ".join(names.get(k, k.__name__) for k in kinds)


def _json_name(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (dict, list)):
        return f"a JSON {'object' if isinstance(value, dict) else 'list'}"
    return repr(value)


def _did_you_mean(key, valid) -> str:
    import difflib

    close = difflib.get_close_matches(str(key), [str(v) for v in valid], n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""
