"""The `pedit` model's request and response: tensor names and types, and the settings a request may carry.

A request (every tensor batch-first, batch 1):
    photo       BYTES  [1, 1]  the photo file's bytes (JPEG, PNG, WebP, BMP, TIFF)
    directions  BYTES  [1, D]  direction names, one output each
    seed        INT64  [1, 1]
    settings    BYTES  [1, 1]  optional: JSON object of SETTINGS keys (sampling, mask, face crop)
    user_mask   BYTES  [1, 1]  optional: a greyscale image, white = may change (the CLI's --mask)
A response:
    edited      BYTES  [1, D]  PNG of each direction's result, the photo's size
    mask        BYTES  [1, D]  PNG (L) of the blend weight used (0 = the input's pixel kept exactly)
    identity    FP32   [1, D]  identity distance input → output (NaN without the face model or a face)

No input is a path: the server reads and writes no file a request names. Sizes are checked on the
encoded bytes before anything is decoded (MAX_REQUEST_BYTES, then the photo's pixel limit).
Errors come back as the response's error, `pedit: <pedit's message>`.
"""

from __future__ import annotations

import json
import math

from pedit.errors import ConfigError

MODEL = "pedit"
INPUTS = {"photo": "TYPE_STRING", "directions": "TYPE_STRING", "seed": "TYPE_INT64", "settings": "TYPE_STRING",
          "user_mask": "TYPE_STRING"}
OPTIONAL_INPUTS = ("settings", "user_mask")
OUTPUTS = {"edited": "TYPE_STRING", "mask": "TYPE_STRING", "identity": "TYPE_FP32"}
ERROR_PREFIX = "pedit: "
MAX_REQUEST_BYTES = 32 * 2**20  # photo + mask, encoded
MAX_DIRECTIONS = 16

# A request's settings: what `pedit edit` takes for one photo, by the same names (its flags, as fields).
# These are the edit's SamplingSettings (pedit.model.sampling_settings; unset: the model's own):
SAMPLING = ("steps", "scheduler", "guidance_interval", "s_s", "s_im", "s_p", "use_mask", "mask_noises", "mask_batch")
SETTINGS = {
    "steps": int, "scheduler": str, "guidance_interval": list, "s_s": float, "s_im": float, "s_p": float,
    "use_mask": bool, "mask_noises": int, "mask_batch": int, "mask_mode": str, "subject": str,
    "face": str,  # "detect" (default): crop around the face and paste back; "none": edit the photo as the square
    "face_index": int, "require_face": bool, "margin": float, "identity": bool,
}


def check_settings(settings) -> dict:
    """A request's settings object, its keys and types checked (values are checked by the edit's own
    configs, with their messages); ConfigError naming what is wrong."""
    if not isinstance(settings, dict):
        raise ConfigError(f"settings must be a JSON object, got {type(settings).__name__}.")
    unknown = sorted(set(settings) - set(SETTINGS))
    if unknown:
        raise ConfigError(f"Unknown setting(s) {', '.join(unknown)}; a request may set {', '.join(sorted(SETTINGS))}.")
    for key, value in settings.items():
        want = SETTINGS[key]
        ok = (isinstance(value, (int, float)) and not isinstance(value, bool)) if want is float else \
            (isinstance(value, int) and not isinstance(value, bool)) if want is int else isinstance(value, want)
        if not ok:
            raise ConfigError(f"Setting {key} must be {want.__name__}, got {value!r}.")
        if want is float and not math.isfinite(value):
            raise ConfigError(f"Setting {key} must be finite, got {value!r}.")
    if settings.get("face", "detect") not in ("detect", "none"):
        raise ConfigError(f"Setting face must be \"detect\" or \"none\", got {settings['face']!r}.")
    gi = settings.get("guidance_interval")
    if gi is not None and not (len(gi) == 2 and all(isinstance(v, (int, float)) for v in gi)):
        raise ConfigError(f"Setting guidance_interval must be [lo, hi], got {gi!r}.")
    return settings


def parse_settings(raw: bytes | None) -> dict:
    if raw is None or raw == b"":
        return {}
    try:
        value = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise ConfigError(f"settings is not JSON ({e}).") from None
    return check_settings(value)


def parse_directions(raw: list) -> list[str]:
    names = []
    for item in raw:
        try:
            name = item.decode("utf-8") if isinstance(item, bytes) else str(item)
        except UnicodeDecodeError:
            raise ConfigError("A direction name is not UTF-8.") from None
        names.append(name.strip())
    if not names or not all(names):
        raise ConfigError("directions must hold one or more direction names.")
    if len(names) > MAX_DIRECTIONS:
        raise ConfigError(f"{len(names)} directions in one request; at most {MAX_DIRECTIONS}.")
    return names


def check_sizes(photo: bytes, user_mask: bytes | None, limit: int = MAX_REQUEST_BYTES) -> None:
    from pedit.errors import InputImageError

    total = len(photo) + len(user_mask or b"")
    if total > limit:
        raise InputImageError(f"The request's photo and mask are {total:,} bytes, more than the server's limit of "
                              f"{limit:,}; send a smaller photo.")
    if not photo:
        raise InputImageError("The request's photo is empty (0 bytes).")
