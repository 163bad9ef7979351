"""A user's mask file (`pedit edit --mask FILE`) read under the rules photos are read by.

The same gate as `load_photo`: a regular file, a format pedit reads, the --max-pixels limit checked
on the header before any pixel is decoded (a 32 KB PNG of 12000² pixels decodes into 2.3 GB);
then pedit.edit.user_mask turns the image into weights (orientation, bit depth, frames).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pedit.errors import InputImageError, PeditError
from pedit.files import regular_file_problem
from pedit.photos.photo import DEFAULT_MAX_PIXELS, _open_image, _too_large


def load_mask_file(path: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """(H, W) float32 in [0, 1], upright; InputImageError saying what is wrong with the file."""
    from pedit.edit.user_mask import load_user_mask

    path = Path(path)
    if (why := regular_file_problem(path)) is not None:
        raise InputImageError(f"Mask {path} does not exist (or is not a file)." if why == "is missing"
                              else f"Mask {path} {why}; pass an image file.")
    try:
        im = _open_image(path, max_pixels)
    except InputImageError as e:  # photo's words, said of the mask: "Mask m.png is not an image ..."
        raise InputImageError(f"Mask {e}") from None
    with im:
        width, height = im.size
        if width * height > max_pixels:
            raise InputImageError(f"Mask {_too_large(path, max_pixels, f'{width}x{height} = {width * height:,} pixels')}")
        try:
            return load_user_mask(im)
        except PeditError:
            raise
        except Exception as e:  # a decoder's own exception: this file cannot be used
            raise InputImageError(f"Mask {path} could not be decoded ({type(e).__name__}: {e}).") from e


def empty_mask_problem(mask: np.ndarray, mask_mode: str, source) -> str | None:
    """Why an all-black mask cannot work with `mask_mode`, or None: with replace (the user's mask
    alone) or intersect (within it), black everywhere allows no change, and the "edit" would be the
    input, written with exit 0."""
    if mask_mode in ("replace", "intersect") and float(mask.max(initial=0)) == 0:
        return (f"Mask {source} is black everywhere: with --mask-mode {mask_mode} it leaves nothing to edit. "
                "Paint white where the edit may change the photo.")
    return None
