"""A user's own mask (`pedit edit --mask FILE`), combined with the MCDM's editing mask (§3.4).

The user's mask is greyscale, any size, white = may change (grey = may change that much). It acts
twice, like the model's mask: in latent space it steers the masked two-branch sampling (Eq. 3),
one latent cell editable where any of its pixels is; in pixel space it is the blend weight, at
the user's own resolution, so the input is kept byte for byte wherever the user's mask is black.

Modes (the model's mask is all ones with `use_mask=False`, the paper's "w/o mask"):
- `replace`    the user's mask alone
- `intersect`  where both allow a change (the model's mask trimmed to the user's region)
- `union`      where either does (the model's mask plus the user's region)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from pedit.arrays import to_like, xp_of

from pedit.errors import ConfigError, InputImageError

MASK_MODES = ("replace", "intersect", "union")


def check_user_mask(mask, mask_mode: str) -> None:
    """The checks EditOptions makes on its user_mask and mask_mode fields."""
    if mask_mode not in MASK_MODES:
        raise ConfigError(f"mask_mode must be one of {', '.join(MASK_MODES)}, got {mask_mode!r}")
    if mask is None:
        return
    if not isinstance(mask, np.ndarray) or mask.ndim != 2 or min(mask.shape) < 1:
        raise ConfigError("user_mask must be a 2-D array (H, W) of weights in [0, 1]; use load_user_mask for a file")
    if not np.isfinite(mask).all() or mask.min() < 0 or mask.max() > 1:
        raise ConfigError("user_mask values must be finite and in [0, 1] (0 = keep, 1 = may change)")


def load_user_mask(source) -> np.ndarray:
    """A mask file, PIL image or array → float32 (H, W) in [0, 1]; colour and alpha are made greyscale.

    Read as photos are read (pedit.photos.photo): EXIF orientation applied, so the mask lands
    where it was drawn; 16-bit masks scaled from 65535, float ones in [0, 1] taken as they are;
    several pages or frames refused. A file read here has PIL's own pixel limit; `pedit edit`
    opens it under --max-pixels first (pedit.photos.mask_file)."""
    if isinstance(source, np.ndarray):
        arr = source.astype(np.float32)
        return arr / 255.0 if arr.max(initial=0) > 1 else arr
    name = getattr(source, "filename", None) or source
    if not isinstance(source, Image.Image) and not Path(source).is_file():
        raise InputImageError(f"Mask {source} does not exist (or is not a file).")
    try:
        image = source if isinstance(source, Image.Image) else Image.open(source)
        image.load()
        if getattr(image, "n_frames", 1) > 1 and image.format != "MPO":  # MPO: a phone JPEG's previews
            raise InputImageError(f"Mask {name} holds {image.n_frames} pages or frames ({image.format}); pedit "
                                  "reads one mask. Save the one you mean as its own file.")
        image = ImageOps.exif_transpose(image)  # a phone's mask photo: upright, as the photo is made upright
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise InputImageError(f"Mask {name} is not a readable image ({type(e).__name__}); "
                              "pass a greyscale PNG, white where the edit may change the picture.") from None
    return _grey(image, name)


def _grey(image: Image.Image, name) -> np.ndarray:
    """(H, W) float32 in [0, 1] from any PIL mode, by the mode's own range (no 8-bit clipping)."""
    if image.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        values = np.asarray(image, dtype=np.float64)
        if not np.isfinite(values).all() or values.min(initial=0) < 0:
            raise InputImageError(f"Mask {name} holds negative or non-finite values; a mask runs from black "
                                  "(keep) to white (may change).")
        top = values.max(initial=0)
        # Float data in [0, 1] is a weight already; integers (and larger floats) are 8 or 16 bit.
        scale = 1.0 if image.mode == "F" and top <= 1 else 255.0 if image.mode == "F" and top <= 255 else 65535.0
        return np.clip(values / scale, 0, 1).astype(np.float32)
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        image = image.convert("RGBA")
        rgb = Image.new("RGBA", image.size, (0, 0, 0, 255))
        image = Image.alpha_composite(rgb, image)  # transparent reads as black: keep
    return np.asarray(image.convert("L"), dtype=np.float32) / 255.0


@dataclass
class UserMask:
    pixels: np.ndarray  # (R, R) float32 blend weight in [0, 1]
    latent: np.ndarray  # (1, 1, h, w) float32 binary: cells with any allowed pixel


def user_mask_at(mask: np.ndarray, size: int, latent_size: int) -> UserMask:
    """The user's mask stretched to the model's square (size x size) and its latent grid."""
    img = Image.fromarray(np.rint(np.clip(mask, 0, 1) * 255).astype(np.uint8))
    if img.size != (size, size):
        img = img.resize((size, size), Image.Resampling.BILINEAR)
    pixels = np.asarray(img, dtype=np.float32) / 255.0
    cells = _adaptive_max(pixels, latent_size)[None, None]  # (1, 1, h, w)
    return UserMask(pixels, (cells > 0).astype(np.float32))


def _adaptive_max(x: np.ndarray, n: int) -> np.ndarray:
    """(S, S) → (n, n): the max over each of n x n windows [floor(i S / n), ceil((i + 1) S / n)), as
    adaptive max-pooling takes them."""
    s = x.shape[0]
    edges = [(i * s // n, -(-(i + 1) * s // n)) for i in range(n)]
    return np.array([[x[a:b, c:d].max() for c, d in edges] for a, b in edges], dtype=x.dtype)


def combine_latent(model, user, mode: str):
    """Latent masks (B, 1, h, w): the model's (None = all ones) with the user's, in the model's library
    and on its device (the user's numpy mask alone in the model's absence)."""
    if model is not None:
        user = to_like(user, model)
    if mode == "replace" or (model is None and mode == "intersect"):
        return user
    if model is None:  # union with everything
        return xp_of(user).ones_like(user)
    return model * user if mode == "intersect" else xp_of(model).maximum(model, user)


def combine_weight(model: np.ndarray | None, user: np.ndarray, mode: str) -> np.ndarray:
    """Pixel blend weights (R, R): the model's (None = all ones) with the user's."""
    if mode == "replace" or (model is None and mode == "intersect"):
        return user
    if model is None:
        return np.ones_like(user)
    return model * user if mode == "intersect" else np.maximum(model, user)
