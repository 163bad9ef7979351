"""`pedit sticker-pack`: selfie → (augment → DreamBooth LoRA → cartoon) → expression edits → sticker pack.

Paper §4: the selfie is augmented, a DreamBooth LoRA learns the subject, a crafted prompt draws a
cartoon portrait of them on a plain background, and the expression MCDM edits it into each of
`expressions` through the same mask-guided `Editor` as `pedit edit`. With an input that is already a
cartoon (the bundled toon model's world, or `skip_cartoonize`), the first three stages are skipped.

Everything is written into a hidden temporary folder beside the output and renamed into place at
the end: a failure or Ctrl-C leaves nothing half-written.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from pedit import __version__
from pedit.errors import ConfigError, InputImageError, OutputError
from pedit.files import clean_stale_temps, temp_path, write_failure
from pedit.stickers.matte import MatteConfig, make_sticker
from pedit.stickers.formats import check_pack_text, check_sticker_count, pack_emoji
from pedit.stickers.pack import STICKER_SIDE, preview_sheet, write_pack
from pedit.stickers.progress import STAGES, Progress, StageProgress  # noqa: F401 (STAGES: the CLI's bars)

DEFAULT_EXPRESSIONS = ("angry", "shocked", "laughing", "crying")


@dataclass(frozen=True)
class StickerConfig:
    """`pedit sticker-pack` options; CLI flags map 1:1 to these fields."""

    selfie: str
    output: str
    model: str | None = None  # expression MCDM folder; None → DEFAULT_EDIT_MODEL, as `pedit edit` (pedit.model.paths)
    base: str | None = None  # Stable Diffusion base for DreamBooth + cartoon (needed unless skipped)
    expressions: tuple[str, ...] = DEFAULT_EXPRESSIONS
    style: str | None = None  # cartoon style prompt; None → cartoon.DEFAULT_STYLE
    pick: int | None = None  # keep cartoon candidate N instead of the best-scored
    candidates: int = 4
    skip_cartoonize: bool = False
    require_face: bool = False
    overwrite: bool = False
    steps: int = 20  # expression edit steps
    cartoon_steps: int = 30
    train_steps: int = 400  # DreamBooth LoRA steps
    lora_rank: int = 4
    views: int = 16  # augmented views of the selfie
    prior_preservation: bool = False
    seed: int = 0
    margin: float = 1.0  # face crop margin, in face widths (as `pedit edit`)
    detector: str = "default"  # face detector: haar | hog | cnn | default (pedit.faces), as `pedit edit`
    cache_dir: str | None = None  # LoRA cache; None → $PEDIT_CACHE or ~/.cache/pedit
    title: str = "pedit stickers"  # the pack's name in the apps (≤ 64 characters: Telegram's set title)
    author: str = "pedit"  # the pack's publisher in WhatsApp (≤ 128 characters)
    emoji: dict[str, str] = field(default_factory=dict)  # expression → 1-3 emoji; others get the built-in ones
    max_pixels: int = 100_000_000
    allow_pickle: bool = False
    device: str | None = None
    matte: MatteConfig = field(default_factory=MatteConfig)

    def __post_init__(self):
        if not self.expressions or len(set(self.expressions)) != len(self.expressions):
            raise ConfigError(f"expressions must be distinct and non-empty, got {self.expressions!r}.")
        check_sticker_count(len(self.expressions))
        from pedit.faces import DETECTORS
        from pedit.validate import check_int, check_number, check_seed

        for name in ("candidates", "steps", "cartoon_steps", "train_steps", "lora_rank", "views"):
            check_int(name, getattr(self, name), 1)
        if self.pick is not None:
            check_int("pick", self.pick, 0)
        if self.pick is not None and not 0 <= self.pick < self.candidates:
            raise ConfigError(f"--pick {self.pick} is out of range: there are {self.candidates} candidates (0 to "
                              f"{self.candidates - 1}).")
        check_number("margin", self.margin, 0, 5)
        check_seed("seed", self.seed)  # a seed beyond 64 bits or negative: an Error line, not a torch traceback
        check_int("max_pixels", self.max_pixels, 1)
        if self.detector not in (*DETECTORS, "default"):
            raise ConfigError(f"Unknown face detector {self.detector!r}; choose one of {', '.join(DETECTORS)} or default.")
        check_pack_text(self.title, self.author)
        pack_emoji(self.emoji, self.expressions)  # every entry an expression, 1-3 emoji each
        if self.style is not None and not self.style.strip():
            raise ConfigError("--style is empty; give a style prompt, e.g. 'a flat cartoon of {subject}'.")


def default_cache_dir() -> Path:
    """pedit's cache root (pedit.cache); LoRAs go into its dreambooth/ folder."""
    from pedit.cache import cache_root

    return cache_root()


def identity_scorer() -> tuple[Callable | None, str | None]:
    """(reference → distance function, None) with the face model installed, else (None, why not).

    `scorer(reference_rgb)` finds the reference's face once and returns `distance(rgb) -> float | None`
    (None when either image has no face the detector finds: toon faces often have none).
    """
    try:
        from pedit import faces
    except ImportError:
        return None, "identity not scored: this pedit has no face module (pedit.faces)"
    if not faces.face_model_available():
        return None, "identity not scored: the face model (dlib + face_recognition_models) is not installed"

    def scorer(reference: np.ndarray) -> Callable[[np.ndarray], float | None]:
        detector = faces.get_detector("default")
        face = faces.largest_face(detector.detect(reference))
        if face is None:
            return lambda other: None
        ref = faces.identity(reference, face)

        def distance(other: np.ndarray) -> float | None:
            found = faces.largest_face(detector.detect(other))
            return None if found is None else faces.identity_distance(ref, faces.identity(other, found))

        return distance

    return scorer, None


# What a pack folder holds at its top (_write); --overwrite replaces a folder only when it holds a
# previous pack and nothing else, so `-o ~/Pictures --overwrite` can never delete a user's files.
# More than 30 stickers: whatsapp-1/, whatsapp-1.wastickers, whatsapp-2/, ... (pack.write_pack).
PACK_TOP = frozenset({"stickers", "whatsapp", "whatsapp.wastickers", "telegram", "contents.json", "preview.png",
                      "manifest.json", "config.json"})
_SPLIT_PACK = re.compile(r"whatsapp-[1-9][0-9]?(\.wastickers)?")


def _in_pack_top(name: str) -> bool:
    return name in PACK_TOP or _SPLIT_PACK.fullmatch(name) is not None


def _check_output(out: Path, overwrite: bool) -> None:
    """Fail before any work when `out` cannot be written (exists, a file, not a previous pack, an unwritable parent)."""
    if out.exists() and not overwrite:
        raise OutputError(f"{out} already exists. Pass --overwrite to replace it, or choose another -o.")
    if out.exists() and not out.is_dir():
        raise OutputError(f"{out} is a file; sticker-pack writes a folder. Choose another -o.")
    if out.exists():
        _check_replaceable(out)
    ancestor = out.absolute().parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise OutputError(f"Cannot create {out}: {ancestor} is a file.")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise OutputError(f"Cannot create {out}: no permission to write in {ancestor}.")


def _check_replaceable(out: Path) -> None:
    """OutputError unless the folder `out` is empty or a previous pack: its manifest.json written by
    pedit, and every file in it one that manifest lists (or the pack's own config.json, preview.png)."""
    if out.is_symlink():
        raise OutputError(f"{out} is a link; --overwrite replaces only a previous sticker pack. Choose another -o.")
    if not any(out.iterdir()):
        return
    listed = _pack_files(out)
    if listed is None:
        raise OutputError(f"{out} is not a previous sticker pack (no manifest.json written by pedit); --overwrite "
                          "replaces only a pack pedit wrote, never other files. Choose another -o.")
    foreign = sorted(p.relative_to(out).as_posix() for p in out.rglob("*")
                     if p.is_symlink() or not (p.is_file() or p.is_dir())
                     or (p.is_file() and p.relative_to(out).as_posix() not in listed)
                     or (p.is_dir() and not _in_pack_top(p.relative_to(out).parts[0])))
    if foreign:
        more = f", and {len(foreign) - 3} more" if len(foreign) > 3 else ""
        raise OutputError(f"{out} holds files that are not the previous sticker pack's ({', '.join(foreign[:3])}{more}); "
                          "--overwrite replaces only a pack pedit wrote, never other files. Move them or choose another -o.")


def _pack_files(out: Path) -> set[str] | None:
    """The files a pack folder's manifest.json says pedit wrote (relative, posix); None without a pedit manifest."""
    try:
        manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(manifest, dict) or "pedit_version" not in manifest or not isinstance(manifest.get("files"), dict):
        return None
    listed = {"manifest.json", "config.json", "preview.png"}

    def collect(value) -> None:
        if isinstance(value, dict):
            for key, item in value.items():
                if key in ("file", "contents") and isinstance(item, str):
                    listed.add(item)
                else:
                    collect(item)
        elif isinstance(value, list):
            for item in value:
                collect(item)

    collect(manifest["files"])
    return {name for name in listed if Path(name).parts and _in_pack_top(Path(name).parts[0])}


def _selfie_portrait(cfg: StickerConfig):
    """The selfie decoded and cropped as `pedit edit` crops it: the same detector, the largest face,
    framed from its eyes where it has landmarks. (photo, face Box or None, square RGB at 512, record)"""
    from pedit.faces import get_detector
    from pedit.photos.photo import load_photo
    from pedit.photos.portrait import choose_face, face_box, face_crop_box, find_faces

    photo = load_photo(cfg.selfie, cfg.max_pixels)
    try:
        face = choose_face(find_faces(photo.rgb, get_detector(cfg.detector)), None, cfg.require_face)
    except InputImageError as e:
        raise InputImageError(f"{cfg.selfie}: {e}") from None
    crop = face_crop_box(photo.rgb.size, face, cfg.margin)
    square = photo.rgb.crop((crop.x, crop.y, crop.x + crop.w, crop.y + crop.h))
    square = square.resize((STICKER_SIDE, STICKER_SIDE), Image.Resampling.LANCZOS)
    box = face_box(face) if face is not None else None
    record = {"file": str(cfg.selfie), "sha256": hashlib.sha256(Path(cfg.selfie).read_bytes()).hexdigest(),
              "size": list(photo.rgb.size), "detector": cfg.detector, "face": asdict(box) if box else None,
              "crop": asdict(crop)}
    return photo, box, square, record


def make_sticker_pack(cfg: StickerConfig, progress: Progress = lambda p: None,
                      note: Callable[[str], None] = lambda s: None, editor=None) -> Path:
    """Run every stage and write the pack folder `cfg.output`; returns its path.

    editor: an Editor already loaded from `cfg.model` (the web app's, loaded once per process);
    None loads it here."""
    from pedit.edit.editor import Editor

    out = Path(cfg.output)
    from pedit.files import check_output_not_input

    check_output_not_input(out, {"the selfie": cfg.selfie, "-m": cfg.model, "--base": cfg.base})
    _check_output(out, cfg.overwrite)  # before any work
    photo, face, portrait, selfie_record = _selfie_portrait(cfg)
    if face is None:
        note(f"No face found in {cfg.selfie}; using the centred square.")
    from pedit.model.paths import DEFAULT_EDIT_MODEL

    if editor is None:
        editor = Editor.from_pretrained(cfg.model or DEFAULT_EDIT_MODEL, device=cfg.device, allow_pickle=cfg.allow_pickle)
    directions = [editor.direction(name) for name in cfg.expressions]  # unknown names fail before any work
    skip = cfg.skip_cartoonize or editor.is_bundled
    if skip and cfg.base is not None:
        note("--base is not used: the cartoon stages are skipped for this input.")
    if not skip and cfg.base is None:
        raise ConfigError("Cartoonizing a photo needs a Stable Diffusion base model: pass --base MODEL "
                          "(a local diffusers folder or a hub id), or --skip-cartoonize for an input that is "
                          "already a cartoon.")
    scorer, score_note = identity_scorer()
    if score_note:
        note(score_note)

    manifest: dict = {"pedit_version": __version__, "config": _jsonable(asdict(cfg)), "selfie": selfie_record,
                      "model": str(cfg.model) if cfg.model else f"bundled {DEFAULT_EDIT_MODEL} model", "base": cfg.base,
                      "identity_note": score_note}
    if skip:
        why = "--skip-cartoonize" if cfg.skip_cartoonize else "toon model: input is a cartoon"
        for stage in STAGES[:3]:
            progress(StageProgress(stage, 0, 0, f"skipped ({why})", skipped=True))
        manifest["cartoon"] = {"skipped": why}
    else:
        from pedit.stickers.cartoon import cartoonize

        portrait, manifest["cartoon"] = cartoonize(cfg, photo.rgb, face, portrait, scorer, progress,
                                                   cache_dir=Path(cfg.cache_dir) if cfg.cache_dir else default_cache_dir())

    edited = _edit_expressions(cfg, editor, directions, portrait, progress)
    return _write(cfg, out, portrait, directions, edited, manifest, scorer, progress)


def _edit_expressions(cfg, editor, directions, portrait: Image.Image, progress: Progress) -> list:
    """All expressions through the mask-guided Editor in one `edit_many` call (one mask call for the
    shared p_a; the edits of K separate `pedit edit` calls), pasted back into the 512-px portrait."""
    import dataclasses

    from pedit.photos.portrait import edit_photo_many

    # each expression with the model folder's settings for it (its task's mask and sampler), at the pack's steps and seed
    options = [dataclasses.replace(editor.default_options(d), steps=cfg.steps, seed=cfg.seed) for d in directions]
    k, names = len(directions), ", ".join(d.name for d in directions)
    total = k * cfg.steps

    def on_step(step, n):  # edit_many counts every expression's steps: n = K x steps
        progress(StageProgress("edit", step, n, names))

    def edit_fn(square):
        return [(r.image, r.mask) for r in editor.edit_many(square, directions, options, callback=on_step)]

    results = edit_photo_many(portrait, edit_fn, editor.resolution)  # the whole square: no face search
    progress(StageProgress("edit", total, total, names))
    return results


def _write(cfg, out: Path, portrait, directions, edited, manifest, scorer, progress: Progress) -> Path:
    """Stickers, app folders, preview and manifest into a temporary folder, renamed to `out` at the end."""
    parent = out.parent
    tmp = temp_path(out)  # names this host and process: a killed run's folder goes at the next run here
    try:
        parent.mkdir(parents=True, exist_ok=True)
        clean_stale_temps(parent)
        tmp.mkdir()
    except OSError as e:
        raise OutputError(f"Cannot create {out}: {e.strerror or e}.") from e
    try:
        total = len(directions) + 2
        stickers = []
        for i, (direction, done) in enumerate(zip(directions, edited)):
            progress(StageProgress("pack", i, total, direction.name))
            stickers.append((direction.name, make_sticker(done.image, STICKER_SIDE, cfg.matte)))
        progress(StageProgress("pack", len(directions), total, "app folders"))
        files = write_pack(tmp, stickers, cfg.title, cfg.author, pack_emoji(cfg.emoji, cfg.expressions))
        preview_sheet(stickers, source=portrait).save(tmp / "preview.png")
        progress(StageProgress("pack", len(directions) + 1, total, "manifest"))

        distance = scorer(np.asarray(portrait.convert("RGB"))) if scorer is not None else (lambda rgb: None)
        for entry, direction, done in zip(files["stickers"], directions, edited):
            mask = np.asarray(done.mask)
            d = distance(np.asarray(done.image.convert("RGB")))
            entry.update(prompts={"p_a": direction.p_a, "p_b": direction.p_b}, seed=cfg.seed, steps=cfg.steps,
                         edited_fraction=round(float((mask > 0).mean()), 4),
                         identity_distance=None if d is None else round(float(d), 4))
        manifest["files"] = files
        manifest["preview"] = "preview.png"
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        (tmp / "config.json").write_text(json.dumps(manifest["config"], indent=2) + "\n", encoding="utf-8")
        progress(StageProgress("pack", total, total, "done"))
        _move_into_place(tmp, out, cfg.overwrite)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if (why := write_failure(e)) is not None:
            raise OutputError(f"Could not write the sticker pack {out}: {why}; nothing of it was kept.") from None
        raise
    return out


def _move_into_place(tmp: Path, out: Path, overwrite: bool) -> None:
    """Rename the finished folder to `out`; an existing `out` is replaced only with overwrite."""
    if out.exists():
        if not overwrite:  # appeared while we worked: never replace it silently
            raise OutputError(f"{out} appeared while the pack was being made; it was left alone. "
                              "Pass --overwrite to replace it, or choose another -o.")
        _check_replaceable(out)  # again: files may have been put there while the pack was being made
        old = temp_path(out)  # a kill between the two renames leaves it for clean_stale_temps
        os.rename(out, old)
        os.rename(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        try:
            os.rename(tmp, out)
        except OSError as e:
            raise OutputError(f"Could not move the pack into {out}: {e.strerror or e}.") from e


def _jsonable(value):
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value if value is None or isinstance(value, (str, int, float, bool)) else str(value)

