"""Poses for gen-pairs: OpenPose-18 skeletons, where they come from and how they are drawn (paper §3.2).

A pose is 18 body keypoints in OpenPose's order (`KEYPOINTS`), x and y normalised to 0-1 over one
half of the pair (None = not visible). Sources:
  - `builtin`: head-and-shoulders portrait poses written for this project (`BUILTIN_POSES`), the
    default, so gen-pairs needs no photos;
  - a keypoints JSON: OpenPose's own output (`people[].pose_keypoints_2d`, 54 numbers x, y, c;
    pixels when `canvas_width`/`canvas_height` are given, else 0-1) or `{"poses": [{"id", "keypoints"}]}`;
  - a folder of photos, through controlnet_aux's OpenPose detector when it and its weights are there.

`draw_pose` paints a skeleton as the OpenPose ControlNet saw in training: black canvas, each of the
17 drawn limbs a filled ellipse in its OpenPose colour at 60 %, each keypoint a dot in full colour.
`pair_pose_image` puts the same drawing in both halves of the 2W canvas (pixel-exact twins).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from pedit.errors import PeditError, PoseError
from pedit.files import image_files, read_user_text

KEYPOINTS = ("nose", "neck", "r_shoulder", "r_elbow", "r_wrist", "l_shoulder", "l_elbow", "l_wrist", "r_hip",
             "r_knee", "r_ankle", "l_hip", "l_knee", "l_ankle", "r_eye", "l_eye", "r_ear", "l_ear")
N_KEYPOINTS = len(KEYPOINTS)
# OpenPose's body limbs (0-based pairs of KEYPOINTS) in its drawing order; the 17 first are drawn.
LIMBS = ((1, 2), (1, 5), (2, 3), (3, 4), (5, 6), (6, 7), (1, 8), (8, 9), (9, 10), (1, 11), (11, 12), (12, 13),
         (1, 0), (0, 14), (14, 16), (0, 15), (15, 17))
# OpenPose's colour wheel (RGB): limb i and keypoint i take colour i.
COLORS = ((255, 0, 0), (255, 85, 0), (255, 170, 0), (255, 255, 0), (170, 255, 0), (85, 255, 0), (0, 255, 0),
          (0, 255, 85), (0, 255, 170), (0, 255, 255), (0, 170, 255), (0, 85, 255), (0, 0, 255), (85, 0, 255),
          (170, 0, 255), (255, 0, 255), (255, 0, 170), (255, 0, 85))
LIMB_ALPHA = 0.6  # limbs are drawn at 60 % of their colour, keypoints at 100 %

Point = tuple[float, float] | None


def _finite_number(v) -> bool:
    """A finite int or float; JSON's true/false are not coordinates."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


@dataclass(frozen=True)
class Pose:
    id: str
    keypoints: tuple[Point, ...]  # 18 (x, y) in 0-1 of one half, or None

    def __post_init__(self):
        if len(self.keypoints) != N_KEYPOINTS:
            raise PoseError(f"pose {self.id!r} has {len(self.keypoints)} keypoints; OpenPose's body layout has 18.")
        for name, p in zip(KEYPOINTS, self.keypoints):
            if p is None:
                continue
            if len(p) != 2 or not all(_finite_number(v) for v in p):
                raise PoseError(f"pose {self.id!r}: {name} must be [x, y] numbers or null, got {p!r}.")
        if sum(p is not None for p in self.keypoints) < 2:
            raise PoseError(f"pose {self.id!r} has fewer than 2 visible keypoints: nothing to draw.")

    def jittered(self, scale: float, dx: float, dy: float, mirror: bool = False) -> "Pose":
        """The pose scaled about its neck (or centre), shifted, and optionally mirrored (left ↔ right)."""
        neck = self.keypoints[1] or (0.5, 0.5)
        pts = [None if p is None else (neck[0] + (p[0] - neck[0]) * scale + dx, neck[1] + (p[1] - neck[1]) * scale + dy)
               for p in self.keypoints]
        if mirror:
            swap = {2: 5, 3: 6, 4: 7, 8: 11, 9: 12, 10: 13, 14: 15, 16: 17}
            swap.update({v: k for k, v in swap.items()})
            pts = [None if pts[swap.get(i, i)] is None else (1 - pts[swap.get(i, i)][0], pts[swap.get(i, i)][1])
                   for i in range(N_KEYPOINTS)]
        return Pose(self.id, tuple(pts))


# Pitch (nodding) of a head seen from the front, projected orthographically. Rotate the head back by
# θ (chin up: θ > 0) about a horizontal axis: a point `h` above the nose tip and `d` behind it then
# appears h·cos θ − d·sin θ above the nose tip. The nose tip is the most forward point, so as the
# chin comes up every other keypoint moves down relative to it:
#   eyes (h = g, the frontal eye–nose gap; d = EYE_DEPTH·g): gap(θ) = g·cos θ − EYE_DEPTH·g·sin θ.
#        Chin up: the gap shrinks (the face foreshortens, the nose rises toward the eyes);
#        chin down: it grows.
#   ears (h = EAR_RISE, a little above the nose tip; d = EAR_DEPTH·g, far behind it):
#        rise(θ) = EAR_RISE·cos θ − EAR_DEPTH·g·sin θ. Chin up: the ears drop below the nose;
#        chin down: they rise to eye level: OpenPose's main pitch cue.
# Depths from an adult head: the eyes sit ≈ 0.6 eye–nose gaps behind the nose tip, the ear
# openings ≈ 2.2 gaps. At θ = 0 both give the frontal offsets exactly.
EYE_DEPTH = 0.6
EAR_DEPTH = 2.2
EAR_RISE = 0.01  # the frontal ear keypoint sits this far above the nose tip (0-1 of the half)


def pitch_offsets(eye_gap: float, pitch_deg: float) -> tuple[float, float]:
    """(eyes, ears) heights above the nose tip (0-1 of the half; image y grows downward, so the
    keypoints sit at nose_y − these) for a head pitched `pitch_deg` degrees (> 0: chin up)."""
    t = math.radians(pitch_deg)
    return (eye_gap * math.cos(t) - EYE_DEPTH * eye_gap * math.sin(t),
            EAR_RISE * math.cos(t) - EAR_DEPTH * eye_gap * math.sin(t))


def _portrait(pid: str, nose, eyes_dx=0.055, eyes_dy=-0.05, ears=(True, True), neck=(0.5, 0.66),
              shoulder_dx=0.27, shoulder_tilt=0.0, elbows=False, pitch=0.0) -> Pose:
    """A head-and-shoulders pose from a few numbers (0-1 of the half): where the nose points, how
    the head turns (an ear hidden) and nods (`pitch` degrees, > 0 chin up: `pitch_offsets`), how
    the shoulders sit. `eyes_dy` is the frontal eyes' offset from the nose (negative: above)."""
    nx, ny = nose
    turn = nx - neck[0]  # the face turns toward the side the nose moved to
    eyes_up, ears_up = pitch_offsets(-eyes_dy, pitch)
    pts: list[Point] = [None] * N_KEYPOINTS
    pts[0] = (nx, ny)
    pts[1] = neck
    pts[2] = (neck[0] - shoulder_dx, neck[1] + 0.02 + shoulder_tilt)  # right shoulder: image left
    pts[5] = (neck[0] + shoulder_dx, neck[1] + 0.02 - shoulder_tilt)
    if elbows:
        pts[3] = (pts[2][0] - 0.05, min(pts[2][1] + 0.3, 0.99))
        pts[6] = (pts[5][0] + 0.05, min(pts[5][1] + 0.3, 0.99))
    pts[14] = (nx - eyes_dx + turn * 0.3, ny - eyes_up)
    pts[15] = (nx + eyes_dx + turn * 0.3, ny - eyes_up)
    if ears[0]:
        pts[16] = (nx - 0.12 + turn * 0.8, ny - ears_up)
    if ears[1]:
        pts[17] = (nx + 0.12 + turn * 0.8, ny - ears_up)
    return Pose(pid, tuple(pts))


# Head-and-shoulders portraits, as the paper's pairs are (Figures 2, 3): frontal, turned, tilted, close.
BUILTIN_POSES: dict[str, Pose] = {
    p.id: p
    for p in [
        _portrait("frontal", (0.5, 0.42)),
        _portrait("frontal-close", (0.5, 0.40), eyes_dx=0.075, eyes_dy=-0.07, neck=(0.5, 0.74), shoulder_dx=0.36),
        _portrait("frontal-wide", (0.5, 0.46), eyes_dx=0.04, eyes_dy=-0.035, neck=(0.5, 0.62), shoulder_dx=0.2,
                  elbows=True),
        _portrait("turn-left", (0.44, 0.42), ears=(False, True)),
        _portrait("turn-right", (0.56, 0.42), ears=(True, False)),
        _portrait("three-quarter-left", (0.47, 0.43), shoulder_tilt=0.02, ears=(True, True)),
        _portrait("three-quarter-right", (0.53, 0.43), shoulder_tilt=-0.02, ears=(True, True)),
        _portrait("tilt-left", (0.47, 0.42), eyes_dy=-0.04, shoulder_tilt=0.03),
        _portrait("tilt-right", (0.53, 0.42), eyes_dy=-0.04, shoulder_tilt=-0.03),
        _portrait("chin-up", (0.5, 0.39), pitch=20.0),
        _portrait("chin-down", (0.5, 0.46), pitch=-20.0),
        _portrait("shoulders-tilted", (0.51, 0.42), shoulder_tilt=0.06),
    ]
}


def sample_pose(poses: list[Pose], rng: np.random.Generator, jitter: bool = True) -> tuple[Pose, dict]:
    """One pose for one pair (seeded), with the jitter recorded: scale 0.9-1.1, shift ±4 %, mirror."""
    pose = poses[int(rng.integers(len(poses)))]
    if not jitter:
        return pose, {}
    amount = {"scale": float(rng.uniform(0.9, 1.1)), "dx": float(rng.uniform(-0.04, 0.04)),
              "dy": float(rng.uniform(-0.04, 0.04)), "mirror": bool(rng.integers(2))}
    return pose.jittered(**amount), amount


def draw_pose(pose: Pose, height: int, width: int) -> np.ndarray:
    """The OpenPose rendering of `pose` on a black (height, width, 3) uint8 canvas."""
    import cv2

    canvas = np.zeros((height, width, 3), np.uint8)
    stick = max(1, round(4 * min(height, width) / 512))  # OpenPose's 4 px at 512
    radius = max(1, round(4 * min(height, width) / 512))
    px = [None if p is None else (p[0] * width, p[1] * height) for p in pose.keypoints]
    for i, (a, b) in enumerate(LIMBS):
        if px[a] is None or px[b] is None:
            continue
        (xa, ya), (xb, yb) = px[a], px[b]
        length = math.hypot(xb - xa, yb - ya)
        angle = math.degrees(math.atan2(yb - ya, xb - xa))
        centre = (int(round((xa + xb) / 2)), int(round((ya + yb) / 2)))
        polygon = cv2.ellipse2Poly(centre, (int(round(length / 2)), stick), int(round(angle)), 0, 360, 1)
        cv2.fillConvexPoly(canvas, polygon, [int(c * LIMB_ALPHA) for c in COLORS[i]])
    for i, p in enumerate(px):
        if p is not None:
            cv2.circle(canvas, (int(round(p[0])), int(round(p[1]))), radius, COLORS[i], thickness=-1)
    return canvas


def pair_pose_image(pose: Pose, height: int, width: int) -> np.ndarray:
    """(height, 2·width, 3): the same skeleton drawn in both halves of the side-by-side canvas."""
    half = draw_pose(pose, height, width)
    return np.concatenate([half, half], axis=1)


# ---------------------------------------------------------------------------------------------
# Sources


def _pose_from_openpose(flat, where: str, size: tuple[float, float] | None) -> Pose:
    if not isinstance(flat, list) or len(flat) != 3 * N_KEYPOINTS:
        n = len(flat) if isinstance(flat, list) else type(flat).__name__
        raise PoseError(f"{where}: pose_keypoints_2d must be 54 numbers (18 × x, y, confidence), got {n}.")
    if not all(_finite_number(v) for v in flat):
        raise PoseError(f"{where}: pose_keypoints_2d holds a value that is not a finite number.")
    w, h = size or (1.0, 1.0)
    pts = [None if flat[3 * i + 2] <= 0 else (flat[3 * i] / w, flat[3 * i + 1] / h) for i in range(N_KEYPOINTS)]
    return Pose(where, tuple(pts))


def _pose_from_list(item, where: str) -> Pose:
    if not isinstance(item, dict) or not isinstance(item.get("keypoints"), list):
        raise PoseError(f"{where}: each pose must be an object with a \"keypoints\" list of 18 [x, y] or null.")
    pts = []
    for p in item["keypoints"]:
        if p is not None and not (isinstance(p, list) and len(p) == 2):
            raise PoseError(f"{where}: a keypoint must be [x, y] or null, got {p!r}.")
        pts.append(None if p is None else tuple(p))
    return Pose(str(item.get("id", where)), tuple(pts))


def load_keypoints_json(path: str | Path) -> list[Pose]:
    """Poses from a keypoints JSON (OpenPose output, or pedit's {"poses": [...]}), validated."""
    path = Path(path)
    try:
        data = json.loads(read_user_text(path, "Keypoints file", "JSON", PoseError))
    except (ValueError, UnicodeDecodeError) as e:
        raise PoseError(f"Keypoints file {path} is not valid JSON ({e}).") from None
    poses: list[Pose] = []
    frames = data if isinstance(data, list) else [data]
    for f, frame in enumerate(frames):
        if not isinstance(frame, dict) or not ("people" in frame or "poses" in frame):
            raise PoseError(f"Keypoints file {path}: expected OpenPose's {{\"people\": [...]}} or {{\"poses\": [...]}}.")
        if "poses" in frame:
            items = frame["poses"] if isinstance(frame["poses"], list) else [None]
            poses += [_pose_from_list(p, f"{path.name}[{f}].poses[{i}]") for i, p in enumerate(items)]
            continue
        size = None
        if "canvas_width" in frame or "canvas_height" in frame:
            w, h = frame.get("canvas_width"), frame.get("canvas_height")
            if not all(_finite_number(v) and v > 0 for v in (w, h)):
                raise PoseError(f"Keypoints file {path}: canvas_width and canvas_height must be positive numbers.")
            size = (float(w), float(h))
        people = frame["people"] if isinstance(frame["people"], list) else [None]
        for i, person in enumerate(people):
            where = f"{path.name}[{f}].people[{i}]"
            if not isinstance(person, dict):
                raise PoseError(f"{where}: each person must be an object with pose_keypoints_2d.")
            poses.append(_pose_from_openpose(person.get("pose_keypoints_2d"), where, size))
    if not poses:
        raise PoseError(f"Keypoints file {path} holds no poses.")
    for pose in poses:
        outside = [KEYPOINTS[i] for i, p in enumerate(pose.keypoints) if p is not None and not (-0.5 <= p[0] <= 1.5 and -0.5 <= p[1] <= 1.5)]
        if outside:
            raise PoseError(f"{pose.id}: {', '.join(outside)} lie far outside the image; give pixels with "
                            "canvas_width/canvas_height, or coordinates normalised to 0-1.")
    return poses


ANNOTATOR_FILES = ("body_pose_model.pth",)


def detect_photo_poses(folder: str | Path, annotators: str | Path | None,
                       read_photo: Callable[[Path], np.ndarray] | None, allow_pickle: bool = False) -> list[Pose]:
    """Poses of the photos in `folder` through controlnet_aux's OpenPose detector (optional path).

    Needs the controlnet_aux package and the annotator weights (lllyasviel/Annotators'
    body_pose_model.pth) in the local folder `annotators`; says which is missing otherwise. Those
    weights are a pickle (code runs when it loads): only with `allow_pickle`. `read_photo(path)`
    decodes a photo to (H, W, 3) uint8 (the CLI passes pedit.photos' loader).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise PoseError(f"--pose {folder}: not a folder, a keypoints .json file, or 'builtin'.")
    try:
        from controlnet_aux import OpenposeDetector
    except ImportError:
        raise PoseError("Poses from photos need controlnet_aux, which is not installed: pip install 'pedit[pose]' "
                        "(with your torch pins, e.g. -c constraints.txt); or use --pose builtin, or a keypoints JSON."
                        ) from None
    missing = [f for f in ANNOTATOR_FILES if annotators is None or not (Path(annotators) / f).is_file()]
    if missing:
        where = annotators or "(no --pose-annotators folder given)"
        raise PoseError(f"controlnet_aux's OpenPose detector needs {', '.join(missing)} in {where}: download "
                        "lllyasviel/Annotators on a machine with internet and pass --pose-annotators DIR.")
    if not allow_pickle:
        raise PoseError(f"{', '.join(ANNOTATOR_FILES)} in {annotators} is a pickle file, which can run code when "
                        "loaded: pass --allow-pickle if you trust it, or use --pose builtin or a keypoints JSON.")
    if read_photo is None:
        raise PoseError("Poses from photos need a photo reader (read_photo); the CLI passes pedit.photos' loader.")
    detector = OpenposeDetector.from_pretrained(str(annotators))
    poses = []
    for photo in image_files(folder):
        try:
            rgb = read_photo(photo)
        except PeditError:
            continue  # an unreadable photo is skipped; none usable at all is the error below
        for k, found in enumerate(detector.detect_poses(rgb)):
            pts = tuple(None if kp is None else (float(kp.x), float(kp.y)) for kp in found.body.keypoints)
            try:
                poses.append(Pose(f"{photo.name}#{k}", pts))
            except PoseError:
                continue  # a person with fewer than two keypoints
    if not poses:
        raise PoseError(f"No poses found in the photos of {folder}.")
    return poses


def load_poses(source: str, annotators: str | Path | None = None,
               read_photo: Callable[[Path], np.ndarray] | None = None, allow_pickle: bool = False) -> list[Pose]:
    """`builtin`, a keypoints .json file, or a folder of photos."""
    if source == "builtin":
        return list(BUILTIN_POSES.values())
    if source.lower().endswith(".json"):
        return load_keypoints_json(source)
    return detect_photo_poses(source, annotators, read_photo, allow_pickle)
