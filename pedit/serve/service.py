"""What the `pedit` Triton model does with one request, without Triton: photo bytes in, PNGs out.

    service = EditService(editor, max_pixels=...)
    results = service.edit(photo_bytes, ["laughing"], seed=0, settings={}, user_mask=None)

The editor is pedit's torch-free runtime editor (pedit.export.runtime_editor), its U-Net in the server
the `unet` model called through BLS (pedit.serve.pedit_model). The request's settings are validated by the same
config `pedit edit` builds (pedit.photos.edit_files.EditFilesConfig), so a bad value gets the
message the CLI gives. The photo takes the CLI's path too: decoded under the pixel limit, cropped
around the face, edited at the model's resolution, pasted back so every pixel outside the edit is
the input's (pedit.photos.portrait), and its identity distance measured when the face model is there.
The bytes a request sends are written to a private temporary file the server names (the decoders
read files); no request names a path.
"""

from __future__ import annotations

import io
import math
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from pedit.errors import InputImageError, PeditError
from pedit.serve import protocol


@dataclass
class DirectionResult:
    edited: bytes  # PNG
    mask: bytes  # PNG, mode L
    identity: float  # NaN when not measured


def png_bytes(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


class EditService:
    """Edits for requests, on one loaded editor."""

    def __init__(self, editor, max_pixels: int = 50_000_000, max_request_bytes: int = protocol.MAX_REQUEST_BYTES):
        self.editor = editor
        self.max_pixels = max_pixels
        self.max_request_bytes = max_request_bytes
        self._identity = None

    def _config(self, directions: list[str], seed: int, settings: dict):
        """The request as `pedit edit`'s own config: every value checked there, with its messages."""
        from pedit.model.sampling_settings import SamplingSettings
        from pedit.photos.edit_files import EditFilesConfig

        sampling = SamplingSettings(seed=seed, **{k: settings[k] for k in protocol.SAMPLING if k in settings})
        return EditFilesConfig(
            inputs=("request",), direction=",".join(directions), sampling=sampling,
            mask_mode=settings.get("mask_mode", "replace"), subject=settings.get("subject"),
            face_index=settings.get("face_index"), require_face=settings.get("require_face", False),
            margin=settings.get("margin", 1.0), max_pixels=self.max_pixels)

    def plan(self, directions: list[str], seed: int, settings: dict):
        """(config, Direction list, options list) of a request, checked before any decoding or U-Net work."""
        cfg = self._config(directions, seed, settings)
        resolved = [self.editor.direction(name) for name in cfg.directions]  # DirectionError: lists the known ones
        options = [self.editor.options_for(d, cfg.sampling, mask_mode=cfg.mask_mode, subject=cfg.subject)
                   for d in resolved]
        self.editor.plan_many(resolved, options)  # steps the schedule can give, a student's range
        return cfg, resolved, options

    def edit(self, photo: bytes, directions: list[str], seed: int, settings: dict,
             user_mask: bytes | None = None, callback=None) -> list[DirectionResult]:
        protocol.check_sizes(photo, user_mask, self.max_request_bytes)
        cfg, resolved, options = self.plan(directions, seed, settings)
        rgb = self._decode_photo(photo)
        region = None if user_mask is None else self._decode_mask(user_mask, cfg.mask_mode)

        def edit_fn(square, user=None):
            results = self.editor.edit_many(square, resolved, options, callback=callback, user_mask=user)
            return [(r.image, r.mask) for r in results]

        if settings.get("face", "detect") == "none":  # the photo is the square (the CLI's client sends its crop)
            square = rgb if rgb.size == (self.editor.resolution,) * 2 else \
                rgb.resize((self.editor.resolution,) * 2, Image.Resampling.LANCZOS)
            pairs = edit_fn(square) if region is None else edit_fn(square, _region_at(region, self.editor.resolution))
            return [DirectionResult(png_bytes(im), png_bytes(m), math.nan) for im, m in pairs]

        from pedit.faces import get_detector
        from pedit.photos.portrait import edit_photo_many

        dones = edit_photo_many(rgb, edit_fn, self.editor.resolution, get_detector(cfg.detector), cfg.face_index,
                                cfg.require_face, cfg.margin, region=region)
        checker = self._identity_checker() if settings.get("identity", True) else None
        out = []
        for done in dones:
            distance = math.nan
            if checker is not None:
                from pedit.photos.identity import check_identity

                found = check_identity(rgb, done.image, done.crop, checker).distance
                distance = math.nan if found is None else float(found)
            out.append(DirectionResult(png_bytes(done.image), png_bytes(done.mask), distance))
        return out

    def _identity_checker(self):
        if self._identity is None:
            from pedit.photos.identity import identity_detector

            self._identity = identity_detector() or False
        return self._identity or None

    def _decode_photo(self, data: bytes) -> Image.Image:
        from pedit.photos.photo import load_photo

        with _private_file(data) as path:
            try:
                return load_photo(path, self.max_pixels).rgb
            except PeditError as e:
                raise type(e)(str(e).replace(str(path), "The request's photo")) from None

    def _decode_mask(self, data: bytes, mask_mode: str) -> np.ndarray:
        from pedit.errors import ConfigError
        from pedit.photos.mask_file import empty_mask_problem, load_mask_file

        with _private_file(data) as path:
            try:
                region = load_mask_file(path, self.max_pixels)
            except PeditError as e:
                raise InputImageError(str(e).replace(str(path), "the request's user_mask")) from None
        if (why := empty_mask_problem(region, mask_mode, "user_mask")) is not None:
            raise ConfigError(why)
        return region


def _region_at(region: np.ndarray, size: int) -> np.ndarray:
    if region.shape == (size, size):
        return region
    img = Image.fromarray(np.rint(np.clip(region, 0, 1) * 255).astype(np.uint8))
    return np.asarray(img.resize((size, size), Image.Resampling.BILINEAR), dtype=np.float32) / 255.0


class _private_file:
    """A temporary file holding a request's bytes, removed on exit (its name is the server's)."""

    def __init__(self, data: bytes):
        self.data = data

    def __enter__(self) -> Path:
        fd, name = tempfile.mkstemp(prefix="pedit-request-")
        with os.fdopen(fd, "wb") as f:
            f.write(self.data)
        self.path = Path(name)
        return self.path

    def __exit__(self, *exc):
        self.path.unlink(missing_ok=True)
