"""Compare pedit's face detectors (Haar, dlib HOG, dlib CNN) on a small labelled set built offline.

    python scripts/bench_faces.py                        # all three; the CNN takes minutes on a CPU
    python scripts/bench_faces.py --detectors haar,hog --json bench.json
    python scripts/bench_faces.py --detectors cnn@1024     # NAME@N: a working copy of at most N pixels

The set is skimage's astronaut (one face, public domain) and transforms of it whose true face boxes
follow from the transform: mirror images, rotations up to ±30°, scales from a 40-pixel face to a
12-megapixel photo, crops, several faces composited onto one textured canvas, and faceless images
(other skimage pictures, the astronaut's suit without her head). A detection is a hit when its
centre lies within half a true face's width of that face's centre and its width is within a factor
of two of it (the detectors draw boxes of different proportions); detections matching no true face
are false positives. Time: median of --repeats runs of `detect` on a 4000x3000 (12 MP) photo,
downscaling included, in this process (set OMP_NUM_THREADS to the cores you mean).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import cv2
import numpy as np
import skimage.data

from pedit.faces import get_detector

ASTRONAUT_FACE = (176, 72, 270, 166)  # x0, y0, x1, y1 on the 512x512 astronaut (between Haar's and HOG's boxes)


def _texture(height: int, width: int, seed: int) -> np.ndarray:
    """A natural-looking background (gravel and grass photos, tiled and tinted) to tempt false positives."""
    rng = np.random.default_rng(seed)
    source = skimage.data.gravel() if seed % 2 else skimage.data.grass()
    tile = cv2.resize(source, (width, height), interpolation=cv2.INTER_LINEAR)
    tint = rng.uniform(0.6, 1.1, size=3)
    return np.clip(tile[..., None] * tint, 0, 255).astype(np.uint8)


def _place(canvas: np.ndarray, image: np.ndarray, x: int, y: int, scale: float, box=ASTRONAUT_FACE):
    """Paste `image` scaled by `scale` at (x, y) into canvas; return the face box it carries there."""
    h, w = image.shape[:2]
    resized = cv2.resize(image, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC)
    canvas[y:y + resized.shape[0], x:x + resized.shape[1]] = resized[: canvas.shape[0] - y, : canvas.shape[1] - x]
    return tuple(round(v * scale) + o for v, o in zip(box, (x, y, x, y)))


def _rotated(image: np.ndarray, degrees: float):
    """The astronaut rotated about her face centre; the true box: the same size at the same centre."""
    cx, cy = (ASTRONAUT_FACE[0] + ASTRONAUT_FACE[2]) / 2, (ASTRONAUT_FACE[1] + ASTRONAUT_FACE[3]) / 2
    matrix = cv2.getRotationMatrix2D((cx, cy), degrees, 1.0)
    return cv2.warpAffine(image, matrix, image.shape[1::-1], borderMode=cv2.BORDER_REFLECT), [ASTRONAUT_FACE]


def labelled_set() -> list[tuple[str, np.ndarray, list[tuple[int, int, int, int]]]]:
    """(name, RGB uint8 image, true face boxes) for every case."""
    a = skimage.data.astronaut()
    face_w = ASTRONAUT_FACE[2] - ASTRONAUT_FACE[0]
    x0, y0, x1, y1 = ASTRONAUT_FACE
    cases = [("astronaut 512", a, [ASTRONAUT_FACE]),
             ("mirrored", np.ascontiguousarray(a[:, ::-1]), [(512 - x1, y0, 512 - x0, y1)])]
    for degrees in (-30, -20, -10, 10, 20, 30):
        cases.append((f"rotated {degrees:+d}°", *_rotated(a, degrees)))
    for target in (40, 60, 100, 200):  # face width in pixels, on a 640x480 textured canvas
        canvas = _texture(480, 640, target)
        scale = target / face_w
        cases.append((f"face {target} px", canvas, [_place(canvas, a, 40, 30, scale)]))
    for target in (150, 600):  # 12 MP photos: a small and a large face
        canvas = _texture(3000, 4000, target)
        scale = target / face_w
        cases.append((f"12 MP, face {target} px", canvas, [_place(canvas, a, 1200, 300, scale)]))
    cases.append(("crop: head only", np.ascontiguousarray(a[30:230, 120:330]), [(x0 - 120, y0 - 30, x1 - 120, y1 - 30)]))
    cases.append(("crop: head and shoulders", np.ascontiguousarray(a[0:380, 60:400]), [(x0 - 60, y0, x1 - 60, y1)]))
    canvas = _texture(1200, 1600, 7)
    boxes = [_place(canvas, a, 50, 100, 1.2), _place(canvas, np.ascontiguousarray(a[:, ::-1]), 700, 80, 0.8,
                                                     (512 - x1, y0, 512 - x0, y1)), _place(canvas, a, 1150, 650, 0.7)]
    cases.append(("three faces on one canvas", canvas, boxes))
    faceless = {"coffee": skimage.data.coffee(), "chelsea (a cat)": skimage.data.chelsea(),
                "rocket": skimage.data.rocket(), "astronaut's suit (no head)": np.ascontiguousarray(a[200:, :]),
                "textured canvas": _texture(768, 1024, 3)}
    for name, image in faceless.items():
        cases.append((f"faceless: {name}", image, []))
    return cases


def lfw_set() -> list[tuple[str, np.ndarray, list[tuple[int, int, int, int]]]]:
    """A second set, not used to tune anything: skimage's LFW subset, 100 faces and 100 non-faces.

    Each 25x25 grey crop is upscaled to 120 px (bicubic) and centred on a 200x200 grey canvas;
    the faces are tight crops, so the true box is the pasted square.
    """
    crops = (skimage.data.lfw_subset() * 255).astype(np.uint8)
    cases = []
    for i, crop in enumerate(crops):
        canvas = np.full((200, 200), 128, np.uint8)
        canvas[40:160, 40:160] = cv2.resize(crop, (120, 120), interpolation=cv2.INTER_CUBIC)
        is_face = i < 100  # skimage documents the first 100 as faces
        cases.append((f"lfw {i}", cv2.cvtColor(canvas, cv2.COLOR_GRAY2RGB), [(40, 40, 160, 160)] if is_face else []))
    return cases


def _matches(found, truth) -> bool:
    fx, fy = (found[0] + found[2]) / 2, (found[1] + found[3]) / 2
    tx, ty = (truth[0] + truth[2]) / 2, (truth[1] + truth[3]) / 2
    tw, fw = truth[2] - truth[0], found[2] - found[0]
    return np.hypot(fx - tx, fy - ty) <= tw / 2 and 0.5 <= fw / tw <= 2


def score(detector, cases) -> dict:
    hits = misses = false_positives = 0
    rows = []
    for name, image, truth in cases:
        found = [f.box for f in detector.detect(image)]
        matched = {i for i, t in enumerate(truth) if any(_matches(f, t) for f in found)}
        extra = sum(1 for f in found if not any(_matches(f, t) for t in truth))
        hits, misses, false_positives = hits + len(matched), misses + len(truth) - len(matched), false_positives + extra
        rows.append({"case": name, "faces": len(truth), "hits": len(matched), "false_positives": extra})
    return {"hits": hits, "misses": misses, "false_positives": false_positives, "cases": rows}


def time_12mp(detector, repeats: int) -> tuple[float, float]:
    """Median (wall-clock, process CPU) seconds of one `detect` on a 12 MP photo.

    CPU time is reported beside wall-clock time because a shared machine stretches the latter.
    """
    canvas = _texture(3000, 4000, 11)
    _place(canvas, skimage.data.astronaut(), 1500, 500, 4.0)
    detector.detect(canvas)  # warm-up: model loading and first-call costs are not per-photo costs
    wall, cpu = [], []
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        detector.detect(canvas)
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return statistics.median(wall), statistics.median(cpu)


def time_identity_check(repeats: int) -> dict:
    """Median seconds `pedit edit` adds per photo for its identity check (pedit.photos.identity)."""
    from PIL import Image

    from pedit.photos.identity import check_identity, identity_detector
    from pedit.photos.portrait import edit_photo

    checker = identity_detector()
    photos = {"astronaut 512": skimage.data.astronaut()}
    canvas = _texture(3000, 4000, 11)
    _place(canvas, skimage.data.astronaut(), 1500, 500, 4.0)
    photos["12 MP, face 380 px"] = canvas
    results = {}
    for name, rgb in photos.items():
        image = Image.fromarray(rgb)
        edited = edit_photo(image, lambda sq: (sq, Image.new("L", sq.size, 0)), 64, get_detector())
        check_identity(image, edited.image, edited.crop, checker)  # warm-up
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            check_identity(image, edited.image, edited.crop, checker)
            times.append(time.perf_counter() - start)
        results[name] = statistics.median(times)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--detectors", default="haar,hog,cnn,cnn@1024,default")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", help="Also write the full results here.")
    parser.add_argument("--no-lfw", action="store_true", help="Skip the held-out LFW-subset check.")
    args = parser.parse_args()
    cases = labelled_set()
    n_faces = sum(len(t) for _, _, t in cases)
    print(f"{len(cases)} images, {n_faces} faces\n")
    print("| detector | hits | misses | false positives | s per 12 MP photo (median wall) | CPU s (median) |\n"
          "|---|---|---|---|---|---|")
    results = {}
    for name in args.detectors.split(","):
        kind, _, max_side = name.partition("@")
        detector = get_detector(kind, **({"max_side": int(max_side)} if max_side else {}))
        result = score(detector, cases)
        result["seconds_12mp"], result["cpu_seconds_12mp"] = time_12mp(
            detector, args.repeats if kind != "cnn" else max(1, args.repeats // 2))
        results[name] = result
        print(f"| {name} | {result['hits']}/{n_faces} | {result['misses']} | {result['false_positives']} | "
              f"{result['seconds_12mp']:.2f} | {result['cpu_seconds_12mp']:.2f} |", flush=True)
    print("\nper case (hits/faces, false positives):")
    for i, (case, _, truth) in enumerate(cases):
        cells = "  ".join(f"{n}: {r['cases'][i]['hits']}/{len(truth)} +{r['cases'][i]['false_positives']}"
                          for n, r in results.items())
        print(f"  {case:32s} {cells}")
    if not args.no_lfw:
        held_out = lfw_set()
        print("\nheld-out check, skimage's LFW subset (100 faces, 100 non-faces; 25 px crops upscaled to 120 px):")
        print("| detector | hits | misses | false positives |\n|---|---|---|---|")
        for name in args.detectors.split(","):
            kind, _, max_side = name.partition("@")
            detector = get_detector(kind, **({"max_side": int(max_side)} if max_side else {}))
            lfw = score(detector, held_out)
            results[name]["lfw"] = {k: lfw[k] for k in ("hits", "misses", "false_positives")}
            print(f"| {name} | {lfw['hits']}/100 | {lfw['misses']} | {lfw['false_positives']} |", flush=True)
    print("\nidentity check per photo (pedit edit, crop detection + 2 descriptors), median wall s:")
    results["identity_check_seconds"] = time_identity_check(args.repeats)
    for name, seconds in results["identity_check_seconds"].items():
        print(f"  {name:32s} {seconds:.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
