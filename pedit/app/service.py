"""What the web app does, with no web framework: edit a photo, make a sticker pack (pedit.app.ui draws it).

`PeditApp` loads one Editor once per process (the TorchScript-cached model `pedit edit` uses, so the
bytes out are the CLI's) and runs each request through the CLI's own library calls, in a folder
of its own (pedit.app.folders):
- `edit`: pedit.photos.edit_files with that Editor: the same photo checks and `Error:` messages,
  face crop, mask-guided edit (paper §3.4), paste-back, identity distance, atomic writes.
- `sticker_pack`: pedit.stickers.pipeline.make_sticker_pack (paper §4) with that Editor, then one
  archive of the pack folder for download.
A request holds the model's lock while it runs: one model, one request at a time, whatever front
end calls it (Gradio's queue also lines requests up before they get here).
"""

from __future__ import annotations

import contextlib
import threading
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from pedit.errors import ConfigError, InputImageError, PeditError
from pedit.model.sampling_settings import SamplingSettings
from pedit.app.folders import RequestFolders
from pedit.validate import check_int

Progress = Callable[[int, int, str], None]  # (done, total, what): the page's progress bar
MASK_ROWS_PER_CALL = 20  # U-Net rows of one mask call: the bundled model's one-direction call (10 draws x 2)


@dataclass(frozen=True)
class AppConfig:
    """`pedit app` options; CLI flags map 1:1 to these fields."""

    model: str | None = None  # MCDM folder; None → edits with DEFAULT_EDIT_MODEL as `pedit edit`, stickers as `pedit sticker-pack`
    base: str | None = None  # Stable Diffusion base for the sticker pack's cartoon stages (photos only)
    device: str | None = None  # cpu, cuda, cuda:N; None → cuda when available
    allow_pickle: bool = False
    max_pixels: int = 100_000_000  # as `pedit edit --max-pixels`
    keep_s: float = 120.0  # how long a finished request's files stay for the server to hand them over
    server: str | None = None  # a pedit Triton server's http URL (`pedit serve`): edits run there

    def __post_init__(self):
        from pedit.validate import check_device, check_number

        check_device("device", self.device)
        check_int("max_pixels", self.max_pixels, 1)
        check_number("keep_s", self.keep_s, 0, 86_400)


@dataclass(frozen=True)
class EditRequest:
    """One edit from the page: the `pedit edit` flags it exposes (other fields keep the CLI defaults)."""

    photo: str  # the uploaded file, as received
    direction: str  # one name, or several "a,b,c": edited together (Editor.edit_many), one result each
    seed: int = 0
    steps: int | None = None  # None: the model's pedit.json "sampling", else 20 (as `pedit edit`)
    scheduler: str | None = None  # None: the model's, else ddim
    s_s: float | None = None  # None: the model's pedit.json "sampling", else DEFAULT_SCALES (as `pedit edit`)
    s_im: float | None = None
    s_p: float | None = None
    use_mask: bool = True
    brush: np.ndarray | None = field(default=None, compare=False)  # (H, W) in [0, 1]: the painted region
    mask_mode: str = "replace"  # how the brush combines with the model's mask, as --mask-mode

    def __post_init__(self):
        from pedit.edit.user_mask import check_user_mask

        if not isinstance(self.photo, str) or not self.photo:
            raise InputImageError("No photo was uploaded. Upload a photo (JPEG, PNG, ...) first.")
        if not isinstance(self.direction, str) or not self.direction:
            raise ConfigError(f"direction must be a direction name, got {self.direction!r}")
        SamplingSettings(steps=self.steps, seed=self.seed, scheduler=self.scheduler, s_s=self.s_s, s_im=self.s_im,
                         s_p=self.s_p, use_mask=self.use_mask)  # the settings' own checks, the CLI's messages
        check_user_mask(self.brush, self.mask_mode)


@dataclass(frozen=True)
class EditedImage:
    """One direction's result of a request."""

    direction: str
    result: Path  # the full-size result, written as `pedit edit` writes it
    mask: Path
    overlay: Path  # the photo with the edited region tinted


@dataclass(frozen=True)
class EditOutcome:
    input: Path  # the photo as uploaded
    edits: tuple[EditedImage, ...]  # one per direction, in the order asked
    identity: str | None  # "0.23 (same person)", a verdict, or None without the face model
    notes: tuple[str, ...]

    @property
    def result(self) -> Path:  # the first direction's: the whole outcome of a one-direction request
        return self.edits[0].result

    @property
    def mask(self) -> Path:
        return self.edits[0].mask

    @property
    def overlay(self) -> Path:
        return self.edits[0].overlay


@dataclass(frozen=True)
class StickerOutcome:
    preview: Path
    stickers: tuple[Path, ...]  # the 512-px PNG stickers, in pack order
    archive: Path  # a zip of the whole pack folder
    downloads: tuple[Path, ...]  # the archive, then any app archive the pack holds (e.g. .wastickers)
    notes: tuple[str, ...]


def brush_mask(layers: list[np.ndarray] | None) -> np.ndarray | None:
    """The painted region of an image editor's layers: (H, W) in [0, 1], the strongest alpha over
    the layers, or None when nothing was painted. layers: (H, W, 4) uint8 RGBA arrays."""
    painted = None
    for layer in layers or []:
        layer = np.asarray(layer)
        if layer.ndim != 3 or layer.shape[2] != 4:
            raise InputImageError(f"A brush layer must be an RGBA image, got an array of shape {layer.shape}.")
        alpha = layer[..., 3].astype(np.float32) / 255.0
        painted = alpha if painted is None else np.maximum(painted, alpha)
    if painted is None or not painted.any():
        return None
    return painted


class PeditApp:
    """The web app's work: one model for the process, one folder per request."""

    def __init__(self, cfg: AppConfig, folders: RequestFolders | None = None):
        from pedit.edit.editor import Editor

        self.cfg = cfg
        if cfg.server is not None:  # the server's model edits; requests go there at once (its queue lines them up)
            from pedit.serve.client import RemoteEditor, ServerClient

            self.editor = RemoteEditor(ServerClient(cfg.server))
            self._lock = contextlib.nullcontext()
        else:
            from pedit.model.paths import DEFAULT_EDIT_MODEL

            # cache=True as `pedit edit`: on the CPU the TorchScript copy, with the same bytes out.
            self.editor = Editor.from_pretrained(cfg.model or DEFAULT_EDIT_MODEL, device=cfg.device,
                                                 allow_pickle=cfg.allow_pickle, cache=True)
            self._lock = threading.Lock()
        self.folders = folders or RequestFolders(keep_s=cfg.keep_s)

    @property
    def directions(self) -> list[str]:
        """The model's own directions (built-in and custom ones it was trained on), sorted."""
        return sorted(self.editor.directions)

    def close(self) -> None:
        self.folders.close()

    def edit(self, req: EditRequest, progress: Progress = lambda done, total, what: None) -> EditOutcome:
        """Edit one uploaded photo toward its direction(s); PeditError with the CLI's message when it cannot.

        Several directions ("a,b,c") are edited together as `pedit edit -d a,b,c` edits them
        (Editor.edit_many: shared rows, one mask each), with the same bytes as one request each.
        """
        from pedit.photos.edit_files import EditFilesConfig, edit_files

        photo = Path(req.photo)
        if photo.is_dir():  # edit_files would edit every image in a folder; a request is one photo
            raise InputImageError(f"{photo} is a folder, not an image file. Upload a photo (JPEG, PNG, ...).")
        folder = self.folders.new()
        try:
            mask = None
            if req.brush is not None:
                mask = folder / "brush.png"
                Image.fromarray(np.rint(np.clip(req.brush, 0, 1) * 255).astype(np.uint8), "L").save(mask)
            out = folder / "out"
            out.mkdir()
            names = [n.strip() for n in req.direction.split(",")]
            # Several directions share each mask draw's call ((K + 1) rows a draw): keep a call near the
            # one-direction size, whatever a page asks for (one direction: the model folder's split, as the CLI).
            mask_batch = None if len(names) == 1 else max(1, MASK_ROWS_PER_CALL // (len(names) + 1))
            sampling = SamplingSettings(steps=req.steps, seed=req.seed, scheduler=req.scheduler, s_s=req.s_s,
                                        s_im=req.s_im, s_p=req.s_p, use_mask=req.use_mask, mask_batch=mask_batch)
            cfg = EditFilesConfig(
                inputs=(str(photo),), direction=req.direction, model=self.cfg.model, output=str(out),
                sampling=sampling, save_mask=True, max_pixels=self.cfg.max_pixels,
                allow_pickle=self.cfg.allow_pickle, device=self.cfg.device,
                mask=None if mask is None else str(mask), mask_mode=req.mask_mode,
            )
            notes: list[str] = []

            def on_event(kind, payload):
                if kind == "steps":
                    progress(payload[0], payload[1], "edit")
                elif kind == "note":
                    notes.append(payload)

            with self._lock:
                items = _out_of_memory_said(lambda: edit_files(cfg, on_event, editor=self.editor), len(names))
            item = items[0]
            if item.error:
                raise PeditError(item.error)
            edits = tuple(EditedImage(name, Path(result), _sibling(Path(result), "mask"),
                                      _sibling(Path(result), "overlay"))
                          for name, result in zip(cfg.directions, item.outputs, strict=True))
            outcome = EditOutcome(input=photo, edits=edits, identity=_identity_text(item.identity),
                                  notes=tuple(notes))
        except BaseException:
            self.folders.release(folder, failed=True)
            raise
        self.folders.release(folder)
        return outcome

    def sticker_pack(self, selfie: str, seed: int = 0, steps: int = 20, title: str = "pedit stickers",
                     progress: Progress = lambda done, total, what: None) -> StickerOutcome:
        """A sticker pack from one selfie, as `pedit sticker-pack` makes it; plus its archive for download."""
        from pedit.stickers.pipeline import StickerConfig, make_sticker_pack

        if self.cfg.server is not None:
            raise ConfigError("The sticker pack trains a LoRA on the selfie, which a server does not do; run "
                              "`pedit app` without --server for it.")
        if Path(selfie).is_dir():
            raise InputImageError(f"{selfie} is a folder, not an image file. Upload a selfie (JPEG, PNG, ...).")
        folder = self.folders.new()
        try:
            cfg = StickerConfig(selfie=str(selfie), output=str(folder / "pack"), model=self.cfg.model,
                                base=self.cfg.base, seed=seed, steps=steps, title=title,
                                max_pixels=self.cfg.max_pixels, allow_pickle=self.cfg.allow_pickle,
                                device=self.cfg.device)
            notes: list[str] = []
            with self._lock:
                pack = make_sticker_pack(cfg, lambda p: progress(p.done, p.total, p.stage), notes.append,
                                         editor=self.editor)
            archive = zip_folder(pack, folder / "pedit-stickers.zip")
            stickers = tuple(sorted((pack / "stickers").glob("*.png")))
            outcome = StickerOutcome(preview=pack / "preview.png", stickers=stickers, archive=archive,
                                     downloads=(archive, *sorted(pack.rglob("*.wastickers"))), notes=tuple(notes))
        except BaseException:
            self.folders.release(folder, failed=True)
            raise
        self.folders.release(folder)
        return outcome


def _out_of_memory_said(run: Callable, directions: int):
    """run(), with the GPU running out of memory said as a message for the page (the server keeps serving)."""
    import torch

    try:
        return run()
    except torch.cuda.OutOfMemoryError:
        torch.cuda.empty_cache()
        more = f" with {directions} directions at once; ask for fewer" if directions > 1 else "; try fewer steps"
        raise PeditError(f"The GPU ran out of memory{more}, or start `pedit app --device cpu`.") from None


def zip_folder(folder: Path, archive: Path) -> Path:
    """Every file under `folder` into the zip `archive` (paths relative to the folder, sorted)."""
    if archive.exists():
        raise ConfigError(f"{archive} already exists")
    with zipfile.ZipFile(archive, "x", zipfile.ZIP_DEFLATED) as z:
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            z.write(path, path.relative_to(folder).as_posix())
    return archive


def _sibling(path: Path, tag: str) -> Path:
    return path.with_name(f"{path.stem}_{tag}.png")  # as edit_files names the mask and overlay


def _identity_text(check) -> str | None:
    """'0.23 (same person)', a verdict without a distance, or None when the check did not run."""
    if check is None:
        return None
    if check.distance is None:
        return check.verdict
    return f"{check.distance:.2f} ({check.verdict})"
