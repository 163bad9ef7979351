"""`pedit edit` on files: photos in, edited photos (and masks, comparisons) out, nothing lost.

Loads the model once, then for each input: decode and validate the photo (pedit.photos.photo), crop the
portrait (pedit.photos.portrait) around the largest face (or the one asked for), edit it at the model's resolution
(pedit.edit.editor), paste it back with a feathered seam, and write every output atomically. One bad
file fails that file only; the caller gets one `BatchItem` per input. With the face model installed,
each item also carries the identity distance between the input's face and the output's
(pedit.photos.identity); `identity_check=False` skips that cost.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from pedit.errors import ConfigError, NothingEditedError, OutputError
from pedit.faces import DETECTORS, get_detector
from pedit.model.sampling_settings import SamplingSettings
from pedit.photos.identity import MISSING_NOTE, IdentityCheck, check_identity, identity_detector
from pedit.photos.photo import (BatchItem, check_output, default_output_path, find_images, load_photo, run_batch,
                                save_images_atomic)
from pedit.photos.mask_file import empty_mask_problem, load_mask_file
from pedit.photos.portrait import edit_photo_many


@dataclass(frozen=True)
class EditFilesConfig:
    inputs: tuple[str, ...]
    direction: str  # one name, or several "a,b,c": one output each, edited together (Editor.edit_many)
    model: str | None = None  # None → DEFAULT_EDIT_MODEL, the best measured shipped model (pedit.model.paths)
    output: str | None = None
    # steps, seed, scheduler, guidance interval, scales, mask use and draws; None → the model's pedit.json
    sampling: SamplingSettings = field(default_factory=SamplingSettings)
    save_mask: bool = False
    compare: bool = False
    face_index: int | None = None
    require_face: bool = False
    margin: float = 1.0
    overwrite: bool = False
    max_pixels: int = 100_000_000
    allow_pickle: bool = False
    device: str | None = None
    mask: str | None = None  # a user's mask file: greyscale, any size, white = may change
    mask_mode: str = "replace"  # replace, intersect or union with the model's mask
    detector: str = "default"  # face detector: haar | hog | cnn | default (pedit.faces)
    identity_check: bool = True  # identity distance input vs output when the face model is installed
    backend: str = "torch"  # torch | compile | onnx | trt (pedit.export.backends)
    precision: str | None = None  # fp32 | fp16 | bf16; default fp16 on CUDA, fp32 on the CPU
    engines: str | None = None  # a `pedit export` folder for onnx / trt
    cache: bool = True  # CPU, torch, fp32: run from the model's TorchScript cache (pedit.model.traced); same bytes
    subject: str | None = None  # "person" in the direction's template prompts becomes this ("old man")

    def __post_init__(self):
        from pedit.edit.user_mask import check_user_mask
        from pedit.validate import check_backend, check_device, check_int, check_number, check_precision

        if self.model is None:
            from pedit.model.paths import DEFAULT_EDIT_MODEL

            object.__setattr__(self, "model", DEFAULT_EDIT_MODEL)
        if not self.inputs or not all(isinstance(i, str) and i for i in self.inputs):
            raise ConfigError(f"inputs must be one or more file or folder names, got {self.inputs!r}")
        if not isinstance(self.direction, str) or not self.direction:
            raise ConfigError(f"direction must be a direction name, got {self.direction!r}")
        names = self.directions
        if not all(names):
            raise ConfigError(f"--direction {self.direction!r} has an empty name; give names separated by commas.")
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ConfigError(f"Direction(s) {', '.join(repeated)} given more than once in --direction; list each once.")
        if not isinstance(self.sampling, SamplingSettings):  # validated in its own __post_init__
            raise ConfigError(f"sampling must be a SamplingSettings, got {type(self.sampling).__name__}")
        check_backend("backend", self.backend)
        check_precision("precision", self.precision)
        check_device("device", self.device)
        if self.face_index is not None:
            check_int("face_index", self.face_index, 0)
        check_number("margin", self.margin, 0, 5)
        check_int("max_pixels", self.max_pixels, 1)
        check_user_mask(None, self.mask_mode)
        if self.subject is not None:
            from pedit.data.directions import check_subject

            check_subject(self.subject)
        if not isinstance(self.cache, bool):
            raise ConfigError(f"cache must be True or False, got {self.cache!r}")
        if self.detector not in (*DETECTORS, "default"):
            raise ConfigError(f"Unknown face detector {self.detector!r}; choose one of {', '.join(DETECTORS)} or default.")


    @property
    def directions(self) -> tuple[str, ...]:
        return tuple(name.strip() for name in self.direction.split(","))


def _sibling(path: Path, tag: str) -> Path:
    return path.with_name(f"{path.stem}_{tag}.png")


def planned_rows(model, directions, sampling) -> int:
    """The largest U-Net call an edit of `model` toward `directions` (together) makes with `sampling`
    (pedit.edit.mask.unet_rows): each direction's mask settings with the settings laid over them, as
    the edit lays them, read from the model folder before it loads, so a backend's engine is sized for
    it. The largest over the directions: each has its own draws and split."""
    from pedit.data.directions import model_directions
    from pedit.edit.mask import unet_rows
    from pedit.edit.options import mask_for
    from pedit.model.mask_settings import mask_config_for
    from pedit.model.loading import read_model_folder

    images = len(directions)
    if not sampling.use_mask:
        return unet_rows(None, images)
    folder, meta = read_model_folder(model)
    known = model_directions(meta, folder)
    masks = [mask_for(mask_config_for(meta, known.get(name)), sampling)
             for name in directions]  # an unknown direction: its folder-wide settings; it fails later, listed
    return max(unet_rows(mask, images) for mask in masks)


def edit_files(cfg: EditFilesConfig, on_event: Callable[[str, object], None] = lambda kind, payload: None,
               editor=None) -> list[BatchItem]:
    """Edit every input toward every direction; events: ("model", Editor), ("note", str), ("steps", (i, n)),
    ("item", BatchItem).

    editor: an Editor already loaded from `cfg.model` (the web app loads one per process and edits
    every request with it); None loads it here from cfg's model, device, backend and precision.
    """
    from pedit.viz import compare_sheet, overlay_mask

    paths = find_images(cfg.inputs)  # missing paths and empty folders fail before the model loads
    region = None  # an unreadable or all-black mask fails before the model loads too
    if cfg.mask is not None:
        region = load_mask_file(cfg.mask, cfg.max_pixels)
        if (why := empty_mask_problem(region, cfg.mask_mode, cfg.mask)) is not None:
            raise ConfigError(why)
    out = Path(cfg.output) if cfg.output else None
    from pedit.export.runtime_folder import is_export

    if editor is None and (cfg.backend in ("onnx", "trt") or (cfg.model is not None and is_export(cfg.model))):
        from pedit.export.runtime_editor import load_runtime_editor  # the torch-free runtime (docs/runtime.md)

        editor = load_runtime_editor(cfg.model, cfg.backend, cfg.engines, log=lambda msg: on_event("note", msg),
                                     allow_pickle=cfg.allow_pickle)
    if editor is None:
        from pedit.export.backends import load_editor

        editor = load_editor(cfg.model, device=cfg.device, allow_pickle=cfg.allow_pickle, backend=cfg.backend,
                             precision=cfg.precision, engines=cfg.engines,
                             log=lambda msg: on_event("note", msg), cache=cfg.cache, unet_rows=planned_rows(cfg.model, cfg.directions, cfg.sampling))
    if editor.cache_failed:
        on_event("note", editor.cache_status)
    directions = [editor.direction(name) for name in cfg.directions]  # an unknown direction fails before any work
    on_event("model", editor)
    for direction in directions:
        if cfg.subject is not None and direction.for_subject(cfg.subject) == direction:
            on_event("note", f"--subject {cfg.subject}: the prompts of {direction.name!r} name no \"person\"; "
                             "they are used as recorded")
    options = [editor.options_for(d, cfg.sampling, mask_mode=cfg.mask_mode, subject=cfg.subject) for d in directions]
    editor.plan_many(directions, options)  # the steps and a student's range checked once, before the batch
    detector = get_detector(cfg.detector)
    checker = identity_detector() if cfg.identity_check else None
    if cfg.identity_check and checker is None:
        on_event("note", MISSING_NOTE)
    checks: dict[Path, IdentityCheck] = {}

    planned = _plan_outputs(paths, [d.name for d in directions], out, cfg)
    outputs: dict[Path, tuple[Path, ...]] = {}

    def process(path: Path) -> Path:
        if isinstance(planned[path], OutputError):
            raise planned[path]
        photo = load_photo(path, cfg.max_pixels)

        def edit_fn(square, user_mask=None):  # all directions of the square in one edit_many call
            results = editor.edit_many(square, directions, options, callback=lambda i, n: on_event("steps", (i, n)),
                                       user_mask=user_mask)
            return [(r.image, r.mask) for r in results]

        dones = edit_photo_many(photo.rgb, edit_fn, editor.resolution, detector, cfg.face_index, cfg.require_face,
                                cfg.margin, region=region)
        if dones[0].face is None:
            on_event("note", f"No face found in {path}; edited the centred square.")
        unchanged = [d.name for d, done in zip(directions, dones) if np.array_equal(np.asarray(done.image),
                                                                                    np.asarray(photo.rgb))]
        if unchanged:
            toward = "" if len(directions) == 1 else f" toward {', '.join(unchanged)}"
            raise NothingEditedError(
                f"The edit of {path}{toward} changed no pixel (its editing mask is empty"
                f"{'' if region is None else ' in the crop'}), so nothing was written. Try another --seed, a larger "
                "--s-p, or --no-mask.")
        # The identity check runs before anything is written, and its own failure is its verdict, not
        # the item's: an item reported failed must leave no output behind (a rerun would say "already exists").
        found = [_checked_identity(photo.rgb, done, checker) for done in dones] if checker is not None else []
        writes = []
        for (target, extras), done in zip(planned[path], dones):
            writes.append((done.image, target, dict(alpha=photo.alpha, exif=photo.exif, icc_profile=photo.icc_profile)))
            if "mask" in extras:
                writes += [(done.mask, extras["mask"], {}), (overlay_mask(photo.rgb, done.mask), extras["overlay"], {})]
            if "compare" in extras:
                writes.append((compare_sheet(photo.rgb, done.mask, done.image), extras["compare"], {}))
        # All or none: every file encoded first, then all take their names; with --overwrite the
        # earlier results stay until the new ones are all ready (pedit.files.commit_all).
        save_images_atomic(writes, cfg.overwrite)
        if found:  # several directions: the one farthest from the input's identity speaks for the item
            checks[path] = max(found, key=lambda c: -1 if c.distance is None else c.distance)
        outputs[path] = tuple(target for target, _ in planned[path])
        return planned[path][0][0]

    def on_item(item: BatchItem) -> None:
        item.identity = checks.get(item.input)
        item.outputs = outputs.get(item.input, ())
        on_event("item", item)

    # An editor behind a server (pedit.serve.client.RemoteEditor) takes several photos at once.
    return run_batch(paths, process, on_item=on_item, workers=getattr(editor, "concurrency", 1))


def _checked_identity(before, done, checker) -> IdentityCheck:
    """check_identity, with any failure of the check itself as the verdict (the edit is still good)."""
    try:
        return check_identity(before, done.image, done.crop, checker)
    except Exception as e:
        return IdentityCheck(None, f"identity check failed ({type(e).__name__}: {e})")


def _plan_outputs(paths: list[Path], directions: list[str], out: Path | None,
                  cfg: EditFilesConfig) -> dict[Path, list[tuple[Path, dict[str, Path]]] | OutputError]:
    """Every input's output files, one set per direction, checked before any edit: extension known,
    folder there, name free (unless --overwrite), and no two inputs of the batch writing one file
    (a/x.png and b/x.png into one -o folder: with --overwrite the second would silently replace the first)."""
    inputs = {p.resolve(): p for p in paths}
    claimed: dict[Path, Path] = {}
    planned: dict[Path, list[tuple[Path, dict[str, Path]]] | OutputError] = {}
    for path in paths:
        try:
            sets = []
            for direction in directions:  # several directions of one input need a folder, like several inputs
                target = default_output_path(path, direction, out, n_inputs=len(paths) * len(directions))
                extras = {}
                if cfg.save_mask:
                    extras["mask"] = _sibling(target, "mask")
                    extras["overlay"] = _sibling(target, "overlay")
                if cfg.compare:
                    extras["compare"] = _sibling(target, "compare")
                sets.append((target, extras))
            files = [f for target, extras in sets for f in (target, *extras.values())]
            if len({f.resolve() for f in files}) < len(files):
                raise OutputError(f"Two of the directions {', '.join(directions)} write the same file name for {path}.")
            for f in files:
                check_output(f, cfg.overwrite)
                key = f.resolve()
                if key in claimed:
                    raise OutputError(f"{f} is also the output of {claimed[key]} in this batch; edit them into "
                                      "separate -o folders or rename one input.")
                if key in inputs and key != path.resolve():
                    raise OutputError(f"{f} is also an input of this batch; choose another -o.")
            claimed.update((f.resolve(), path) for f in files)
            planned[path] = sets
        except OutputError as e:
            planned[path] = e
    return planned
