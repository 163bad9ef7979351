"""Identity preservation of an edit: is the face in the output still the person in the input?

Both images are cut to the square that was edited (everything outside it is byte-identical by
construction) and the largest face of each is compared with dlib's 128-d descriptor (pedit.faces):
below SAME_PERSON_THRESHOLD (0.6) it is the same person. Detecting inside the crop keeps the cost
flat whatever the photo's size: the face fills a third of the crop at the default margin, so a
512-pixel working copy is plenty.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from pedit.faces import (FaceDetector, HogDetector, face_model_available, identity, identity_distance, largest_face,
                         same_person)

MISSING_NOTE = "Identity check skipped: the face model is not installed (pip install 'pedit[faces]')."


def identity_detector() -> FaceDetector | None:
    """The detector identity checks use (HOG on a copy of at most 512 px); None without the face model."""
    return HogDetector(max_side=512, upsample=1) if face_model_available() else None


@dataclass(frozen=True)
class IdentityCheck:
    """The identity distance of an edit and what it means."""

    distance: float | None  # None when either image shows no face
    verdict: str  # "same person", "different person", "no face in the input", "no face in the output"


def check_identity(before: Image.Image, after: Image.Image, crop, detector: FaceDetector) -> IdentityCheck:
    """Compare the largest face inside `crop` (a Box, the square that was edited) of each image."""
    xyxy = (crop.x, crop.y, crop.x + crop.w, crop.y + crop.h)
    rgb_before = np.asarray(before.convert("RGB").crop(xyxy))
    rgb_after = np.asarray(after.convert("RGB").crop(xyxy))
    face_before = largest_face(detector.detect(rgb_before))
    if face_before is None:
        return IdentityCheck(None, "no face in the input")
    face_after = largest_face(detector.detect(rgb_after))
    if face_after is None:
        return IdentityCheck(None, "no face in the output")
    distance = identity_distance(identity(rgb_before, face_before), identity(rgb_after, face_after))
    return IdentityCheck(distance, "same person" if same_person(distance) else "different person")
