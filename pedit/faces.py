"""Faces: detection (Haar, dlib HOG, dlib CNN), 5-point landmarks and 128-d identity descriptors.

Identity is measured with dlib's face-recognition ResNet (the `face_recognition_models` package,
CC0): a face, aligned by its 5 landmarks to a 150x150 chip, maps to a 128-d descriptor, and two
faces whose descriptors lie less than SAME_PERSON_THRESHOLD (0.6, Euclidean) apart are the same
person. That threshold is dlib's own (its `face_recognition.py` and `dnn_face_recognition_ex.cpp`
examples): at 0.6 the network scores 99.38% on the LFW face-verification benchmark. It is a
decision threshold, not a calibrated probability; docs/faces.md lists what it gives here (a face
and its mirror image: 0.19; the same place with another person's face: 0.64 and more).

Landmarks come from dlib's 5-point predictor (eye corners and the base of the nose), never the
68-point one: that one was trained on iBUG 300-W, whose terms restrict use. The face model is an
optional dependency (`pip install 'pedit[faces]'`); without it the Haar detector still works and
anything that needs identity raises FaceModelMissing, saying so.

Every detector works on a copy whose longest side is at most `max_side` (faces in phone photos are
far larger than any detector's smallest window) and maps its boxes back to the image it was given.
"""

from __future__ import annotations

import functools
import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from pedit.errors import ConfigError, FaceModelMissing, InputImageError, ModelError

__all__ = [
    "SAME_PERSON_THRESHOLD", "DETECTORS", "DEFAULT_DETECTOR", "Face", "FaceDetector", "HaarDetector", "HogDetector",
    "CnnDetector", "FallbackDetector", "FaceModelMissing", "get_detector", "face_model_available", "identity", "identity_distance",
    "image_identity_distance", "largest_face", "eye_centres", "same_person",
]

SAME_PERSON_THRESHOLD = 0.6  # dlib's: Euclidean distance of 128-d descriptors below it = same person
DETECTORS = ("haar", "hog", "cnn")
# Chosen by measurement (docs/faces.md, scripts/bench_faces.py): the detector with the fewest misses
# and false positives that stays under 1 s per 12 MP photo on 2 cores, with Haar as its fallback
# where it finds nothing (HOG never fires on the toon world's cartoon faces; Haar does).
# Without dlib: "haar" alone.
DEFAULT_DETECTOR = "hog"
DEFAULT_FALLBACK = "haar"

# File names inside face_recognition_models/models/ (the package's own accessors import
# pkg_resources, which recent setuptools no longer ship, so the files are found without importing it).
_MODEL_FILES = {
    "landmarks": "shape_predictor_5_face_landmarks.dat",
    "identity": "dlib_face_recognition_resnet_model_v1.dat",
    "cnn": "mmod_human_face_detector.dat",
}
_INSTALL_HINT = "Install the face model with: pip install 'pedit[faces]' (dlib-bin and face_recognition_models)."


@dataclass(frozen=True, eq=False)
class Face:
    """One detected face, in pixels of the image it was found in. Equal when every field is equal."""

    box: tuple[int, int, int, int]  # x0, y0, x1, y1 (x1, y1 exclusive)
    score: float  # detector-specific: Haar neighbour count, HOG SVM margin, CNN confidence
    landmarks: np.ndarray | None = None  # (5, 2) float x, y in dlib's 5-point order, or None (Haar)

    def __post_init__(self):
        x0, y0, x1, y1 = self.box
        if not (x1 > x0 and y1 > y0):
            raise ValueError(f"Face box {self.box} is empty; expected x0 < x1 and y0 < y1")
        if self.landmarks is not None and np.shape(self.landmarks) != (5, 2):
            raise ValueError(f"Face landmarks have shape {np.shape(self.landmarks)}; expected (5, 2)")

    def __eq__(self, other) -> bool:
        if not isinstance(other, Face):
            return NotImplemented
        if (self.landmarks is None) != (other.landmarks is None):
            return False
        same_landmarks = self.landmarks is None or np.array_equal(self.landmarks, other.landmarks)
        return self.box == other.box and self.score == other.score and same_landmarks

    def __hash__(self) -> int:
        return hash((self.box, self.score))

    @property
    def width(self) -> int:
        return self.box[2] - self.box[0]

    @property
    def height(self) -> int:
        return self.box[3] - self.box[1]

    @property
    def area(self) -> int:
        return self.width * self.height


class FaceDetector(Protocol):
    name: str

    def detect(self, rgb: np.ndarray) -> list[Face]:
        """(H, W, 3) uint8 RGB → faces in that image's pixels, largest first."""
        ...


def eye_centres(landmarks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(image-left eye, image-right eye) centres, each (2,), from dlib's 5 points.

    dlib's order: 0, 1 outer and inner corner of the eye on the image's right; 2, 3 outer and inner
    corner of the eye on the image's left; 4 the base of the nose.
    """
    points = np.asarray(landmarks, dtype=np.float64)
    return points[2:4].mean(axis=0), points[0:2].mean(axis=0)


def largest_face(faces: list[Face]) -> Face | None:
    return max(faces, key=lambda f: f.area, default=None)


def same_person(distance: float) -> bool:
    return distance < SAME_PERSON_THRESHOLD


# ---------------------------------------------------------------------------------------------- #
# The face model's files and dlib, loaded once per process


def _models_folder() -> Path | None:
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        folder = Path(location) / "models"
        if folder.is_dir():
            return folder
    return None


def face_model_available() -> bool:
    """True when dlib imports and the face model's files are installed."""
    if importlib.util.find_spec("dlib") is None:
        return False
    folder = _models_folder()
    return folder is not None and all((folder / name).is_file() for name in _MODEL_FILES.values())


def _dlib():
    try:
        import dlib
    except ImportError as e:
        raise FaceModelMissing(f"dlib is not installed, so faces cannot be identified or landmarked. {_INSTALL_HINT}") from e
    return dlib


def _model_file(kind: str) -> str:
    folder = _models_folder()
    if folder is None:
        raise FaceModelMissing(f"The face model (face_recognition_models) is not installed. {_INSTALL_HINT}")
    path = folder / _MODEL_FILES[kind]
    if not path.is_file():
        raise FaceModelMissing(f"The face model file {path} is missing. Reinstall it: {_INSTALL_HINT}")
    return str(path)


@functools.lru_cache(maxsize=None)
def _landmark_predictor():
    return _dlib().shape_predictor(_model_file("landmarks"))


@functools.lru_cache(maxsize=None)
def _identity_network():
    return _dlib().face_recognition_model_v1(_model_file("identity"))


@functools.lru_cache(maxsize=None)
def _hog_detector():
    """dlib's frontal face detector. Building it decodes the model embedded in dlib (about a second on
    2 cores, more than the rest of a toon edit); its saved form (dlib's own file format, not a
    pickle) loads in milliseconds, so it is saved into the cache ($PEDIT_CACHE/faces/) on first use."""
    import os

    from pedit.cache import cache_root
    from pedit.files import temp_path

    dlib = _dlib()
    path = cache_root("faces") / f"frontal_face_detector-dlib-{dlib.__version__}.svm"
    if path.is_file():
        try:
            return dlib.fhog_object_detector(str(path))
        except RuntimeError:
            pass  # a damaged file: built again and saved over below
    detector = dlib.get_frontal_face_detector()
    tmp = temp_path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        detector.save(str(tmp))
        os.replace(tmp, path)  # whole or absent: another process may be loading it
    except (OSError, RuntimeError):
        pass  # an unwritable cache costs the build next time, nothing else
    finally:
        tmp.unlink(missing_ok=True)
    return detector


@functools.lru_cache(maxsize=None)
def _cnn_detector():
    return _dlib().cnn_face_detection_model_v1(_model_file("cnn"))


# ---------------------------------------------------------------------------------------------- #
# Detectors


def _check_rgb(rgb) -> np.ndarray:
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise InputImageError(f"Expected an (H, W, 3) uint8 RGB image; got shape {rgb.shape}, dtype {rgb.dtype}.")
    return np.ascontiguousarray(rgb)  # dlib needs C order (a flipped view is not)


def _downscaled(rgb: np.ndarray, max_side: int) -> tuple[np.ndarray, float]:
    """A copy whose longest side is at most max_side (area-averaged), and its scale (≤ 1)."""
    height, width = rgb.shape[:2]
    scale = min(1.0, max_side / max(height, width))
    if scale == 1.0:
        return rgb, 1.0
    import cv2

    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return cv2.resize(rgb, size, interpolation=cv2.INTER_AREA), scale


def _box_back(x0: float, y0: float, x1: float, y1: float, scale: float, width: int, height: int):
    """A box found on the downscaled copy → a box in the original's pixels, clipped to it."""
    box = (int(np.clip(round(x0 / scale), 0, width - 1)), int(np.clip(round(y0 / scale), 0, height - 1)),
           int(np.clip(round(x1 / scale), 1, width)), int(np.clip(round(y1 / scale), 1, height)))
    return box if box[2] > box[0] and box[3] > box[1] else None


def _landmarks(rgb: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    """(5, 2) float64 landmarks inside `box`, predicted on the full-resolution image (~1 ms)."""
    dlib = _dlib()
    shape = _landmark_predictor()(rgb, dlib.rectangle(*box[:2], box[2] - 1, box[3] - 1))
    return np.array([[p.x, p.y] for p in shape.parts()], dtype=np.float64)


def _check_positive(name: str, value, kind=int) -> None:
    if not isinstance(value, kind) or isinstance(value, bool) or value <= 0:
        raise ConfigError(f"{name} must be a positive {kind.__name__}; got {value!r}")


class HaarDetector:
    """OpenCV's Haar cascade: bundled with OpenCV, no dlib needed, frontal faces only, no landmarks.

    The "alt2" frontal-face cascade: on the astronaut rescaled from 480 to 1024 pixels it finds the
    one face every time, where "haarcascade_frontalface_default.xml" also reports shoulder patches.
    """

    name = "haar"

    def __init__(self, max_side: int = 1024, scale_factor: float = 1.1, min_neighbors: int = 5,
                 min_face_fraction: float = 0.04, cascade: str = "haarcascade_frontalface_alt2.xml"):
        _check_positive("max_side", max_side)
        if not scale_factor > 1:
            raise ConfigError(f"scale_factor must be above 1; got {scale_factor!r}")
        if not 0 <= min_face_fraction < 1:
            raise ConfigError(f"min_face_fraction must be in [0, 1); got {min_face_fraction!r}")
        import cv2  # here, not at the top: `pedit --help` stays cheap

        path = Path(cv2.data.haarcascades) / cascade
        self._cascade = cv2.CascadeClassifier(str(path))
        if self._cascade.empty():
            raise ModelError(f"OpenCV's face cascade {path} is missing or unreadable. Reinstall opencv-python-headless.")
        self._cv2 = cv2
        self.max_side, self.scale_factor, self.min_neighbors = max_side, scale_factor, min_neighbors
        self.min_face_fraction = min_face_fraction

    def detect(self, rgb: np.ndarray) -> list[Face]:
        rgb = _check_rgb(rgb)
        height, width = rgb.shape[:2]
        small, scale = _downscaled(rgb, self.max_side)
        gray = self._cv2.cvtColor(small, self._cv2.COLOR_RGB2GRAY)
        min_side = max(24, round(self.min_face_fraction * min(gray.shape)))
        found, neighbours = self._cascade.detectMultiScale2(
            gray, scaleFactor=self.scale_factor, minNeighbors=self.min_neighbors, minSize=(min_side, min_side)
        )
        faces = []
        for (x, y, w, h), n in zip(found, np.ravel(neighbours)):
            box = _box_back(x, y, x + w, y + h, scale, width, height)
            if box is not None:
                faces.append(Face(box, float(n), None))
        return sorted(faces, key=lambda f: f.area, reverse=True)


class HogDetector:
    """dlib's HOG + linear SVM frontal-face detector, with 5-point landmarks.

    `upsample` doubles the copy's size that many times before scanning (its window is 80 pixels:
    one upsample finds faces down to about 40). Detections scoring below `min_score` are dropped:
    on the labelled set of scripts/bench_faces.py every false positive scored below 0.27 and every
    true face above 0.5 (dlib's own default, 0, keeps the false positives: shoulder and suit patches
    as large as the face, which "largest face first" would then pick). It costs some recall on
    blurry faces (docs/faces.md), which the default detector's Haar fallback recovers.
    """

    name = "hog"

    def __init__(self, max_side: int = 1024, upsample: int = 1, min_score: float = 0.4):
        _check_positive("max_side", max_side)
        if not isinstance(upsample, int) or not 0 <= upsample <= 3:
            raise ConfigError(f"upsample must be 0, 1, 2 or 3; got {upsample!r}")
        self.max_side, self.upsample, self.min_score = max_side, upsample, float(min_score)
        self._detector = _hog_detector()  # raises FaceModelMissing without dlib, at construction
        _landmark_predictor()

    def detect(self, rgb: np.ndarray) -> list[Face]:
        rgb = _check_rgb(rgb)
        height, width = rgb.shape[:2]
        small, scale = _downscaled(rgb, self.max_side)
        rects, scores, _ = self._detector.run(small, self.upsample, self.min_score)
        faces = []
        for rect, score in zip(rects, scores):
            box = _box_back(rect.left(), rect.top(), rect.right() + 1, rect.bottom() + 1, scale, width, height)
            if box is not None:
                faces.append(Face(box, float(score), _landmarks(rgb, box)))
        return sorted(faces, key=lambda f: f.area, reverse=True)


class CnnDetector:
    """dlib's CNN (MMOD) face detector: finds turned and tilted faces HOG misses, ~10x slower on a CPU."""

    name = "cnn"

    def __init__(self, max_side: int = 512, upsample: int = 0, min_score: float = 0.0):
        _check_positive("max_side", max_side)
        if not isinstance(upsample, int) or not 0 <= upsample <= 2:
            raise ConfigError(f"upsample must be 0, 1 or 2; got {upsample!r}")
        self.max_side, self.upsample, self.min_score = max_side, upsample, float(min_score)
        self._detector = _cnn_detector()
        _landmark_predictor()

    def detect(self, rgb: np.ndarray) -> list[Face]:
        rgb = _check_rgb(rgb)
        height, width = rgb.shape[:2]
        small, scale = _downscaled(rgb, self.max_side)
        faces = []
        for found in self._detector(small, self.upsample):
            if found.confidence < self.min_score:
                continue
            r = found.rect
            box = _box_back(r.left(), r.top(), r.right() + 1, r.bottom() + 1, scale, width, height)
            if box is not None:
                faces.append(Face(box, float(found.confidence), _landmarks(rgb, box)))
        return sorted(faces, key=lambda f: f.area, reverse=True)


class FallbackDetector:
    """`first`'s faces, or `second`'s where `first` finds none."""

    def __init__(self, first: FaceDetector, second: FaceDetector):
        self.first, self.second = first, second
        self.name = f"{first.name}, else {second.name}"

    def detect(self, rgb: np.ndarray) -> list[Face]:
        return self.first.detect(rgb) or self.second.detect(rgb)


def get_detector(name: str = "default", **options) -> FaceDetector:
    """A detector by name: "haar", "hog", "cnn", or "default".

    "default" is DEFAULT_DETECTOR with DEFAULT_FALLBACK where it finds nothing, or "haar" alone
    without the face model; `options` go to the named detector (not to "default").
    """
    if name == "default":
        if options:
            raise ConfigError("Options need a named detector (haar, hog or cnn), not 'default'.")
        if not face_model_available():
            return HaarDetector()
        return FallbackDetector(get_detector(DEFAULT_DETECTOR), get_detector(DEFAULT_FALLBACK))
    if name == "haar":
        return HaarDetector(**options)
    if name == "hog":
        return HogDetector(**options)
    if name == "cnn":
        return CnnDetector(**options)
    raise ConfigError(f"Unknown face detector {name!r}; choose one of {', '.join(DETECTORS)} or 'default'.")


# ---------------------------------------------------------------------------------------------- #
# Identity


def identity(rgb: np.ndarray, face: Face) -> np.ndarray:
    """The (128,) float64 identity descriptor of `face` in `rgb` (dlib's ResNet on the aligned chip).

    A face without landmarks (Haar) gets them from the 5-point predictor first.
    """
    dlib = _dlib()
    rgb = _check_rgb(rgb)
    network = _identity_network()
    x0, y0, x1, y1 = face.box
    rect = dlib.rectangle(x0, y0, x1 - 1, y1 - 1)
    points = face.landmarks if face.landmarks is not None else _landmarks(rgb, face.box)
    shape = dlib.full_object_detection(rect, dlib.points([dlib.point(round(x), round(y)) for x, y in points]))
    return np.asarray(network.compute_face_descriptor(rgb, shape), dtype=np.float64)


def identity_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Euclidean distance of two identity descriptors; below SAME_PERSON_THRESHOLD = same person."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != (128,) or b.shape != (128,):
        raise ValueError(f"identity descriptors must have shape (128,); got {a.shape} and {b.shape}")
    return float(np.linalg.norm(a - b))


def image_identity_distance(rgb_a: np.ndarray, rgb_b: np.ndarray, detector: FaceDetector | None = None) -> float | None:
    """Identity distance between the largest face of each image; None when either has no face.

    `detector` defaults to HOG alone (the detector dlib's identity network is paired with; no Haar
    fallback, which would hand it cartoon faces). Raises FaceModelMissing without the face model.
    """
    _identity_network()  # fail on a missing model before any detection work
    detector = detector if detector is not None else get_detector("hog")
    face_a = largest_face(detector.detect(rgb_a))
    if face_a is None:
        return None
    face_b = largest_face(detector.detect(rgb_b))
    if face_b is None:
        return None
    return identity_distance(identity(rgb_a, face_a), identity(rgb_b, face_b))
