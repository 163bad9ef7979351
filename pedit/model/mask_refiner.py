"""The learned mask refiner's file (MaskConfig.refine "learned"): a small convolutional network's
weights in an .npz in the model folder, named by the mask settings' "refiner". numpy only.

The file holds `kind` (FORMAT), `resolution` (the images it was trained at), `features` (the names
of its input channels: FEATURES, then optionally some of EXTRA_FEATURES, made by pedit.edit.learned_mask.features) and, per layer i, `w{i}` (out, in, k, k)
float32, `b{i}` (out,) float32 and `d{i}` (the dilation); a ReLU follows every layer but the last,
whose single channel is the logit of "this pixel is in the edited region". A folder naming a file
pedit cannot run (missing, unreadable, another kind, another resolution, other features, shapes
that do not chain) is one ModelError when it loads.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pedit.errors import ModelError

FORMAT = "pedit-mask-refiner-1"
FEATURES = ("prior", "change", "input_r", "input_g", "input_b", "edit_r", "edit_g", "edit_b", "latent_mask")
# the edit's colour change averaged over (2r+1)^2 windows (the difference at coarser scales), and the pixel's row and
# column in [0, 1] (where in the picture the direction's region tends to lie)
EXTRA_FEATURES = ("change_r2", "change_r4", "change_r8", "change_r16", "row", "col")
MAX_LAYERS = 16
RESERVED = ("runtime.npz",)  # the .npz `pedit export` writes beside the refiner files it copies (pedit.export.runtime_files)


@dataclass(frozen=True, eq=False)
class Refiner:
    """A loaded refiner: its resolution, its layers [(weight (out, in, k, k), bias (out,), dilation)] and the names
    of its input channels."""

    resolution: int
    layers: tuple
    features: tuple = FEATURES

    @property
    def parameters(self) -> int:
        return sum(w.size + b.size for w, b, _ in self.layers)


def save_refiner(path, resolution: int, layers, features=FEATURES) -> None:
    """Write `layers` [(weight, bias, dilation)] reading `features` as a refiner file (FORMAT) for images of
    `resolution` px."""
    arrays = {"kind": np.array(FORMAT), "resolution": np.array(int(resolution)), "features": np.array(features)}
    for i, (w, b, d) in enumerate(layers):
        arrays[f"w{i}"], arrays[f"b{i}"], arrays[f"d{i}"] = (np.asarray(w, np.float32), np.asarray(b, np.float32),
                                                             np.array(int(d)))
    with open(path, "wb") as f:
        np.savez(f, **arrays)


_CACHE: OrderedDict = OrderedDict()  # least recently used first
_CACHE_LOCK = threading.Lock()
CACHE_SIZE = 32  # refiner files kept loaded (about 50 KB each): every direction of a few models in one process


def load_refiner(path, resolution: int) -> Refiner:
    """The refiner in `path` for images of `resolution` px; ModelError saying what is wrong. Cached per
    file (path, size, modification time), so each edit does not read it again."""
    path = Path(path)
    try:
        st = path.stat()
    except OSError:
        raise ModelError(f"The mask refiner {path} does not exist; the model folder's mask settings name it "
                         f"(\"refiner\").") from None
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns, int(resolution))
    with _CACHE_LOCK:  # edits on several threads (the app, a server's instances) share it
        refiner = _CACHE.get(key)
        if refiner is not None:
            _CACHE.move_to_end(key)
            return refiner
    refiner = _read(path, int(resolution))  # outside the lock: a slow read never holds up cached edits
    with _CACHE_LOCK:
        _CACHE[key] = refiner
        _CACHE.move_to_end(key)
        while len(_CACHE) > CACHE_SIZE:
            _CACHE.popitem(last=False)
    return refiner


def _read(path: Path, resolution: int) -> Refiner:
    def bad(why: str) -> ModelError:
        return ModelError(f"The mask refiner {path} cannot be used: {why}.")

    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (OSError, ValueError, EOFError) as e:
        raise bad(f"not a readable .npz ({type(e).__name__})") from None
    if "kind" not in arrays or str(arrays["kind"]) != FORMAT:
        raise bad(f"its kind is {str(arrays.get('kind', 'missing'))!r}, not {FORMAT!r}")
    try:
        got = int(arrays["resolution"])
        features = tuple(str(f) for f in arrays["features"])
    except (KeyError, TypeError, ValueError):
        raise bad("no resolution or features recorded") from None
    if got != resolution:
        raise bad(f"it was trained for {got} px images and this model edits at {resolution} px")
    if features[:len(FEATURES)] != FEATURES or not set(features[len(FEATURES):]) <= set(EXTRA_FEATURES):
        raise bad(f"it reads the features {', '.join(features)}, and pedit makes {', '.join(FEATURES)} and then any of "
                  f"{', '.join(EXTRA_FEATURES)}")
    layers, channels = [], len(features)
    for i in range(MAX_LAYERS + 1):
        if f"w{i}" not in arrays:
            break
        try:
            w, b, d = arrays[f"w{i}"].astype(np.float32), arrays[f"b{i}"].astype(np.float32), int(arrays[f"d{i}"])
        except (KeyError, TypeError, ValueError):
            raise bad(f"layer {i} lacks its bias or dilation") from None
        if (w.ndim != 4 or w.shape[1] != channels or w.shape[2] != w.shape[3] or w.shape[2] % 2 == 0
                or b.shape != (w.shape[0],) or not 1 <= d <= resolution or not np.all(np.isfinite(w))
                or not np.all(np.isfinite(b))):
            raise bad(f"layer {i} is not a finite odd-square convolution from {channels} channels "
                      f"(weight {w.shape}, bias {b.shape}, dilation {d})")
        layers.append((w, b, d))
        channels = w.shape[0]
    if not layers or len(layers) > MAX_LAYERS or channels != 1:
        raise bad(f"it must have 1 to {MAX_LAYERS} layers ending in one channel")
    return Refiner(resolution=resolution, layers=tuple(layers), features=features)


def refiner_files(meta: dict) -> list[str]:
    """The refiner file names the mask settings of a pedit.json name (each once, in order)."""
    names = [meta.get("mask", {}).get("refiner")]
    for level in ("mask_by_task", "mask_by_direction"):
        names += [s.get("refiner") for s in meta.get(level, {}).values() if isinstance(s, dict)]
    return list(dict.fromkeys(n for n in names if n))


def check_refiners(meta: dict, folder) -> None:
    """ModelError when a refiner file the mask settings name is not a plain file name in `folder`, or
    cannot run at the model's resolution (load_refiner)."""
    for name in refiner_files(meta):
        if not isinstance(name, str) or Path(name).name != name or name in (".", ".."):
            raise ModelError(f"{Path(folder) / 'pedit.json'}: a mask \"refiner\" must be a file name in the model "
                             f"folder, got {name!r}.")
        if not name.casefold().endswith(".npz") or name.casefold() in RESERVED:  # case-insensitive disks too
            raise ModelError(f"{Path(folder) / 'pedit.json'}: a mask \"refiner\" must be an .npz file other than "
                             f"{', '.join(sorted(RESERVED))} (`pedit export` copies it beside its own files), got {name!r}.")
        load_refiner(Path(folder) / name, int(meta["resolution"]))
