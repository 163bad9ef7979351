"""`pedit export`: a model folder → ONNX graphs (→ TensorRT engines) + manifest.json, stage by stage.

Stages per network: torch → ONNX (parity-checked against torch) → TensorRT engine (`--trt`).
A stage is skipped when its output file is there, its bytes hash to what the manifest recorded,
and the hash of its inputs (the network's weights and spec without profiles, the tool versions; for
an engine the ONNX file, the spec with its profiles and the build settings) equals the manifest's:
the caller is told "skipped". ONNX graphs keep the batch axis dynamic, so new profiles (another
--mask-noises) reuse the graph and rebuild only the engine. `force`
redoes every stage. The manifest is rewritten after each stage, atomically, so an interrupted
export keeps what it finished.

manifest.json:
    model, model_hash              the source folder and the hash of every weight/config file used
    tools                          versions of pedit, torch, diffusers, transformers, onnx, onnxruntime(, tensorrt)
    networks.<name>.spec           input/output names and shapes ("B" = batch), profiles (what the
                                   engine was built for and what the runners accept)
    networks.<name>.onnx           file, sha256, input_hash, precision, opset, parity {max_abs, max_rel, batches, seed}
    networks.<name>.trt            file, sha256, input_hash, precision, device (with --trt)
max_rel is max |onnx − torch| / max |torch| over the checked batches.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from pedit.cache import file_sha256, folder_hash, stat_key
from pedit.errors import ConfigError, OutputError

MANIFEST = "manifest.json"
NETWORKS = ("unet", "image_projector", "text_encoder", "vae_encoder", "vae_decoder")
MANIFEST_FORMAT = 1


@dataclass(frozen=True)
class ExportConfig:
    model: str | None = None  # None → the bundled toon model
    output: str = "engines"
    trt: bool = False
    force: bool = False
    networks: tuple[str, ...] = NETWORKS
    n_noise: int = 10  # sizes the U-Net's mask profile: 5 rows x N draws (1..1024, as MaskConfig)
    tolerance: float = 1e-3  # largest max_rel an fp32 ONNX graph may show against torch
    allow_pickle: bool = False

    def __post_init__(self):
        from pedit.validate import check_int, check_number

        unknown = [n for n in self.networks if n not in NETWORKS]
        if unknown or not self.networks:
            raise ConfigError(f"Unknown network(s) {', '.join(unknown) or '(none)'}; choose from {', '.join(NETWORKS)}.")
        check_int("n_noise", self.n_noise, 1, 1024)
        check_number("tolerance", self.tolerance, 0, 1, lo_open=True, hi_open=True)


def tool_versions() -> dict:
    import importlib.metadata as md

    from pedit import __version__

    out = {"pedit": __version__}
    for pkg in ("torch", "diffusers", "transformers", "onnx", "onnxruntime", "onnxruntime-gpu", "tensorrt"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return out


def _digest(*items) -> str:
    return hashlib.sha256(json.dumps(items, sort_keys=True, default=str).encode()).hexdigest()


def read_manifest(out: Path) -> dict:
    path = out / MANIFEST
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError):
        return {}  # unreadable: every stage is redone and the manifest rewritten
    return data if isinstance(data, dict) and data.get("format") == MANIFEST_FORMAT else {}


def _write_manifest(out: Path, manifest: dict) -> None:
    tmp = out / f".{MANIFEST}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(manifest, indent=2))
    os.replace(tmp, out / MANIFEST)


def _fresh(entry: dict | None, out: Path, input_hash: str) -> bool:
    """True when a stage's recorded output exists, is intact and was made from these inputs."""
    if not entry or entry.get("input_hash") != input_hash:
        return False
    path = out / entry.get("file", "")
    if not path.is_file():
        return False
    if entry.get("stat") == stat_key(path.stat()):
        return True  # unchanged since it was hashed (a multi-GB graph is not re-read in every process)
    return file_sha256(path) == entry.get("sha256")


def _output_record(path: Path) -> dict:
    return {"file": path.name, "sha256": file_sha256(path), "stat": stat_key(path.stat())}


def export_model(cfg: ExportConfig, log: Callable[[str], None] = lambda msg: None, model=None) -> dict:
    """Run the stages for cfg.networks; returns the manifest.

    `model` (a LoadedModel in any precision, on any device) spares loading it; a graph is always
    exported from an fp32 copy on the CPU, loaded only when some stage is not skipped.
    """
    import torch

    from pedit.export.onnx_stage import OPSET, ExportError, export_onnx, parity
    from pedit.export.specs import dims_of, network_specs, torch_module
    from pedit.model.loading import load_model

    if model is None:
        model = load_model(cfg.model, allow_pickle=cfg.allow_pickle, device="cpu", dtype=torch.float32)
    out = Path(cfg.output)
    if out.exists() and not out.is_dir():
        raise OutputError(f"{out} is a file; -o takes a folder for the engines.")
    out.mkdir(parents=True, exist_ok=True)
    dims = dims_of(model)
    specs = network_specs(dims, cfg.n_noise)
    tools = tool_versions()
    old = read_manifest(out)
    source = str(Path(model.path).resolve())
    known = dict(old.get("file_hashes", {})) if old.get("model") == source else {}
    manifest = {
        "format": MANIFEST_FORMAT,
        "model": source,
        "model_hash": folder_hash(model.path, tuple(sorted({s for n in NETWORKS for s in specs[n].sources})), known),
        "tools": tools,
        "networks": dict(old.get("networks", {})) if old.get("model") == source else {},
        "file_hashes": known,
    }
    fp32 = []  # the fp32 CPU model graphs are exported from, loaded at most once

    def export_source():
        if not fp32:
            unet = model.mcdm.unet
            same = unet.dtype == torch.float32 and unet.device.type == "cpu"
            fp32.append(model if same else load_model(model.path, allow_pickle=cfg.allow_pickle, device="cpu",
                                                      dtype=torch.float32))
        return fp32[0]

    versions = {k: tools.get(k) for k in ("torch", "onnx", "diffusers", "transformers", "pedit")}
    for name in cfg.networks:
        spec = specs[name]
        entry = dict(manifest["networks"].get(name, {}))
        entry["spec"] = spec.describe()
        # Profiles are left out: the graph's batch axis is dynamic, and the engine's hash has them.
        onnx_hash = _digest(folder_hash(model.path, spec.sources, known), spec.describe(profiles=False), OPSET, versions)
        if not cfg.force and _fresh(entry.get("onnx"), out, onnx_hash):
            log(f"{name}: ONNX skipped (inputs unchanged)")
        else:
            module = torch_module(name, export_source())
            t0 = time.perf_counter()
            path = out / f"{name}.onnx"
            export_onnx(spec, module, dims, path)
            seconds = time.perf_counter() - t0
            check = parity(spec, module, dims, path)
            if check["max_rel"] > cfg.tolerance:
                path.unlink(missing_ok=True)
                raise ExportError(
                    f"{name}: the ONNX graph disagrees with torch (max_rel {check['max_rel']:.2e} > {cfg.tolerance:g}, "
                    f"max_abs {check['max_abs']:.2e}); nothing was kept. Report it with PEDIT_DEBUG=1's traceback."
                )
            entry["onnx"] = {**_output_record(path), "input_hash": onnx_hash,
                             "precision": "fp32", "opset": OPSET, "parity": check, "seconds": round(seconds, 3)}
            entry.pop("trt", None)  # an engine of the old graph is stale
            log(f"{name}: ONNX written in {seconds:.1f} s, parity max_abs {check['max_abs']:.2e} "
                f"max_rel {check['max_rel']:.2e}")
        manifest["networks"][name] = entry
        _write_manifest(out, manifest)
        if cfg.trt:
            _trt_stage(cfg, out, manifest, name, spec, log)
    return manifest


def _trt_stage(cfg: ExportConfig, out: Path, manifest: dict, name: str, spec, log) -> None:
    from pedit.export import trt

    entry = manifest["networks"][name]
    settings = trt.BuildSettings()
    engine_hash = _digest(entry["onnx"]["sha256"], spec.describe(), settings, trt.device_name(), manifest["tools"].get("tensorrt"))
    if not cfg.force and _fresh(entry.get("trt"), out, engine_hash):
        log(f"{name}: TensorRT engine skipped (inputs unchanged)")
        return
    path = out / f"{name}.plan"
    t0 = time.perf_counter()
    trt.build_engine(out / entry["onnx"]["file"], path, spec, settings, timing_cache=out / "timing.cache")
    entry["trt"] = {**_output_record(path), "input_hash": engine_hash,
                    "precision": "fp16" if settings.fp16 else "fp32", "device": trt.device_name(),
                    "seconds": round(time.perf_counter() - t0, 1)}
    _write_manifest(out, manifest)
    log(f"{name}: TensorRT engine written in {entry['trt']['seconds']} s")
