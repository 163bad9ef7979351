"""pedit.faces: detectors, landmarks, identity descriptors and the missing-model path.

Photos are skimage's astronaut (public domain) and transforms of it; the "other person" faces come
from skimage's LFW subset (25x25 grey faces). Tests that need dlib's face model skip without it;
the CNN detector (~9 s a photo on a CPU) is left to scripts/bench_faces.py.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import skimage.data

from pedit import faces
from pedit.errors import ConfigError, FaceModelMissing, InputImageError, PeditError
from pedit.faces import (SAME_PERSON_THRESHOLD, Face, HaarDetector, HogDetector, get_detector, identity,
                         identity_distance, image_identity_distance, largest_face)

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
needs_face_model = pytest.mark.skipif(not faces.face_model_available(), reason="needs pip install 'pedit[faces]'")

ASTRONAUT_HOG = (175, 76, 266, 167)  # dlib HOG (one upsample) on the 512x512 astronaut
ASTRONAUT_HAAR = (177, 66, 274, 163)


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    return skimage.data.astronaut()


@pytest.fixture(scope="module")
def hog():
    if not faces.face_model_available():
        pytest.skip("needs pip install 'pedit[faces]'")
    return HogDetector()


def close(box, want, tol) -> bool:
    return all(abs(a - b) <= tol for a, b in zip(box, want))


def test_haar_finds_the_astronaut_without_landmarks(astronaut):
    (face,) = HaarDetector().detect(astronaut)
    assert close(face.box, ASTRONAUT_HAAR, 2) and face.landmarks is None and face.score >= 5  # min_neighbors


@needs_face_model
def test_hog_finds_the_astronaut_with_five_landmarks(astronaut, hog):
    found = hog.detect(astronaut)
    face = found[0]
    assert face is largest_face(found) and close(face.box, ASTRONAUT_HOG, 2)
    assert face.landmarks.shape == (5, 2)
    x0, y0, x1, y1 = face.box
    assert ((face.landmarks >= (x0, y0)) & (face.landmarks <= (x1, y1))).all()
    left_eye, right_eye = faces.eye_centres(face.landmarks)
    nose = face.landmarks[4]
    assert left_eye[0] < nose[0] < right_eye[0] and nose[1] > max(left_eye[1], right_eye[1])
    # Her eyes are about 45 px apart in the 512 px image.
    assert 35 < np.linalg.norm(right_eye - left_eye) < 55


@pytest.mark.parametrize("name", ["haar", "hog"])
def test_detection_on_a_downscaled_copy_maps_boxes_back(astronaut, name):
    if name == "hog" and not faces.face_model_available():
        pytest.skip("needs the face model")
    # The astronaut 3x larger on a 3000x2000 canvas: every detector scans a copy of at most 1024 px.
    canvas = np.full((2000, 3000, 3), 90, np.uint8)
    canvas[500:2000, 1000:2536] = cv2.resize(astronaut, (1536, 1536), interpolation=cv2.INTER_CUBIC)[:1500]
    small = get_detector(name).detect(astronaut)[0]
    big = get_detector(name).detect(canvas)[0]
    want = (1000 + 3 * small.box[0], 500 + 3 * small.box[1], 1000 + 3 * small.box[2], 500 + 3 * small.box[3])
    assert close(big.box, want, 3 * 8)  # mapped back (a box left in the copy's pixels would be ~3x smaller)
    if big.landmarks is not None:
        assert np.abs(big.landmarks - (small.landmarks * 3 + (1000, 500))).max() < 3 * 4


@needs_face_model
def test_a_smaller_working_copy_finds_the_same_face(astronaut):
    full = HogDetector(max_side=1024).detect(astronaut)[0]
    half = HogDetector(max_side=256, upsample=1).detect(astronaut)[0]
    assert close(half.box, full.box, 8)


@needs_face_model
def test_distance_of_a_face_to_itself_is_zero_and_to_its_mirror_below_threshold(astronaut, hog):
    face = hog.detect(astronaut)[0]
    descriptor = identity(astronaut, face)
    assert descriptor.shape == (128,) and np.isfinite(descriptor).all()
    assert identity_distance(descriptor, identity(astronaut, face)) == 0.0
    mirror = image_identity_distance(astronaut, astronaut[:, ::-1], hog)
    assert 0.05 < mirror < SAME_PERSON_THRESHOLD  # not the same pixels, still the same person


@needs_face_model
def test_whole_face_replacement_is_another_person(astronaut, hog):
    x0, y0, x1, y1 = hog.detect(astronaut)[0].box
    pad = (x1 - x0) // 6
    region = np.s_[y0 - pad:y1 + pad, x0 - pad:x1 + pad]
    side = x1 - x0 + 2 * pad
    # Control: her own face in grey is still her, so what the next check sees is the new face.
    grey = astronaut.copy()
    grey[region] = cv2.cvtColor(cv2.cvtColor(astronaut[region], cv2.COLOR_RGB2GRAY), cv2.COLOR_GRAY2RGB)
    assert image_identity_distance(astronaut, grey, hog) < SAME_PERSON_THRESHOLD
    other_people = skimage.data.lfw_subset()[:100:33]  # the first 100 are faces
    for other in other_people:
        replaced = astronaut.copy()
        patch = cv2.resize((other * 255).astype(np.uint8), (side, side), interpolation=cv2.INTER_CUBIC)
        replaced[region] = patch[..., None]
        distance = image_identity_distance(astronaut, replaced, hog)
        assert distance is None or distance >= SAME_PERSON_THRESHOLD


@needs_face_model
def test_identity_of_a_haar_face_gets_landmarks_and_agrees_with_hog(astronaut, hog):
    haar_face = HaarDetector().detect(astronaut)[0]
    from_haar = identity(astronaut, haar_face)
    from_hog = identity(astronaut, hog.detect(astronaut)[0])
    assert identity_distance(from_haar, from_hog) < 0.1


@needs_face_model
def test_no_face_gives_none(astronaut, hog):
    flat = np.full((300, 400, 3), 128, np.uint8)
    assert hog.detect(flat) == [] and HaarDetector().detect(flat) == []
    assert image_identity_distance(astronaut, flat, hog) is None
    assert image_identity_distance(flat, astronaut, hog) is None


def test_get_detector_switches_by_name(monkeypatch):
    assert isinstance(get_detector("haar"), HaarDetector)
    with pytest.raises(ConfigError, match="Unknown face detector 'mtcnn'"):
        get_detector("mtcnn")
    if faces.face_model_available():
        default = get_detector()
        assert default.name == "hog, else haar"
        assert isinstance(default.first, HogDetector) and isinstance(default.second, HaarDetector)
        assert get_detector("hog").name == "hog" and get_detector("cnn").name == "cnn"
    monkeypatch.setattr(faces, "face_model_available", lambda: False)
    assert isinstance(get_detector(), HaarDetector)  # without dlib the default falls back to Haar


@needs_face_model
def test_default_detector_falls_back_to_haar_where_hog_finds_nothing(astronaut):
    from PIL import Image

    with Image.open(EXAMPLES / "toon.png") as im:
        toon = np.asarray(im.convert("RGB"))  # a cartoon face: HOG is blind to it, Haar is not
    assert HogDetector().detect(toon) == [] and len(HaarDetector().detect(toon)) == 1
    assert get_detector().detect(toon) == HaarDetector().detect(toon)
    hog_faces = HogDetector().detect(astronaut)
    found = get_detector().detect(astronaut)
    assert [f.box for f in found] == [f.box for f in hog_faces] and found[0].landmarks is not None


def test_detector_options_are_validated():
    with pytest.raises(ConfigError, match="max_side"):
        HaarDetector(max_side=0)
    with pytest.raises(ConfigError, match="scale_factor"):
        HaarDetector(scale_factor=1.0)
    with pytest.raises(ConfigError, match="upsample"):
        get_detector("hog", upsample=-1)
    with pytest.raises(ConfigError, match="named detector"):
        get_detector("default", max_side=512)


def test_bad_images_and_descriptors_are_refused():
    with pytest.raises(InputImageError, match=r"\(H, W, 3\) uint8"):
        HaarDetector().detect(np.zeros((64, 64), np.uint8))
    with pytest.raises(InputImageError):
        HaarDetector().detect(np.zeros((64, 64, 3), np.float32))
    with pytest.raises(ValueError, match=r"\(128,\)"):
        identity_distance(np.zeros(128), np.zeros(64))
    with pytest.raises(ValueError, match="empty"):
        Face((10, 10, 10, 20), 1.0)
    with pytest.raises(ValueError, match=r"\(5, 2\)"):
        Face((0, 0, 10, 10), 1.0, np.zeros((68, 2)))
    assert identity_distance(np.zeros(128), np.full(128, 0.5)) == pytest.approx(np.sqrt(128 * 0.25))


def test_faces_compare_by_value_landmarks_included():
    points = np.arange(10.0).reshape(5, 2)
    a = Face((0, 0, 10, 10), 1.0, points)
    assert a == Face((0, 0, 10, 10), 1.0, points.copy()) and a in [Face((0, 0, 10, 10), 1.0, points + 0)]
    assert a != Face((0, 0, 10, 10), 1.0, points + 1) and a != Face((0, 0, 10, 10), 1.0)
    assert a != Face((0, 0, 10, 11), 1.0, points) and len({a, Face((0, 0, 10, 10), 1.0, points.copy())}) == 1


@pytest.fixture
def no_face_model(monkeypatch):
    """dlib and face_recognition_models as if not installed (caches cleared before and after)."""
    import sys

    def clear():
        for loader in (faces._landmark_predictor, faces._identity_network, faces._hog_detector, faces._cnn_detector):
            loader.cache_clear()

    clear()
    monkeypatch.setitem(sys.modules, "dlib", None)  # `import dlib` now raises ImportError
    monkeypatch.setattr(faces, "_models_folder", lambda: None)
    real_find_spec = faces.importlib.util.find_spec
    monkeypatch.setattr(faces.importlib.util, "find_spec", lambda name, *a: None if name == "dlib" else real_find_spec(name, *a))
    yield
    monkeypatch.undo()
    clear()


def test_missing_face_model_says_how_to_install_it(astronaut, no_face_model):
    assert not faces.face_model_available()
    assert get_detector().name == "haar"  # editing still finds faces
    face = HaarDetector().detect(astronaut)[0]
    for call in (lambda: identity(astronaut, face), lambda: image_identity_distance(astronaut, astronaut),
                 lambda: get_detector("hog")):
        with pytest.raises(FaceModelMissing, match=r"pip install 'pedit\[faces\]'") as e:
            call()
        assert isinstance(e.value, PeditError)


def test_missing_model_files_are_named(monkeypatch, tmp_path):
    faces._identity_network.cache_clear()
    (tmp_path / "models").mkdir()
    monkeypatch.setattr(faces, "_models_folder", lambda: tmp_path / "models")
    try:
        assert not faces.face_model_available()
        with pytest.raises(FaceModelMissing, match="dlib_face_recognition_resnet_model_v1.dat is missing"):
            faces._identity_network()
    finally:
        faces._identity_network.cache_clear()
