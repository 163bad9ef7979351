"""`pedit eval --photos`: measure edits of real photos, where no ground truth exists.

Per photo and direction, the photo is edited exactly as `pedit edit` does (face crop, model,
paste-back) and scored on what "feature-preserving" promises:
- identity distance: dlib's 128-d descriptor of the input's face vs the output's (pedit.faces),
  the face-similarity score identity-preserving generators report; below 0.6 is the same person;
- verdict: "same person", "different person", "no face in the input" or "no face in the output";
- kept: the fraction of the photo's pixels that are byte-identical to the input (all 3 channels);
- mask area: the fraction of the photo's pixels the edit was allowed to touch (blend weight > 0).
Without the face model the identity columns are null and the report says why.
Writes report.json, report.md and grid.png (input crop | each direction's output crop) to -o.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from pedit.errors import ConfigError, OutputError
from pedit.model.sampling_settings import SamplingSettings, check_settings
from pedit.faces import DETECTORS, SAME_PERSON_THRESHOLD, face_model_available, get_detector
from pedit.photos.identity import MISSING_NOTE, check_identity, identity_detector
from pedit.photos.photo import DEFAULT_MAX_PIXELS, find_images, load_photo
from pedit.photos.portrait import edit_photo

REPORT_FILES = ("report.json", "report.md", "grid.png")
GRID_CELL = 192


@dataclass(frozen=True)
class PhotoEvalConfig:
    photos: tuple[str, ...]  # files or folders
    directions: tuple[str, ...]
    model: str | None = None  # None → the bundled toon model
    output: str | None = None  # report folder
    sampling: SamplingSettings = SamplingSettings()  # each field None: the model's, as in `pedit edit`
    margin: float = 1.0
    detector: str = "default"
    max_pixels: int = DEFAULT_MAX_PIXELS
    device: str | None = "cpu"
    allow_pickle: bool = False
    overwrite: bool = False
    backend: str = "torch"  # torch | compile | onnx | trt (pedit.export.backends)
    precision: str | None = None  # fp32 | fp16 | bf16; None: fp16 on CUDA, fp32 on the CPU

    def __post_init__(self):
        from pedit.validate import BACKENDS, check_int, check_number

        if not self.photos:
            raise ConfigError("No photos given; pass --photos PATH (files or folders).")
        if not self.directions or not all(isinstance(d, str) and d for d in self.directions):
            raise ConfigError(f"Directions must be a non-empty list of names; got {self.directions!r}.")
        if self.detector not in (*DETECTORS, "default"):
            raise ConfigError(f"Unknown face detector {self.detector!r}; choose one of {', '.join(DETECTORS)} or default.")
        check_settings(self.sampling)
        check_number("margin", self.margin, 0, 5)
        check_int("max_pixels", self.max_pixels, 1)
        if self.backend not in BACKENDS:
            raise ConfigError(f"Unknown backend {self.backend!r}; choose from {', '.join(BACKENDS)}.")
        if self.precision not in (None, "fp32", "fp16", "bf16"):
            raise ConfigError(f"Unknown precision {self.precision!r}; choose from fp32, fp16, bf16.")


def _check_output(cfg: PhotoEvalConfig) -> Path | None:
    """The report folder, checked before any work: not a file, no report in it unless overwrite."""
    if cfg.output is None:
        return None
    out = Path(cfg.output)
    if out.exists() and not out.is_dir():
        raise OutputError(f"-o {out} is a file; the report needs a folder.")
    existing = [out / name for name in REPORT_FILES if (out / name).exists()]
    if existing and not cfg.overwrite:
        raise OutputError(f"{existing[0]} already exists. Pass --overwrite to replace the report, or choose another -o.")
    return out


def evaluate_photos(cfg: PhotoEvalConfig, progress: Callable[[int, int], None] | None = None,
                    note: Callable[[str], None] = lambda text: None) -> dict:
    """Edit every photo toward every direction and score each result; writes the report to cfg.output."""
    from pedit.export.backends import load_editor
    from pedit.photos.edit_files import planned_rows

    out = _check_output(cfg)
    paths = find_images(cfg.photos)
    for path in paths:  # every photo is decoded once up front: a broken one fails before any work
        load_photo(path, cfg.max_pixels)
    editor = load_editor(cfg.model, device=cfg.device, allow_pickle=cfg.allow_pickle, backend=cfg.backend,
                         precision=cfg.precision, log=note, unet_rows=max(  # each direction is edited alone
                             planned_rows(cfg.model, [d], cfg.sampling) for d in cfg.directions))
    directions = [editor.direction(d) for d in cfg.directions]  # an unknown direction fails here
    # Each direction edits with cfg.sampling over the model's mask and sampling settings, as in `pedit edit`.
    direction_options = {d.name: editor.options_for(d, cfg.sampling) for d in directions}
    detector = get_detector(cfg.detector)
    checker = identity_detector()
    if checker is None:
        note(MISSING_NOTE)

    rows, grid_rows, done, total = [], [], 0, len(paths) * len(directions)
    for path in paths:
        photo = load_photo(path, cfg.max_pixels)
        before = np.asarray(photo.rgb)
        grid_row = []
        for direction in directions:
            start = time.perf_counter()

            def edit_fn(square, direction=direction):
                result = editor.edit(square, direction, direction_options[direction.name])
                return result.image, result.mask

            edited = edit_photo(photo.rgb, edit_fn, editor.resolution, detector, margin=cfg.margin)
            check = check_identity(photo.rgb, edited.image, edited.crop, checker) if checker else None
            rows.append({
                "photo": str(path), "direction": direction.name,
                "identity_distance": check.distance if check else None,
                "verdict": check.verdict if check else None,
                "kept": float((np.asarray(edited.image) == before).all(axis=2).mean()),
                "mask_area": float((np.asarray(edited.mask) > 0).mean()),
                "face_found": edited.face is not None,
                "crop": dataclasses.astuple(edited.crop),
                "seconds": time.perf_counter() - start,
            })
            crop = edited.crop
            xyxy = (crop.x, crop.y, crop.x + crop.w, crop.y + crop.h)
            if not grid_row:
                grid_row.append(_thumb(photo.rgb.crop(xyxy)))
            grid_row.append(_thumb(edited.image.crop(xyxy)))
            done += 1
            if progress:
                progress(done, total)
        grid_rows.append(grid_row)

    report = {
        "config": dataclasses.asdict(cfg),
        "model": str(editor.model.path),
        "photos": len(paths),
        "face_model": face_model_available(),
        "identity_note": None if checker else MISSING_NOTE,
        "same_person_threshold": SAME_PERSON_THRESHOLD,
        "directions": {d.name: _summary([r for r in rows if r["direction"] == d.name]) for d in directions},
        "results": rows,
    }
    if out is not None:
        grid_labels = (["input", *(d.name for d in directions)], [p.name for p in paths])
        _write_report(out, report, grid_rows, grid_labels, cfg.overwrite)
    return report


def _thumb(image):
    from PIL import Image

    return image.resize((GRID_CELL, GRID_CELL), Image.Resampling.LANCZOS)


def _summary(rows: list[dict]) -> dict:
    measured = [r["identity_distance"] for r in rows if r["identity_distance"] is not None]
    return {
        "photos": len(rows),
        "identity_distance_mean": float(np.mean(measured)) if measured else None,
        "same_person": sum(1 for r in rows if r["verdict"] == "same person"),
        "no_face": sum(1 for r in rows if (r["verdict"] or "").startswith("no face")),
        "kept_mean": float(np.mean([r["kept"] for r in rows])),
        "mask_area_mean": float(np.mean([r["mask_area"] for r in rows])),
    }


def _write_report(out: Path, report: dict, grid_rows, grid_labels, overwrite: bool) -> None:
    """report.json, report.md and grid.png: all three written to temporary files first, then renamed,
    so a failure (disk full, a file that appeared meanwhile) leaves no partial report."""
    import io

    from pedit.files import commit_all, stage
    from pedit.viz import image_grid

    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputError(f"Cannot create report folder {out}: {e.strerror or e}.") from e
    col_labels, row_labels = grid_labels
    png = io.BytesIO()
    image_grid(grid_rows, col_labels=col_labels, row_labels=row_labels).save(png, format="PNG")
    contents = {"report.json": json.dumps(report, indent=2).encode(), "report.md": _utf8(markdown_photo_report(report)),
                "grid.png": png.getvalue()}
    staged: list[tuple[Path, Path]] = []
    try:
        for name, data in contents.items():
            staged.append((stage(out / name, lambda f, data=data: f.write(data)), out / name))
        for _, path in staged:
            if path.exists() and not overwrite:  # appeared while the evaluation ran
                raise OutputError(f"{path} already exists. Pass --overwrite to replace it, or choose another -o.")
        # A report is whole or absent, and with --overwrite the earlier one stays until the new one
        # is all in place; without it a racing report wins or loses whole (exclusive links).
        commit_all(staged, overwrite)
    except OSError as e:
        raise OutputError(f"Could not write the report into {out}: {e.strerror or e}.") from e
    finally:
        for tmp, _ in staged:
            tmp.unlink(missing_ok=True)


def _fmt(value, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def markdown_photo_report(report: dict) -> str:
    """One table a direction (summary), then one row a photo and direction."""
    lines = [f"{report['photos']} photos, model `{report['model']}`; identity distance: dlib's 128-d face descriptor, "
             f"below {report['same_person_threshold']} = same person.\n"]
    if report["identity_note"]:
        lines.append(f"**{report['identity_note']}**\n")
    lines += ["| direction | photos | identity distance (mean) | same person | no face | kept | mask area |",
              "|---|---|---|---|---|---|---|"]
    for name, s in report["directions"].items():
        lines.append(f"| {name} | {s['photos']} | {_fmt(s['identity_distance_mean'])} | {s['same_person']} | "
                     f"{s['no_face']} | {s['kept_mean']:.1%} | {s['mask_area_mean']:.1%} |")
    lines += ["", "| photo | direction | identity distance | verdict | kept | mask area | s |", "|---|---|---|---|---|---|---|"]
    for r in report["results"]:
        lines.append(f"| {Path(r['photo']).name} | {r['direction']} | {_fmt(r['identity_distance'])} | "
                     f"{r['verdict'] or 'n/a'} | {r['kept']:.1%} | {r['mask_area']:.1%} | {r['seconds']:.1f} |")
    return "\n".join(lines) + "\n"


def _utf8(text: str) -> bytes:
    """UTF-8 of the report; a file name that is not UTF-8 (held by Python as surrogates, which
    .encode() refuses after all the work) is written with \\x escapes, as `ls -b` shows it."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace").encode("utf-8")
