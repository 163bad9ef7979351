"""Quality scores of a generated pair, and the contact sheet of a pair folder (paper §3.2).

A generated pair is good when (paper §3.2) its halves share the layout outside the edit, the edit
goes the direction's way, and the person stays the same. One score for each, recorded per pair:

- `layout`: 1 − mean |x_A − x_B| (blurred, 0-1) over the pixels outside the region where the
  halves differ most (the top `edit_fraction` of pixels by difference, taken as the edit). Always
  computed; 1 = identical outside the edit, lower = the halves are misaligned.
- `clip_direction`: InstructPix2Pix's dataset filter, cos(E(x_B) − E(x_A), T(p_b) − T(p_a)) with a
  CLIP model's image and text towers; only when a CLIP model is given.
- `identity_distance`: dlib's 128-d descriptor distance between the largest face of each half
  (pedit.faces; < 0.6 = same person); None when the face model is missing or a half has no face.
  Computed exactly as `pedit eval` and the editor's identity check compute it
  (`faces.image_identity_distance`' default: HOG, the detector dlib's descriptor is paired with),
  so a recorded distance and a threshold on it mean the same everywhere. HOG costs about a second
  per 512 px half on a CPU.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from pedit.data.pairs import METADATA, row_path
from pedit.files import write_atomic

CONTACT_SHEET = "contact_sheet.png"
EDIT_FRACTION = 0.4  # the largest edit (a full costume) covers under 40 % of a portrait


def layout_score(x_A: np.ndarray, x_B: np.ndarray, edit_fraction: float = EDIT_FRACTION) -> float:
    """Agreement of the two halves (H, W, 3) uint8 outside the region where they differ."""
    import cv2

    if x_A.shape != x_B.shape:
        raise ValueError(f"halves differ in shape: {x_A.shape} vs {x_B.shape}")
    sigma = max(1.0, x_A.shape[0] / 128)  # ignore texture, compare layout
    a = cv2.GaussianBlur(x_A.astype(np.float32) / 255, (0, 0), sigma)
    b = cv2.GaussianBlur(x_B.astype(np.float32) / 255, (0, 0), sigma)
    diff = np.abs(a - b).mean(axis=2).ravel()  # (H·W,)
    keep = int(round(diff.size * (1 - edit_fraction)))
    outside = np.partition(diff, keep - 1)[:keep]  # the (1 − edit_fraction) least different pixels
    return float(1 - outside.mean())


# A half whose grey levels spread less than this (std over its pixels, 0-255) shows nothing: a black,
# grey or single-colour canvas (the fp16 overflow's look), which the layout score rates ≈ 1.
FLAT_STD = 2.0


def canvas_problem(x_A: np.ndarray, x_B: np.ndarray, finite: bool = True) -> str | None:
    """Why a decoded canvas can never be a pair (its halves (H, W, 3) uint8), or None.

    `finite`: whether the decode was finite (NaN/inf survived even the fp32 decode). Checked
    before any score, whatever the thresholds: a flat pair "agrees" perfectly outside the edit."""
    if not finite:
        return "non-finite decode (NaN or inf in the VAE output, even in fp32)"
    for name, half in (("x_A", x_A), ("x_B", x_B)):
        spread = float(half.astype(np.float32).std())
        if spread < FLAT_STD:
            return f"flat canvas: {name} has one colour (pixel std {spread:.2f} < {FLAT_STD})"
    return None


class ClipDirection:
    """CLIP directional similarity (InstructPix2Pix §3.1.2) with a transformers CLIPModel folder or id."""

    def __init__(self, source: str, device="cpu", allow_pickle: bool = False):
        from transformers import CLIPModel, CLIPProcessor

        from pedit.errors import ModelError

        try:
            # Pickle weights (.bin) run code when loaded: only with --allow-pickle.
            self.model = CLIPModel.from_pretrained(source, use_safetensors=None if allow_pickle else True).to(device).eval()
            self.processor = CLIPProcessor.from_pretrained(source)
        except (OSError, ValueError) as e:
            hint = "" if allow_pickle else " (weights only as .bin? pass --allow-pickle for trusted files)"
            raise ModelError(f"--clip {source}: not a CLIP model with image and text towers with safetensors "
                             f"weights{hint} ({type(e).__name__}: {e})") from None
        self.device = device

    def __call__(self, x_A: np.ndarray, x_B: np.ndarray, p_a: str, p_b: str) -> float:
        import torch

        with torch.no_grad():
            pixels = self.processor(images=[x_A, x_B], return_tensors="pt")["pixel_values"].to(self.device)
            image = self.model.get_image_features(pixel_values=pixels)
            tokens = self.processor(text=[p_a, p_b], return_tensors="pt", padding=True).to(self.device)
            text = self.model.get_text_features(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"])
        image = getattr(image, "pooler_output", image)  # transformers 5 may return an output object
        text = getattr(text, "pooler_output", text)
        d_image, d_text = image[1] - image[0], text[1] - text[0]
        return float(torch.nn.functional.cosine_similarity(d_image, d_text, dim=0))


def identity_available() -> bool:
    from pedit import faces

    return faces.face_model_available()


def identity_distance(x_A: np.ndarray, x_B: np.ndarray) -> float | None:
    """Descriptor distance of the largest face in each half, as eval and the editor measure it
    (pedit.faces' default detector path), or None: no face model, or a half without a face."""
    from pedit import faces

    if not faces.face_model_available():
        return None
    distance = faces.image_identity_distance(x_A, x_B)
    return None if distance is None else round(distance, 4)


def face_model_note() -> str | None:
    """Why identity distances are not recorded, or None when they are."""
    from pedit import faces

    if not faces.face_model_available():
        return "identity distance skipped: the face model is not installed (pip install 'pedit[faces]')"
    return None


def contact_sheet(folder: Path, rows: list[dict], cell: int = 160):
    """x_A | x_B | pose for the given metadata rows (paths relative to `folder`), as one PIL image."""
    from PIL import Image

    from pedit.viz import image_grid

    grid, labels = [], []
    for row in rows:
        cells = []
        for field in ("x_A", "x_B", "pose_image"):
            if row_path(row, field):
                with Image.open(folder / row_path(row, field)) as im:
                    cells.append(im.convert("RGB"))
            else:
                cells.append(None)
        grid.append(cells)
        score = row.get("scores", {}).get("layout")
        labels.append(f"{row['id']} {row['direction']}" + (f" {score:.2f}" if score is not None else ""))
    return image_grid(grid, col_labels=["x_A", "x_B", "pose"], row_labels=labels, cell=cell)


def write_contact_sheet(out: Path, count: int) -> Path | None:
    """contact_sheet.png beside metadata.jsonl: the first `count` pairs by id (x_A | x_B | pose)."""
    meta = out / METADATA
    if count < 1 or not meta.exists():
        return None
    rows = []
    for line in meta.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:
            continue
    rows = sorted(rows, key=lambda r: str(r.get("id")))[:count]
    if not rows:
        return None
    sheet = contact_sheet(out, rows, cell=min(192, max(64, _half_width(out, rows[0]))))
    # A derived picture, rebuilt by every run: replacing it loses nothing.
    return write_atomic(out / CONTACT_SHEET, lambda f: sheet.save(f, format="PNG"), overwrite=True)


def _half_width(out: Path, row: dict) -> int:
    from PIL import Image

    with Image.open(out / row_path(row, "x_A")) as im:
        return im.width
