"""The portrait square of a photo: find the face, crop the square the model edits, paste the edit back.

Paper §3.4 edits a square at the model's `resolution`. `edit_photo` finds the face (pedit.faces),
crops a head-and-shoulders square around it, framed from the eyes where the detector gives
landmarks, hands it to `edit_fn(square_rgb) -> (edited_rgb, soft_mask_L)`, and blends the result
back into the full-size photo so that every pixel the edit did not touch stays byte-identical
(docs/design-notes.md, "Pixels kept"). The model is only that callable, so all of this is tested without torch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image

from pedit.errors import InputImageError
from pedit.faces import Face, FaceDetector, eye_centres


@dataclass(frozen=True)
class Box:
    """An axis-aligned pixel rectangle: top-left corner (x, y), width w, height h."""

    x: int
    y: int
    w: int
    h: int


def portrait_crop_box(image_size: tuple[int, int], face: Box | None, margin: float = 1.0) -> Box:
    """The square head-and-shoulders crop around `face`, inside the image; no face → centred square.

    The side is the face size plus `margin` face widths on each side; the face sits centred
    horizontally and at 40% of the height, leaving room for hats and shoulders (costume edits).
    """
    width, height = image_size
    if face is None:
        side = min(width, height)
        return Box((width - side) // 2, (height - side) // 2, side, side)
    side = min(width, height, max(1, round(max(face.w, face.h) * (1 + 2 * margin))))
    x = face.x + face.w / 2 - side / 2
    y = face.y + face.h / 2 - 0.4 * side
    # Keep the whole face in the crop where it fits, then keep the crop in the image.
    x = min(max(x, face.x + face.w - side), face.x)
    y = min(max(y, face.y + face.h - side), face.y)
    x = int(np.clip(round(x), 0, width - side))
    y = int(np.clip(round(y), 0, height - side))
    return Box(x, y, side, side)


# The face box implied by the eyes, in eye distances (dlib HOG boxes on frontal faces: the astronaut's
# box is 91 px wide for eyes 43 px apart, its centre 18 px below them). Framing from the eyes rather
# than the detector's box gives the same person the same crop in every photo, whichever detector ran.
FACE_WIDTH_PER_EYE_DISTANCE = 2.1
FACE_CENTRE_BELOW_EYES = 0.42


def face_crop_box(image_size: tuple[int, int], face: Face | None, margin: float = 1.0) -> Box:
    """The square crop to edit: framed from the eyes when `face` has landmarks, else from its box."""
    if face is None:
        return portrait_crop_box(image_size, None, margin)
    return portrait_crop_box(image_size, _eye_framed_box(face) or face_box(face), margin)


def face_box(face: Face) -> Box:
    x0, y0, x1, y1 = face.box
    return Box(x0, y0, x1 - x0, y1 - y0)


def _eye_framed_box(face: Face) -> Box | None:
    """A square face box centred and scaled from the eye centres; None without usable landmarks."""
    if face.landmarks is None:
        return None
    left, right = eye_centres(face.landmarks)
    eye_distance = float(np.hypot(*(right - left)))  # rotation-invariant: a tilted head keeps its scale
    if eye_distance < 2:
        return None
    side = FACE_WIDTH_PER_EYE_DISTANCE * eye_distance
    cx, cy = (left + right) / 2 + (0, FACE_CENTRE_BELOW_EYES * eye_distance)
    return Box(round(cx - side / 2), round(cy - side / 2), max(1, round(side)), max(1, round(side)))


@dataclass
class PhotoEdit:
    """The result of edit_photo."""

    image: Image.Image  # full-size RGB result
    mask: Image.Image  # full-size L: the blend weight used (0 = pixel identical to the input)
    crop: Box  # the square that was edited
    face: Face | None  # the face the crop was built around
    faces_found: int


def edit_photo(
    photo_rgb: Image.Image,
    edit_fn: Callable[[Image.Image], tuple[Image.Image, Image.Image]],
    resolution: int,
    detector: FaceDetector | None = None,
    face_index: int | None = None,
    require_face: bool = False,
    margin: float = 1.0,
    region: np.ndarray | None = None,
) -> PhotoEdit:
    """Edit the portrait crop of a photo of any size with `edit_fn` and blend it back in.

    `region`: a user's mask, (H, W) floats in [0, 1] of any size, stretched to the photo; when
    given, its crop is resized like the square and passed on: `edit_fn(square, region_square)`.

    `edit_fn` gets an RGB square of `resolution` pixels and returns (edited RGB, soft mask L) of the
    same size. Only the crop is resized for the model; the blend is done at full resolution, so
    every pixel outside the crop, and inside it where the weight is 0, is byte-identical.
    """
    def one(*args):
        return [edit_fn(*args)]

    return edit_photo_many(photo_rgb, one, resolution, detector, face_index, require_face, margin, region)[0]


def edit_photo_many(
    photo_rgb: Image.Image,
    edit_fn: Callable[..., list[tuple[Image.Image, Image.Image]]],
    resolution: int,
    detector: FaceDetector | None = None,
    face_index: int | None = None,
    require_face: bool = False,
    margin: float = 1.0,
    region: np.ndarray | None = None,
) -> list[PhotoEdit]:
    """`edit_photo` for an `edit_fn` that returns several (edited, mask) results of one square (the
    directions of `Editor.edit_many`): the face is found and the crop made once, each result is
    blended back on its own."""
    rgb = photo_rgb if photo_rgb.mode == "RGB" else photo_rgb.convert("RGB")
    faces = [] if detector is None else find_faces(rgb, detector)
    face = choose_face(faces, face_index, require_face)
    crop = face_crop_box(rgb.size, face, margin)
    crop_xyxy = (crop.x, crop.y, crop.x + crop.w, crop.y + crop.h)

    # reducing_gap: a box pre-shrink then Lanczos; as sharp, and 6000 → 512 pixels takes a tenth of the time.
    square = rgb.crop(crop_xyxy).resize((resolution, resolution), Image.Resampling.LANCZOS, reducing_gap=3.0)
    if region is None:
        results = edit_fn(square)
    else:
        results = edit_fn(square, _region_square(region, rgb.size, crop_xyxy, resolution))
    return [_paste_back(rgb, crop, edited, mask, resolution, face, len(faces)) for edited, mask in results]


def _paste_back(rgb: Image.Image, crop: Box, edited: Image.Image, mask: Image.Image, resolution: int,
                face: Face | None, faces_found: int) -> PhotoEdit:
    """One edited square blended into the full photo by its (feathered-at-the-border) mask."""
    crop_xyxy = (crop.x, crop.y, crop.x + crop.w, crop.y + crop.h)
    if edited.size != (resolution, resolution) or mask.size != (resolution, resolution):
        raise ValueError(
            f"edit_fn returned image {edited.size} and mask {mask.size}; expected ({resolution}, {resolution})"
        )
    edited = edited.convert("RGB").resize((crop.w, crop.h), Image.Resampling.LANCZOS)
    # Bilinear, not Lanczos, for the mask: Lanczos rings, turning exact zeros near an edge into
    # small weights that would touch pixels the model meant to keep.
    mask = np.asarray(mask.convert("L").resize((crop.w, crop.h), Image.Resampling.BILINEAR))

    weight = (mask.astype(np.uint16) * _border_ramp(crop, rgb.size) + 127) // 255  # (h, w) in 0..255
    weight_image = Image.fromarray(weight.astype(np.uint8))
    out = rgb.copy()
    # PIL's paste with an L mask computes round((input*(255-m) + edited*m) / 255) per channel in
    # integers: exactly the input where m == 0 and exactly the edit where m == 255, without
    # full-size float arrays (an 8000x6000 photo stays cheap).
    out.paste(edited, crop_xyxy[:2], weight_image)
    full_mask = Image.new("L", rgb.size, 0)
    full_mask.paste(weight_image, crop_xyxy[:2])
    return PhotoEdit(image=out, mask=full_mask, crop=crop, face=face, faces_found=faces_found)


def _region_square(region: np.ndarray, photo_size: tuple[int, int], crop_xyxy, resolution: int) -> np.ndarray:
    """A mask of any size stretched to the photo, cropped like it, resized to the model's square."""
    img = Image.fromarray(np.rint(np.clip(region, 0, 1) * 255).astype(np.uint8))
    if img.size != photo_size:
        img = img.resize(photo_size, Image.Resampling.BILINEAR)
    square = img.crop(crop_xyxy).resize((resolution, resolution), Image.Resampling.BILINEAR)
    return np.asarray(square, dtype=np.float32) / 255.0


def find_faces(rgb: Image.Image, detector: FaceDetector) -> list[Face]:
    """The faces `detector` finds in an RGB image, largest first (index 0 is what --face-index 0 means)."""
    return sorted(detector.detect(np.asarray(rgb)), key=lambda f: f.area, reverse=True)


def choose_face(faces: list[Face], face_index: int | None, require_face: bool) -> Face | None:
    """Face `face_index` of `faces` (largest first), else the largest; None when there is none and
    `require_face` is off."""
    if face_index is not None:
        if not 0 <= face_index < len(faces):
            found = f"{len(faces)} face{'s' if len(faces) != 1 else ''}"
            valid = f" (valid: 0 to {len(faces) - 1}, largest first)" if faces else ""
            raise InputImageError(f"--face-index {face_index} is out of range: found {found}{valid}.")
        return faces[face_index]
    if not faces and require_face:
        raise InputImageError(
            "No face found in the photo; the detector sees frontal faces only. "
            "(drop --require-face to edit the centred square)"
        )
    return faces[0] if faces else None


def _border_ramp(crop: Box, image_size: tuple[int, int]) -> np.ndarray:
    """(h, w) uint8 weights: 0 on crop edges inside the image, rising smoothly to 255.

    An edge on the image border has no seam to hide, so it keeps full weight there (a costume
    reaching the bottom of a square photo is not faded out).
    """
    feather = max(2, round(0.08 * min(crop.w, crop.h)))

    def ramp(n: int, fade_start: bool, fade_end: bool) -> np.ndarray:
        i = np.arange(n, dtype=np.float64)
        d = np.full(n, np.inf)
        if fade_start:
            d = np.minimum(d, i)
        if fade_end:
            d = np.minimum(d, n - 1 - i)
        t = np.clip(d / feather, 0, 1)
        return np.rint(255 * t * t * (3 - 2 * t)).astype(np.uint16)  # smoothstep: no visible kink

    width, height = image_size
    rx = ramp(crop.w, crop.x > 0, crop.x + crop.w < width)
    ry = ramp(crop.h, crop.y > 0, crop.y + crop.h < height)
    return np.minimum(ry[:, None], rx[None, :])
