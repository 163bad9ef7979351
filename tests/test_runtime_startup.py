"""What a deployed `pedit edit` process spends its start on, kept small without changing any result.

dlib's frontal face detector takes about a second to build (it decodes a model embedded in dlib) and
milliseconds to load from the file dlib saves it to, so pedit.faces keeps that file in the cache.
Oracle: the detector dlib builds itself; the one loaded from the cache must find the same faces with
the same scores.
"""

from __future__ import annotations

import numpy as np
import pytest

from pedit import faces

needs_dlib = pytest.mark.skipif(not faces.face_model_available(), reason="needs pip install 'pedit[faces]'")


@needs_dlib
def test_the_cached_face_detector_finds_what_dlibs_own_finds(tmp_path, monkeypatch):
    import dlib
    from skimage import data

    from pedit.toon.world import render

    monkeypatch.setenv("PEDIT_CACHE", str(tmp_path))
    faces._hog_detector.cache_clear()
    try:
        first = faces._hog_detector()  # built, and saved into the cache
        saved = list((tmp_path / "faces").iterdir())
        assert [p.name for p in saved] == [f"frontal_face_detector-dlib-{dlib.__version__}.svm"]
        faces._hog_detector.cache_clear()
        loaded = faces._hog_detector()  # from the file
        built = dlib.get_frontal_face_detector()
        for image in (data.astronaut(), render(3, size=256), np.zeros((64, 64, 3), np.uint8)):
            want = built.run(image, 1, -0.5)  # a low threshold: weak detections must agree too
            for got in (first.run(image, 1, -0.5), loaded.run(image, 1, -0.5)):
                assert [(r.left(), r.top(), r.right(), r.bottom()) for r in got[0]] == \
                    [(r.left(), r.top(), r.right(), r.bottom()) for r in want[0]]
                assert got[1] == want[1] and got[2] == want[2]
        assert len(built.run(data.astronaut(), 1, 0.4)[0]) == 1  # the oracle finds the astronaut's face

        saved[0].write_bytes(b"damaged")  # a damaged file is rebuilt and saved over
        faces._hog_detector.cache_clear()
        assert len(faces._hog_detector().run(data.astronaut(), 1, 0.4)[0]) == 1
        assert saved[0].stat().st_size > 1000
    finally:
        faces._hog_detector.cache_clear()
