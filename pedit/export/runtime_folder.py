"""An exported folder as the torch-free runtime reads it, checked like a model folder before any work.

`read_export(folder, backend)` returns an `Export`: the graphs the runtime runs (paths, verified
against the manifest's sha256), the schedule table, the CLIP resize, the tokenizer file and the
model folder's pedit.json as `pedit export` recorded them (pedit.export.runtime_files). Whatever is
wrong (no manifest, a graph missing or altered, the runtime's files missing, a malformed pedit.json)
is one ModelError naming the folder and the command that repairs it. Nothing here imports torch.

`is_export(path)`: whether `-m PATH` names an exported folder rather than a model folder.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from pedit.errors import ModelError
from pedit.export.graph_files import problem
from pedit.export.pipeline import MANIFEST, NETWORKS, read_manifest
from pedit.export.runtime_files import ARRAYS, MODEL_JSON, RUNTIME_FORMAT, TOKENIZER


@dataclass(frozen=True)
class Export:
    """What the runtime needs from an exported folder; every file in it checked against the manifest."""

    folder: Path
    model: str  # the model folder it was exported from (as recorded; it need not exist here)
    graphs: dict  # network name → Path of the graph the backend runs
    hashes: dict  # network name → that graph's sha256, as the manifest records it
    meta: dict  # the model folder's pedit.json
    scheduler_config: dict
    dims: dict  # pedit.export.specs.Dims as a dict
    latent_factor: int
    arrays: dict  # alphas_cumprod, clip_resize, clip_mean, clip_std (numpy)
    tokenizer: Path

    @property
    def resolution(self) -> int:
        return int(self.dims["resolution"])


def is_export(path) -> bool:
    """Whether `path` is a folder `pedit export` wrote (it holds manifest.json, not pedit.json)."""
    p = Path(path).expanduser()
    return p.is_dir() and (p / MANIFEST).is_file() and not (p / "pedit.json").exists()


def refuse_other_backend(model, backend: str) -> None:
    """ConfigError when `-m` names an exported folder and `backend` is not one the runtime runs."""
    from pedit.errors import ConfigError

    if backend not in ("onnx", "trt") and model is not None and is_export(model):
        raise ConfigError(f"-m {model} is an exported folder (`pedit export`): it edits with --backend onnx or trt, "
                          "without torch; for another backend pass the model folder it was exported from.")


def _again(folder: Path, model: str | None) -> str:
    return f"export it again with `pedit export -m {model or 'MODEL'} -o {folder} --force`"


def read_export(folder, backend: str = "onnx") -> Export:
    """The checked Export of `folder` for `backend` (onnx: the fp32 graphs; trt: the U-Net's fp16 graph
    where the folder has one, which ONNX Runtime's TensorRT provider builds its engine from)."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise ModelError(f"Exported folder {folder} does not exist or is not a folder; write one with "
                         f"`pedit export -m MODEL -o {folder}`.")
    manifest = read_manifest(folder)
    if not manifest:
        raise ModelError(f"{folder} is not a `pedit export` folder (no readable {MANIFEST}); write one with "
                         f"`pedit export -m MODEL -o {folder}`.")
    model = manifest.get("model")
    runtime = manifest.get("runtime")
    if not isinstance(runtime, dict) or runtime.get("format") != RUNTIME_FORMAT:
        raise ModelError(f"{folder} was exported without the runtime's files ({TOKENIZER}, {ARRAYS}, {MODEL_JSON}: "
                         f"an older pedit, or not all five networks); {_again(folder, model)}.")
    graphs, hashes = {}, {}
    for name in NETWORKS:
        entry = manifest.get("networks", {}).get(name, {})
        rec = (entry.get("onnx_fp16") if backend == "trt" and name == "unet" else None) or entry.get("onnx")
        if not rec:
            raise ModelError(f"{folder} holds no {name} graph; the runtime needs all five "
                             f"({', '.join(NETWORKS)}): {_again(folder, model)}.")
        if (why := problem(folder, rec)) is not None:
            raise ModelError(f"Exported folder {folder} is damaged: {why}; {_again(folder, model)}.")
        # a graph with external data (Stable Diffusion size) keeps no optimised copy: "" (runtime_sessions)
        graphs[name], hashes[name] = folder / rec["file"], "" if "data" in rec else str(rec.get("sha256", ""))
    files = runtime.get("files", {})
    for name in (TOKENIZER, ARRAYS, MODEL_JSON):
        if (why := problem(folder, files.get(name))) is not None:
            why = f"{folder / name} is missing from the manifest" if why == "no graph is recorded" else why
            raise ModelError(f"Exported folder {folder} is damaged: {why}; {_again(folder, model)}.")
    described = _model_json(folder)
    from pedit.model.mask_refiner import refiner_files

    for name in refiner_files(described["meta"]):  # a learned mask refiner's file, as exported
        if (why := problem(folder, files.get(name))) is not None:
            why = f"{folder / name} is missing from the manifest" if why == "no graph is recorded" else why
            raise ModelError(f"Exported folder {folder} is damaged: {why}; {_again(folder, model)}.")
    return Export(folder=folder, model=str(model), graphs=graphs, hashes=hashes, meta=described["meta"],
                  scheduler_config=described["scheduler_config"], dims=described["dims"],
                  latent_factor=int(described["latent_factor"]), arrays=_arrays(folder), tokenizer=folder / TOKENIZER)


def _model_json(folder: Path) -> dict:
    """model.json, its pedit.json checked as read_model_folder checks a model folder's."""
    from pedit.data.directions import model_directions
    from pedit.model.mask_refiner import check_refiners
    from pedit.model.mask_settings import check_mask_settings
    from pedit.model.sampling_settings import check_sampling_settings

    path = folder / MODEL_JSON
    try:
        data = json.loads(path.read_text())
        meta, dims = data["meta"], data["dims"]
        if not (isinstance(meta, dict) and isinstance(data["scheduler_config"], dict) and isinstance(dims, dict)):
            raise TypeError("meta, scheduler_config and dims must be objects")
        int(dims["resolution"]), int(data["latent_factor"])
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as e:
        raise ModelError(f"{path} is not a valid description of the exported model ({e}).") from None
    directions = model_directions(meta, folder)  # ModelError naming the entry
    try:
        check_mask_settings(meta, path, list(directions))  # as the torch loader does: no unknown direction
        check_sampling_settings(meta, path)
    except ValueError as e:
        raise ModelError(str(e)) from None
    check_refiners(meta, folder)  # the export carries the refiner's file beside model.json
    return data


def _arrays(folder: Path) -> dict:
    import numpy as np

    try:
        with np.load(folder / ARRAYS, allow_pickle=False) as npz:
            return {k: npz[k] for k in ("alphas_cumprod", "clip_resize", "clip_mean", "clip_std")}
    except (OSError, ValueError, KeyError) as e:
        raise ModelError(f"{folder / ARRAYS} cannot be read ({type(e).__name__}: {e}).") from None


def cache_folder(model_folder: Path) -> Path:
    """The engines cache of a model folder ($PEDIT_CACHE/engines/<key>, pedit.export.backends.engines_for's):
    keyed by its path and its U-Net files' sizes and times (cheap; the export itself hashes the bytes)."""
    import hashlib

    from pedit.cache import cache_root

    unet_dir = Path(model_folder) / "unet"
    stats = sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in unet_dir.iterdir() if p.is_file()) \
        if unet_dir.is_dir() else []
    key = hashlib.sha256(json.dumps([str(Path(model_folder).resolve()), stats]).encode()).hexdigest()[:16]
    return cache_root("engines") / key


def _is_current(folder: Path, model_folder: Path) -> bool:
    """Whether `folder` holds a runtime export of `model_folder` as it is now (hashes by file stats)."""
    from pedit.cache import folder_hash
    from pedit.export.runtime_files import runtime_sources

    manifest = read_manifest(folder)
    runtime = manifest.get("runtime")
    if manifest.get("model") != str(model_folder.resolve()) or not isinstance(runtime, dict):
        return False
    known = dict(manifest.get("file_hashes", {}))
    return runtime.get("source_hash") == folder_hash(model_folder, runtime_sources(model_folder), known)


def export_for(model, engines=None, log=lambda msg: None, allow_pickle: bool = False) -> Path:
    """The exported folder `pedit edit --backend onnx|trt` runs: `-m` itself when it names one; else the
    `--engines` folder, or the model's cache folder, exported there now (with torch, once) unless it
    already holds this model's runtime export as the model folder is now. From the second run on
    nothing here imports torch."""
    if model is not None and is_export(model):
        if engines is not None:
            raise ModelError(f"-m {model} is an exported folder already; leave out --engines {engines}.")
        return Path(model).expanduser()
    from pedit.model.paths import model_path

    model_folder = model_path(model)
    if not (model_folder / "pedit.json").is_file():
        # The loader's checks and messages (a missing folder, a file, missing parts) come with the export.
        from pedit.model.loading import read_model_folder

        read_model_folder(model)
    target = Path(engines).expanduser() if engines is not None else cache_folder(model_folder)
    if _is_current(target, model_folder):
        return target
    exported_from = read_manifest(target).get("model") if engines is not None else None
    if exported_from and exported_from != str(model_folder.resolve()):
        raise ModelError(f"Engines folder {target} was exported from another model ({exported_from}); export this "
                         f"model there with `pedit export -m {model_folder} -o {target} --force`, or pick another folder.")
    import importlib.util

    if importlib.util.find_spec("torch") is None:
        from pedit.errors import MissingPackageError

        raise MissingPackageError(f"{target} holds no current export of {model_folder}, and exporting one needs torch, "
                                  "which this install leaves out: pass -m a folder `pedit export` wrote, or pip install "
                                  "'pedit[torch]'.")
    from pedit.export.pipeline import ExportConfig, export_model

    # The U-Net's recorded profiles stay (an engine built for them is not made stale): ONNX Runtime takes any batch.
    cfg = ExportConfig(model=str(model_folder), output=str(target), wait=True, allow_pickle=allow_pickle,
                       n_noise=_recorded_draws(read_manifest(target)) or 10)
    export_model(cfg, log)
    return target


def _recorded_draws(manifest: dict) -> int:
    """The mask draws the folder's U-Net profiles were made for (mask profile max / 5 rows), 0 when none."""
    from pedit.edit.guidance import N_ROWS
    from pedit.model.sampling_settings import MAX_DRAWS

    try:
        draws = int(manifest["networks"]["unet"]["spec"]["profiles"]["mask"][2]) // N_ROWS
    except (KeyError, TypeError, ValueError, IndexError):
        return 0
    return draws if 1 <= draws <= MAX_DRAWS else 0
