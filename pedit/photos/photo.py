"""Reading and writing users' photos, and running a batch of them.

Users bring phone photos: any size, EXIF-rotated, with transparency, 16-bit, CMYK, or broken. This
module turns such a file into an RGB `Photo`, writes results atomically with the metadata they came
with, and runs a batch where one bad file fails that file only. Finding the face, cropping the
square the model edits and pasting the edit back live in pedit.photos.portrait.
"""

from __future__ import annotations

import io
import threading
import time
import traceback
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageCms, ImageOps, UnidentifiedImageError

from pedit.errors import InputImageError, OutputError, PeditError
from pedit.files import IMAGE_SUFFIXES, commit_all, exists_error, name_problem, regular_file_problem, stage

if TYPE_CHECKING:
    from pedit.photos.identity import IdentityCheck

IMAGE_EXTENSIONS = IMAGE_SUFFIXES  # one list for every wing (pedit.files)
DEFAULT_MAX_PIXELS = 100_000_000
MIN_SIDE = 16

# PIL's names for what IMAGE_EXTENSIONS hold. MPO is how PIL opens the JPEGs many phones write
# (a JPEG with extra preview frames). Anything else (EPS would even run Ghostscript) is refused.
_READABLE_FORMATS = {"JPEG", "MPO", "PNG", "WEBP", "BMP", "DIB", "TIFF"}
_SAVE_FORMATS = {
    ".jpg": "JPEG",
    ".jpeg": "JPEG",
    ".png": "PNG",
    ".webp": "WEBP",
    ".bmp": "BMP",
    ".tif": "TIFF",
    ".tiff": "TIFF",
}
_ALPHA_FORMATS = {"PNG", "WEBP", "TIFF"}
_METADATA_FORMATS = {"JPEG", "PNG", "WEBP", "TIFF"}  # EXIF and ICC profile
_RGB_MODES = {"RGB", "RGBA", "RGBX", "RGBa", "P", "PA"}  # modes whose ICC profile describes RGB
_ALPHA_MODES = {"RGBA", "RGBa", "LA", "La", "PA"}
_WIDE_MODES = {"I;16", "I;16L", "I;16B", "I;16N", "I", "F"}
_ORIENTATION_TAG = 0x0112
# PIL's decompression-bomb limit is global; load_photo swaps in the caller's limit for the length
# of one Image.open, and this lock keeps two threads from swapping it at once.
_PIL_LIMIT_LOCK = threading.Lock()


@dataclass
class Photo:
    """A decoded photo: upright RGB plus what must be written back with the result."""

    rgb: Image.Image  # mode RGB, EXIF orientation applied
    alpha: Image.Image | None  # mode L when the file had transparency
    exif: bytes | None  # orientation reset to 1, since `rgb` is already upright
    icc_profile: bytes | None  # only when it describes `rgb` (RGB sources; CMYK is converted to sRGB)
    path: Path | None


def load_photo(path: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> Photo:
    """Decode an image file fully, or raise InputImageError saying what is wrong with it."""
    path = Path(path)
    if not path.exists():
        raise InputImageError(f"No such file: {path}. Check the path and its spelling.")
    if path.is_dir():
        raise InputImageError(f"{path} is a folder, not an image file. Pass a photo (JPEG, PNG, ...).")
    if (why := regular_file_problem(path)) is not None:  # a FIFO would block the open forever
        raise InputImageError(f"{path} {why}; pedit reads image files only.")
    if path.stat().st_size == 0:
        raise InputImageError(f"{path} is empty (0 bytes). Copy or download the photo again.")
    try:
        return _decode(path, max_pixels)
    except PeditError:
        raise
    except Exception as e:
        # Decoders raise what they like (a PNG text chunk too large to decompress is a ValueError,
        # a broken TIFF tag a KeyError): any of them means this file cannot be used.
        raise InputImageError(
            f"{path} could not be decoded ({type(e).__name__}: {e}). "
            "Re-export it as PNG or JPEG from the app that made it."
        ) from e


def _decode(path: Path, max_pixels: int) -> Photo:
    with _open_image(path, max_pixels) as im:
        width, height = im.size
        if width * height > max_pixels:
            raise _too_large(path, max_pixels, f"{width}x{height} = {width * height:,} pixels")
        frames = getattr(im, "n_frames", 1)
        if frames > 1 and im.format != "MPO":  # MPO: a phone JPEG's preview frames, not content
            raise InputImageError(
                f"{path} holds {frames} pages or frames ({im.format}); pedit edits one image and would "
                f"drop the other {frames - 1} when writing it back. Save the page you want as its own file."
            )
        if min(width, height) < MIN_SIDE:
            raise InputImageError(
                f"{path} is only {width}x{height} pixels; pedit needs at least {MIN_SIDE} pixels on "
                "each side. Use a larger photo."
            )
        try:
            # A full decode here, so a truncated file fails now with a clear message rather than
            # half-way through an edit (PIL decodes lazily).
            im.load()
        except (OSError, SyntaxError, ValueError, EOFError) as e:
            raise InputImageError(
                f"{path} is damaged or incomplete ({im.format}, {width}x{height}): {e}. "
                "Copy or download it again, or re-export it from the app that made it."
            ) from e
        upright = ImageOps.exif_transpose(im)
        exif = _exif_to_keep(im)  # after the transpose, which reads the orientation this resets
        icc = im.info.get("icc_profile") or None
    rgb, alpha, icc = _to_rgb(upright, icc, path)
    return Photo(rgb=rgb, alpha=alpha, exif=exif, icc_profile=icc, path=path)


def _open_image(path: Path, max_pixels: int) -> Image.Image:
    """Image.open under the caller's pixel limit; reads the header only."""
    with _PIL_LIMIT_LOCK, warnings.catch_warnings():
        # PIL warns above its limit and raises above twice it, both while reading the header. The
        # warning only repeats the check load_photo makes next; the error (a file far over the
        # limit) becomes the same message.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        pil_limit = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = max_pixels
        try:
            im = Image.open(path)
        except Image.DecompressionBombError as e:
            raise _too_large(path, max_pixels, f"more than {2 * max_pixels:,} pixels") from e
        except UnidentifiedImageError as e:
            raise InputImageError(
                f"{path} is not an image pedit can read{_sniff(path)}. "
                "pedit reads JPEG, PNG, WebP, BMP and TIFF files."
            ) from e
        except OSError as e:
            raise InputImageError(f"Cannot read {path}: {e.strerror or e}.") from e
        finally:
            Image.MAX_IMAGE_PIXELS = pil_limit
    if im.format not in _READABLE_FORMATS:
        im.close()
        raise InputImageError(
            f"{path} is a {im.format} image; pedit reads JPEG, PNG, WebP, BMP and TIFF. "
            "Convert it to PNG or JPEG first."
        )
    return im


def _too_large(path: Path, max_pixels: int, found: str) -> InputImageError:
    return InputImageError(
        f"{path} is {found}, more than the limit of {max_pixels:,} pixels (a guard against "
        "decompression bombs). If you trust the file, raise the limit with --max-pixels, "
        "or downscale the photo first."
    )


def _sniff(path: Path) -> str:
    """A hint for the error message when PIL does not recognise a file."""
    with open(path, "rb") as f:
        head = f.read(512)
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return ""
    if all(c.isprintable() or c.isspace() for c in text):
        return f" (it holds text, not image data, whatever its {path.suffix or 'missing'} extension says)"
    return ""


def _exif_to_keep(im: Image.Image) -> bytes | None:
    # A TIFF's "EXIF" is its own layout (strip offsets, sizes); copying it into another file
    # would describe the wrong image, so only the other formats keep theirs.
    if im.format == "TIFF":
        return None
    exif = im.getexif()
    if not exif:
        return None
    if _ORIENTATION_TAG in exif:
        exif[_ORIENTATION_TAG] = 1
    try:
        return exif.tobytes()
    except Exception:
        # Phones write odd maker notes that PIL may fail to re-serialise; the photo is still
        # worth editing, only its metadata is lost.
        return None


def _to_rgb(im: Image.Image, icc: bytes | None, path: Path):
    """(rgb, alpha or None, icc that still applies) from any PIL mode."""
    source_mode = im.mode
    if source_mode in _WIDE_MODES:
        im = _to_8bit(im)
    elif source_mode == "CMYK":
        return _cmyk_to_rgb(im, icc), None, None
    icc = icc if source_mode in _RGB_MODES else None  # a grey profile does not describe RGB
    if source_mode == "RGB" and "transparency" not in im.info:
        return im, None, icc  # already detached from the file by exif_transpose; no second copy
    try:
        if source_mode in _ALPHA_MODES or "transparency" in im.info:
            rgba = im.convert("RGBA")
            return rgba.convert("RGB"), rgba.getchannel("A"), icc
        return im.convert("RGB"), None, icc
    except ValueError as e:
        raise InputImageError(
            f"{path} uses the colour mode {source_mode}, which pedit cannot convert to RGB. "
            "Export it as an RGB JPEG or PNG."
        ) from e


def _to_8bit(im: Image.Image) -> Image.Image:
    """16-bit, 32-bit integer or float greyscale → mode L."""
    values = np.nan_to_num(np.asarray(im, dtype=np.float64))
    lo, hi = float(values.min()), float(values.max())
    if im.mode == "F" and lo >= 0 and hi <= 1:
        values = values * 255
    elif lo >= 0 and hi <= 255:
        pass  # 8-bit data in a wide container
    elif lo >= 0 and hi <= 65535:
        values = values / 257  # 16-bit data: 65535 → 255, tones kept as they are
    else:
        # No known range (signed or float data): stretch what is there.
        values = (values - lo) * (255 / (hi - lo))
    return Image.fromarray(np.rint(values).astype(np.uint8))


def _cmyk_to_rgb(im: Image.Image, icc: bytes | None) -> Image.Image:
    if icc:
        try:
            # Print-shop CMYK is only right through its profile; PIL's plain formula is a guess.
            return ImageCms.profileToProfile(
                im, ImageCms.ImageCmsProfile(io.BytesIO(icc)), ImageCms.createProfile("sRGB"), outputMode="RGB"
            )
        except ImageCms.PyCMSError:
            pass  # a broken profile: fall back to the plain formula below
    return im.convert("RGB")


def find_images(inputs: Sequence[str | Path]) -> list[Path]:
    """Expand folders to the image files in them; files are kept as given (load_photo judges them)."""
    found: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            images = sorted(
                p
                for p in path.iterdir()
                # Dot files include macOS "._IMG_0001.JPG" resource forks, which are not images.
                if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file() and not p.name.startswith(".")
            )
            if not images:
                raise InputImageError(
                    f"No images found in folder {path} (looked for {', '.join(IMAGE_EXTENSIONS)}; "
                    "sub-folders are not searched)."
                )
            found.extend(images)
        elif path.exists():
            found.append(path)
        else:
            raise InputImageError(f"No such file or folder: {path}. Check the path and its spelling.")
    # The same photo named twice (or a folder and a file in it) is edited once.
    unique: dict[Path, Path] = {}
    for path in found:
        unique.setdefault(path.resolve(), path)
    return list(unique.values())


def default_output_path(input_path: Path, direction: str, out: Path | None = None, n_inputs: int = 1) -> Path:
    """photo.jpg → photo_royal.jpg, beside the input, in folder `out`, or `out` itself."""
    input_path = Path(input_path)
    suffix = input_path.suffix if input_path.suffix.lower() in IMAGE_EXTENSIONS else ".png"
    safe_direction = "".join(c if c.isalnum() or c in "-_" else "_" for c in direction)
    name = f"{input_path.stem}_{safe_direction}{suffix}"
    if out is None:
        return input_path.with_name(name)
    out = Path(out)
    if out.is_dir():
        return out / name
    if n_inputs > 1:
        if out.exists():
            raise OutputError(f"-o {out} is a file, but {n_inputs} photos need an output folder.")
        try:
            out.mkdir(parents=True)
        except OSError as e:
            raise OutputError(f"Cannot create output folder {out}: {e.strerror or e}.") from e
        return out / name
    return out


def save_image_atomic(
    image: Image.Image,
    path: Path,
    *,
    alpha: Image.Image | None = None,
    exif: bytes | None = None,
    icc_profile: bytes | None = None,
    overwrite: bool = False,
    quality: int = 95,
) -> Path:
    """Write `image` to `path` in the format its extension names; all or nothing."""
    save_images_atomic([(image, Path(path), dict(alpha=alpha, exif=exif, icc_profile=icc_profile, quality=quality))],
                       overwrite)
    return Path(path)


def save_images_atomic(writes: Sequence[tuple[Image.Image, Path, dict]], overwrite: bool = False) -> list[Path]:
    """Write one item's images (image, path, save_image_atomic's options), all or none: every file is
    encoded into its temp first, and only when all are ready do they take their names (commit_all),
    so a full disk on the last one keeps the earlier results, --overwrite included."""
    staged: list[tuple[Path, Path]] = []
    try:
        for image, path, options in writes:
            fmt = check_output(path, overwrite)
            # stage: a temp file in the target folder; whatever fails (disk full, an encoder limit,
            # Ctrl-C), nothing half-written remains.
            try:
                staged.append((stage(path, _encoder(image, fmt, **options)), Path(path)))
            except (OSError, ValueError) as e:
                raise OutputError(f"Could not write {path} as {fmt}: {e}") from e
        try:
            commit_all(staged, overwrite)  # exclusive links, or with overwrite renames that can be undone
        except OSError as e:
            raise OutputError(f"Could not write {', '.join(str(p) for _, p in staged)}: {e.strerror or e}.") from e
    finally:
        for tmp, _ in staged:
            tmp.unlink(missing_ok=True)
    return [path for _, path in staged]


def _encoder(image: Image.Image, fmt: str, alpha: Image.Image | None = None, exif: bytes | None = None,
             icc_profile: bytes | None = None, quality: int = 95) -> Callable:
    """write(f): `image` encoded as `fmt`, with the alpha and metadata the format can hold."""
    # A copy, so putalpha below leaves the caller's image alone; a grey mask stays one channel.
    image = image.convert("L" if image.mode == "L" and alpha is None else "RGB")
    if alpha is not None and fmt in _ALPHA_FORMATS:
        if alpha.size != image.size:
            raise ValueError(f"alpha is {alpha.size}, image is {image.size}")
        image.putalpha(alpha.convert("L"))
    options: dict = {}
    if fmt in _METADATA_FORMATS:
        options.update({k: v for k, v in (("exif", exif), ("icc_profile", icc_profile)) if v})
    if fmt == "JPEG":
        options.update(quality=quality, subsampling=0)  # 4:4:4: no chroma blur on edited edges
    elif fmt == "WEBP":
        options.update(quality=quality)
    # TIFF stays uncompressed: compression goes through libtiff, which cannot write the EXIF
    # sub-IFDs (capture date, GPS) that PIL's own TIFF writer keeps.
    return lambda f: image.save(f, format=fmt, **options)


def check_output(path: Path, overwrite: bool = False) -> str:
    """The PIL format `path` will be written in, or OutputError: the checks that cost nothing, made
    before any work (extension known, folder there, name free unless `overwrite`)."""
    path = Path(path)
    fmt = _SAVE_FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise OutputError(
            f"Cannot save {path}: unknown extension {path.suffix or '(none)'!r}. "
            f"Use one of {', '.join(_SAVE_FORMATS)}."
        )
    folder = path.parent
    if not folder.is_dir():
        found = "is a file" if folder.exists() else "does not exist"
        raise OutputError(f"Cannot save {path}: the folder {folder} {found}.")
    if (why := name_problem(path)) is not None:  # before exists(), which raises ENAMETOOLONG
        raise OutputError(f"Cannot save {path}: {why}. Choose a shorter name or another -o.")
    if path.is_dir():
        raise OutputError(f"Cannot save {path}: a folder of that name exists.")
    if path.exists() and not overwrite:
        raise exists_error(path)
    return fmt


@dataclass
class BatchItem:
    """One photo of a batch: where its result went, or why it failed."""

    input: Path
    output: Path | None
    error: str | None
    seconds: float
    identity: IdentityCheck | None = None  # input face vs output face, when checked (pedit.photos.identity)
    traceback: str | None = None  # of a failure, shown with PEDIT_DEBUG=1
    outputs: tuple[Path, ...] = ()  # every file written as the result: one per direction of `pedit edit -d a,b`


def run_batch(
    paths: Sequence[Path],
    process: Callable[[Path], Path],
    on_item: Callable[[BatchItem], None] | None = None,
    workers: int = 1,
) -> list[BatchItem]:
    """Run `process` on each path; any exception while processing one input fails that input only.

    A PeditError's message is the item's error; anything else (a decoder or library failure) is
    named by its type. The traceback is kept for PEDIT_DEBUG=1. Ctrl-C still stops the batch.
    workers > 1 (`pedit edit --server URL --concurrency N`): that many inputs in flight at once in
    threads; items are still reported and returned in input order.
    """
    if workers > 1 and len(paths) > 1:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(min(workers, len(paths))) as pool:
            futures = [pool.submit(_run_one, path, process) for path in paths]
            items = []
            for future in futures:
                items.append(future.result())
                if on_item is not None:
                    on_item(items[-1])
        return items
    items = []
    for path in paths:
        item = _run_one(path, process)
        items.append(item)
        if on_item is not None:
            on_item(item)
    return items


def _run_one(path: Path, process: Callable[[Path], Path]) -> BatchItem:
    start = time.perf_counter()
    tb = None
    try:
        output, error = process(path), None
    except PeditError as e:
        output, error, tb = None, str(e), traceback.format_exc()
    except Exception as e:
        output, error, tb = None, f"unexpected {type(e).__name__}: {e}", traceback.format_exc()
    return BatchItem(input=path, output=output, error=error, seconds=time.perf_counter() - start, traceback=tb)
