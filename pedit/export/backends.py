"""Backends: each one is a `denoise(z_in, t, context) -> eps` callable, the only thing the sampler
and the editing mask call (docs/design-notes.md, "Samplers and backends"). They differ in what runs the U-Net:

    torch    eager PyTorch, the model's own precision and device
    compile  torch.compile of the U-Net; on CUDA with CUDA graphs ("reduce-overhead"). Inductor's
             caches live in one folder (pedit.cache: $PEDIT_CACHE/compile, default ~/.cache/pedit/compile)
             so a second process loads compiled kernels instead of compiling them again
    onnx     ONNX Runtime on the exported U-Net graph (CUDA provider when onnxruntime-gpu is installed)
    trt      a TensorRT engine (pip install pedit[trt], NVIDIA GPU)

onnx and trt find their graph/engine in an engines folder (`pedit export`'s output) when its
manifest matches the model (checked: pedit.export.backends.engines_for), else export it once into
~/.cache/pedit/engines/<model hash>/ (the export stage is skipped in later processes). The caller says how many U-Net rows it will send in
one call (`rows`, pedit.edit.mask.unet_rows); the folder's recorded profiles are kept when they
cover that, else widened: the ONNX graph (dynamic batch) stays, a TensorRT engine is rebuilt. ONNX graphs are fp32; inputs in another precision are
cast in and out, so the sampler sees the dtype it passed.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

from pedit.cache import cache_root
from pedit.errors import ConfigError
from pedit.edit.guidance import N_ROWS
from pedit.validate import BACKENDS  # noqa: F401 (the names live with the shared check)


def _t_tensor(t, device, rows: int):
    """The timesteps as the graphs take them: float32 of shape (rows,), one a row (rows of different
    steps share a call, pedit.edit.steps.run); a single timestep is given to every row."""
    import torch

    t = torch.as_tensor(t, device=device).reshape(-1).to(torch.float32)
    return t.expand(rows).contiguous() if t.numel() == 1 else t


def compile_backend(model, cache_dir: Path | None = None) -> Callable:
    """torch.compile of the U-Net with Inductor's on-disk caches in `cache_dir`."""
    import torch

    folder = Path(cache_dir or cache_root("compile"))
    folder.mkdir(parents=True, exist_ok=True)
    # Inductor reads this when it compiles. Not setdefault: importing diffusers already ran Inductor's
    # cache_dir(), which writes its /tmp default into the variable. PEDIT_CACHE moves the folder.
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(folder)
    os.environ.setdefault("TORCHINDUCTOR_FX_GRAPH_CACHE", "1")
    os.environ.setdefault("TORCHINDUCTOR_AUTOGRAD_CACHE", "1")
    unet = model.mcdm.unet
    cuda = unet.device.type == "cuda"
    compiled = torch.compile(unet, mode="reduce-overhead" if cuda else None, dynamic=False, fullgraph=False)

    from pedit.model.distilled import unet_eps

    @torch.no_grad()
    def denoise(z_in, t, context):
        t = torch.as_tensor(t, device=z_in.device)
        eps = unet_eps(compiled, z_in, t, context)  # a student's scale token is split off first
        # CUDA graphs reuse their output buffer on the next replay: hand the sampler its own copy.
        return eps.clone() if cuda else eps

    return denoise


DEFAULT_DRAWS = 10  # mask draws an engine is sized for when the caller needs fewer (pedit export's default)


def _covered_draws(manifest: dict, base_spec) -> int:
    """Draws (mask profile max / 5) the folder's recorded U-Net profiles cover; 0 when none are recorded."""
    try:
        spec = base_spec.with_profiles(manifest["networks"]["unet"]["spec"])
    except (KeyError, TypeError, ValueError):
        return 0  # no U-Net yet, or a hand-edited manifest: exported afresh
    return spec.max_batch("mask") // N_ROWS


def engines_for(model, engines: str | Path | None, trt: bool, log: Callable[[str], None],
                rows: int = N_ROWS * DEFAULT_DRAWS) -> tuple[Path, dict]:
    """An engines folder holding the U-Net for `model` whose profiles take `rows` rows in one call
    (exported or rebuilt there now if missing, stale or too small).

    A folder the user names (`engines`) must hold this model's U-Net: another model's, or one this
    model's weights have changed since, or a graph or data file missing or altered, is an Error, not
    silently exported over. The cache folder (engines=None) is simply brought up to date."""
    from pedit.export.pipeline import ExportConfig, export_model, read_manifest
    from pedit.export.specs import dims_of, network_specs

    named = engines is not None
    if engines is None:
        from pedit.export.runtime_folder import cache_folder

        engines = cache_folder(Path(model.path))  # one per model folder (the runtime's too)
    manifest = read_manifest(Path(engines))
    if named:
        _check_named_folder(model, Path(engines), manifest)
    from pedit.model.sampling_settings import check_draws

    needed = -(-rows // N_ROWS)  # draws (5-row groups) one call sends
    check_draws(f"One U-Net call of {rows} rows (split the editing mask's call with --mask-batch): its draws", needed)
    have = _covered_draws(manifest, network_specs(dims_of(model))["unet"])
    # The recorded profiles when they cover the call (nothing redone); else wide enough for it.
    draws = have if have >= needed else max(needed, DEFAULT_DRAWS)
    cfg = ExportConfig(model=str(model.path), output=str(engines), networks=("unet",), trt=trt, n_noise=draws, wait=True)
    return Path(engines), export_model(cfg, log, model=model)


def _check_named_folder(model, engines: Path, manifest: dict) -> None:
    """ConfigError unless `engines` was exported from `model` as it is now, its graph files intact."""
    from pedit.cache import folder_hash
    from pedit.export.graph_files import problem

    again = f"export this model there with `pedit export -m {model.path} -o {engines} --force`, or pick another folder"
    exported_from = manifest.get("model")
    if exported_from and exported_from != str(Path(model.path).resolve()):
        raise ConfigError(f"Engines folder {engines} was exported from another model ({exported_from}); {again}.")
    entry = manifest.get("networks", {}).get("unet", {})
    for key in ("onnx", "onnx_fp16", "trt"):
        rec = entry.get(key)
        if not rec:
            continue
        if key != "trt" and rec.get("source_hash") not in (None, folder_hash(model.path, ("unet",), dict(manifest.get("file_hashes", {})))):
            raise ConfigError(f"Engines folder {engines} was exported from another model, or from this one before its "
                              f"U-Net weights changed; {again}.")
        if (why := problem(engines, rec)) is not None:
            raise ConfigError(f"Engines folder {engines} is damaged: {why}; {again}.")


def _unet_spec(model, manifest: dict):
    """The U-Net spec with the profiles the folder's graph/engine was made with (its manifest)."""
    from pedit.export.specs import dims_of, network_specs

    return network_specs(dims_of(model))["unet"].with_profiles(manifest["networks"]["unet"]["spec"])


def onnx_backend(model, engines=None, log: Callable[[str], None] = lambda m: None, rows: int = N_ROWS * DEFAULT_DRAWS) -> Callable:
    import torch

    from pedit.export.bindings import OrtBoundRunner
    from pedit.export.onnx_stage import ort_session

    folder, manifest = engines_for(model, engines, trt=False, log=log, rows=rows)
    session = ort_session(folder / manifest["networks"]["unet"]["onnx"]["file"])  # ExportError if it cannot load
    runner = OrtBoundRunner(session, _unet_spec(model, manifest), torch.float32)

    @torch.no_grad()
    def denoise(z_in, t, context):
        out = runner(z_in=z_in, t=_t_tensor(t, runner.device, z_in.shape[0]), context=context)["eps"]
        return out.to(device=z_in.device, dtype=z_in.dtype)

    return denoise


def trt_backend(model, engines=None, log: Callable[[str], None] = lambda m: None, rows: int = N_ROWS * DEFAULT_DRAWS) -> Callable:
    import torch

    from pedit.export import trt

    trt.require()  # fail with the install hint before any export work
    folder, manifest = engines_for(model, engines, trt=True, log=log, rows=rows)
    runner = trt.TrtRunner(folder / manifest["networks"]["unet"]["trt"]["file"], _unet_spec(model, manifest))

    @torch.no_grad()
    def denoise(z_in, t, context):
        out = runner(z_in=z_in, t=_t_tensor(t, z_in.device, z_in.shape[0]), context=context)["eps"]
        return out.to(device=z_in.device, dtype=z_in.dtype)

    return denoise


def make_denoise(model, backend: str = "torch", engines=None, log: Callable[[str], None] = lambda m: None,
                 rows: int = N_ROWS * DEFAULT_DRAWS) -> Callable:
    """The `denoise` callable of `backend` for a LoadedModel; `rows`: the largest batch it will get
    (pedit.edit.mask.unet_rows), which an onnx/trt engine's profiles must cover."""
    if backend == "torch":
        from pedit.edit.editor import torch_denoise

        return torch_denoise(model.mcdm)
    if backend == "compile":
        return compile_backend(model)
    if backend == "onnx":
        return onnx_backend(model, engines, log, rows)
    if backend == "trt":
        return trt_backend(model, engines, log, rows)
    raise ConfigError(f"Unknown backend {backend!r}; choose from {', '.join(BACKENDS)}.")


def load_editor(path=None, device: str | None = None, allow_pickle: bool = False, backend: str = "torch",
                precision: str | None = None, engines: str | Path | None = None,
                log: Callable[[str], None] = lambda msg: None, cache: bool = False,
                unet_rows: int | None = None):
    """An Editor of a model folder (None: the bundled toon model) whose U-Net runs on `backend`.

    torch: Editor.from_pretrained itself (cache=True: the TorchScript cache on the CPU in fp32).
    Others: the model loaded eagerly, then this backend's denoise handed to the editor.
    unet_rows: the largest U-Net call the caller will make (pedit.edit.mask.unet_rows; default: one
    image with the model's own mask settings, the largest over its directions); an onnx/trt engine
    is widened only if it does not cover it. engines: a `pedit export` folder for onnx/trt.
    """
    from pedit.edit.editor import Editor
    from pedit.export.runtime_folder import refuse_other_backend

    refuse_other_backend(path, backend)
    editor = Editor.from_pretrained(path, device=device, allow_pickle=allow_pickle, precision=precision,
                                    cache=cache and backend == "torch")
    if backend == "torch":
        return editor
    from pedit.edit.mask import unet_rows as rows_of
    from pedit.model.mask_settings import mask_config_for

    model = editor.model
    if unet_rows is None:  # the largest mask call of the model's own settings, over its directions
        unet_rows = max(rows_of(mask_config_for(model.meta, d)) for d in [None, *editor.directions.values()])
    editor.denoise = make_denoise(model, backend, engines, log, unet_rows)
    return editor
