"""Backends: each one is a `denoise(z_in, t, context) -> eps` callable, the only thing the sampler
and the editing mask call (DESIGN.md, "Samplers and backends"). They differ in what runs the U-Net:

    torch    eager PyTorch, the model's own precision and device
    compile  torch.compile of the U-Net; on CUDA with CUDA graphs ("reduce-overhead"). Inductor's
             caches live in one folder ($PEDIT_CACHE/compile, default ~/.cache/pedit/compile) so a
             second process loads compiled kernels instead of compiling them again
    onnx     ONNX Runtime on the exported U-Net graph (CUDA provider when onnxruntime-gpu is installed)
    trt      a TensorRT engine (pip install pedit[trt], NVIDIA GPU)

onnx and trt find their graph/engine in an engines folder (`pedit export`'s output) when its
manifest matches the model, else export it once into ~/.cache/pedit/engines/<model hash>/ (the
export stage is skipped in later processes). ONNX graphs are fp32; inputs in another precision are
cast in and out, so the sampler sees the dtype it passed.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Callable

from pedit.errors import ConfigError

BACKENDS = ("torch", "compile", "onnx", "trt")


def cache_root() -> Path:
    return Path(os.environ.get("PEDIT_CACHE", Path.home() / ".cache" / "pedit")).expanduser()


def _t_tensor(t, device):
    """The time step as the graphs take it: float32 of shape (1,) (DDIM gives int64 0-d, Euler float)."""
    import torch

    return torch.as_tensor(t, device=device).reshape(-1)[:1].to(torch.float32)


def torch_backend(model) -> Callable:
    import torch

    mcdm = model.mcdm

    @torch.no_grad()
    def denoise(z_in, t, context):  # (N, 8, h, w), scalar, (N, 77 + K, D) → (N, 4, h, w)
        return mcdm(z_in, t, context)

    return denoise


def compile_backend(model, cache_dir: Path | None = None) -> Callable:
    """torch.compile of the U-Net with Inductor's on-disk caches in `cache_dir`."""
    import torch

    folder = Path(cache_dir or cache_root() / "compile")
    folder.mkdir(parents=True, exist_ok=True)
    # Inductor reads this when it compiles. Not setdefault: importing diffusers already ran Inductor's
    # cache_dir(), which writes its /tmp default into the variable. PEDIT_CACHE moves the folder.
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(folder)
    os.environ.setdefault("TORCHINDUCTOR_FX_GRAPH_CACHE", "1")
    os.environ.setdefault("TORCHINDUCTOR_AUTOGRAD_CACHE", "1")
    unet = model.mcdm.unet
    cuda = unet.device.type == "cuda"
    compiled = torch.compile(unet, mode="reduce-overhead" if cuda else None, dynamic=False, fullgraph=False)

    @torch.no_grad()
    def denoise(z_in, t, context):
        t = torch.as_tensor(t, device=z_in.device)
        eps = compiled(z_in, t, encoder_hidden_states=context).sample
        # CUDA graphs reuse their output buffer on the next replay: hand the sampler its own copy.
        return eps.clone() if cuda else eps

    return denoise


def engines_for(model, engines: str | Path | None, trt: bool, log: Callable[[str], None]) -> tuple[Path, dict]:
    """An engines folder holding the U-Net for `model` (exported there now if missing or stale)."""
    from pedit.export.pipeline import ExportConfig, export_model, read_manifest

    if engines is None:
        # One cache folder per model folder: keyed by its path and its U-Net files' sizes and times
        # (cheap; the export itself then hashes the bytes, and re-exports if they changed).
        unet_dir = Path(model.path) / "unet"
        stats = sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in unet_dir.iterdir() if p.is_file())
        key = hashlib.sha256(json.dumps([str(Path(model.path).resolve()), stats]).encode()).hexdigest()[:16]
        engines = cache_root() / "engines" / key
    else:
        exported_from = read_manifest(Path(engines)).get("model")
        if exported_from and exported_from != str(Path(model.path).resolve()):
            raise ConfigError(f"Engines folder {engines} was exported from another model ({exported_from}). "
                              f"Export this one there with `pedit export -m {model.path} -o {engines}`, or pick another folder.")
    cfg = ExportConfig(model=str(model.path), output=str(engines), networks=("unet",), trt=trt)
    return Path(engines), export_model(cfg, log, model=model)


def onnx_backend(model, engines=None, log: Callable[[str], None] = lambda m: None) -> Callable:
    import torch

    from pedit.export.bindings import OrtBoundRunner
    from pedit.export.onnx_stage import ort_session
    from pedit.export.specs import dims_of, network_specs

    folder, manifest = engines_for(model, engines, trt=False, log=log)
    spec = network_specs(dims_of(model))["unet"]
    session = ort_session(folder / manifest["networks"]["unet"]["onnx"]["file"])
    runner = OrtBoundRunner(session, spec, torch.float32)

    @torch.no_grad()
    def denoise(z_in, t, context):
        out = runner(z_in=z_in, t=_t_tensor(t, runner.device), context=context)["eps"]
        return out.to(device=z_in.device, dtype=z_in.dtype)

    return denoise


def trt_backend(model, engines=None, log: Callable[[str], None] = lambda m: None) -> Callable:
    import torch

    from pedit.export import trt
    from pedit.export.specs import dims_of, network_specs

    trt.require()  # fail with the install hint before any export work
    folder, manifest = engines_for(model, engines, trt=True, log=log)
    spec = network_specs(dims_of(model))["unet"]
    runner = trt.TrtRunner(folder / manifest["networks"]["unet"]["trt"]["file"], spec)

    @torch.no_grad()
    def denoise(z_in, t, context):
        out = runner(z_in=z_in, t=_t_tensor(t, "cuda"), context=context)["eps"]
        return out.to(device=z_in.device, dtype=z_in.dtype)

    return denoise


def make_denoise(model, backend: str = "torch", engines=None, log: Callable[[str], None] = lambda m: None) -> Callable:
    """The `denoise` callable of `backend` for a LoadedModel."""
    if backend == "torch":
        return torch_backend(model)
    if backend == "compile":
        return compile_backend(model)
    if backend == "onnx":
        return onnx_backend(model, engines, log)
    if backend == "trt":
        return trt_backend(model, engines, log)
    raise ConfigError(f"Unknown backend {backend!r}; choose from {', '.join(BACKENDS)}.")
