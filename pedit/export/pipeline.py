"""`pedit export`: a model folder → ONNX graphs (→ TensorRT engines) + manifest.json, stage by stage.

Stages per network: torch → ONNX (parity-checked against torch) → TensorRT engine (`--trt`).
A stage is skipped when its output file is there, its bytes hash to what the manifest recorded,
and the hash of its inputs (the network's weights and spec without profiles, the tool versions; for
an engine the ONNX file, the spec with its profiles and the build settings) equals the manifest's:
the caller is told "skipped". ONNX graphs keep the batch axis dynamic, so new profiles (another
--mask-noises) reuse the graph and rebuild only the engine. `force`
redoes every stage. The manifest is rewritten after each stage, atomically, so an interrupted
export keeps what it finished. One export owns the folder at a time (pedit.export.graph_files: a
lock; the debris of killed exports is removed first); every graph is built in a temp folder,
parity-checked there and only then moved into place, with its weights in one `<name>.onnx.data`
beside it once they pass `external_mb` (the SD 1.5 U-Net: about 3.4 GB in fp32).

fp16 graphs (`fp16`, and always with `trt`): `<name>.fp16.onnx` (float32 inputs and outputs, fp16
inside), parity-checked against the fp32 torch module within FP16_TOLERANCE. TensorRT engines are
built strongly typed from them, so the engine's precision is the graph's (pedit.export.trt).

manifest.json:
    model, model_hash              the source folder and the hash of every weight/config file used
    tools                          versions of pedit, torch, diffusers, transformers, onnx, onnxruntime(, tensorrt)
    networks.<name>.spec           input/output names and shapes ("B" = batch), profiles (what the
                                   engine was built for and what the runners accept)
    networks.<name>.onnx           file, sha256, stat, [data {file, sha256, stat}], input_hash, source_hash,
                                   precision, opset, parity {max_abs, max_rel, batches, seed, tolerance}
    networks.<name>.onnx_fp16      the same for the fp16 graph (with fp16 / --trt)
    networks.<name>.trt            file, sha256, input_hash, graph (which ONNX it was built from),
                                   precision, io {tensor: dtype, read from the engine}, device,
                                   tensorrt (version)
    runtime                        format, source_hash (of the model folder's parts it is made of),
                                   files {tokenizer.json, runtime.npz, model.json: {file, sha256, stat}}: what the torch-free runtime reads besides the graphs
                                   (pedit.export.runtime_files), written once all five graphs are there
max_rel is max |onnx − torch| / max |torch| over the checked batches.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from pedit.cache import folder_hash
from pedit.errors import ConfigError, OutputError
from pedit.export import graph_files
from pedit.files import write_text_atomic

MANIFEST = "manifest.json"
NETWORKS = ("unet", "image_projector", "text_encoder", "vae_encoder", "vae_decoder")
MANIFEST_FORMAT = 1
# In every graph's hash: 2 = graphs built in a temp folder (external data), the VAE encoder's static
# channel slice, fp16 graphs; 3 = the U-Net's timestep one per row, t (B,). Folders exported by an
# older pedit re-export once.
GRAPH_FORMAT = 3


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
    fp16: bool = False  # also write fp16 graphs (--trt always does: its engines are built from them)
    external_mb: float = 1024.0  # graphs whose weights pass this many MiB keep them in <name>.onnx.data
    wait: bool = False  # wait for another export of the folder to finish (backends) instead of failing

    def __post_init__(self):
        from pedit.files import check_output_not_input
        from pedit.validate import check_int, check_number

        check_output_not_input(self.output, {"-m": self.model})  # before anything is said or done
        unknown = [n for n in self.networks if n not in NETWORKS]
        if unknown or not self.networks:
            raise ConfigError(f"Unknown network(s) {', '.join(unknown) or '(none)'}; choose from {', '.join(NETWORKS)}.")
        from pedit.model.sampling_settings import check_draws

        check_draws("n_noise", self.n_noise)
        check_number("tolerance", self.tolerance, 0, 1, lo_open=True, hi_open=True)
        check_number("external_mb", self.external_mb, 0, 2047)  # protobuf's limit is 2 GiB


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
    write_text_atomic(out / MANIFEST, json.dumps(manifest, indent=2), overwrite=True)


def _fresh(entry: dict | None, out: Path, input_hash: str) -> bool:
    """True when a stage's recorded output (graph and data) exists, is intact and was made from these inputs."""
    return bool(entry) and entry.get("input_hash") == input_hash and graph_files.problem(out, entry) is None


def export_model(cfg: ExportConfig, log: Callable[[str], None] = lambda msg: None, model=None) -> dict:
    """Run the stages for cfg.networks; returns the manifest.

    `model` (a LoadedModel in any precision, on any device) spares loading it; a graph is always
    exported from an fp32 copy on the CPU, loaded only when some stage is not skipped.
    """
    import torch

    from pedit.model.loading import load_model

    from pedit.files import check_output_not_input

    check_output_not_input(cfg.output, {"-m": cfg.model if model is None else model.path})
    if model is None:
        model = load_model(cfg.model, allow_pickle=cfg.allow_pickle, device="cpu", dtype=torch.float32)
    check_runtime_samplers(model)
    out = Path(cfg.output)
    if out.exists() and not out.is_dir():
        raise OutputError(f"{out} is a file; -o takes a folder for the engines.")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputError(f"Cannot create the engines folder {out}: {e.strerror or e}.") from None
    with graph_files.exclusive(out, wait=cfg.wait):
        for p in graph_files.clean_debris(out):
            log(f"removed {p.name}, left by an export that was killed")
        return _export_locked(cfg, out, model, log)


def check_runtime_samplers(model) -> None:
    """ModelError, before anything is written, when a sampler the model folder can resolve ("sampling",
    each task's "sampling_by_task") cannot run in the torch-free runtime the export is for (its editor
    and the Triton `pedit` model): DDIM only, at steps the noise schedule gives."""
    from pedit.edit.options import check_folder_samplers
    from pedit.edit.sampler import check_steps, make_scheduler

    def ddim(sampling):
        check_steps(sampling.steps, make_scheduler("ddim", model.parts.scheduler_config))

    check_folder_samplers(model.meta, Path(model.path) / "pedit.json", ddim, ("ddim",),
                          "the torch-free runtime an export serves")


def _export_locked(cfg: ExportConfig, out: Path, model, log) -> dict:
    import torch

    from pedit.export.onnx_stage import FP16_NETWORKS
    from pedit.export.specs import dims_of, network_specs
    from pedit.model.loading import load_model

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

    for name in cfg.networks:
        spec = specs[name]
        entry = dict(manifest["networks"].get(name, {}))
        entry["spec"] = spec.describe()
        sources = folder_hash(model.path, spec.sources, known)
        precisions = ["fp32"] + (["fp16"] if (cfg.fp16 or cfg.trt) and name in FP16_NETWORKS else [])
        for precision in precisions:
            key = "onnx" if precision == "fp32" else "onnx_fp16"
            if _onnx_stage(cfg, out, entry, key, precision, spec, dims, sources, tools, export_source, log):
                entry.pop("trt", None)  # an engine of the old graph is stale
        manifest["networks"][name] = entry
        _write_manifest(out, manifest)
        if cfg.trt:
            _trt_stage(cfg, out, manifest, name, spec, log)
    if all(manifest["networks"].get(n, {}).get("onnx") for n in NETWORKS):  # what the torch-free runtime reads
        from pedit.export.runtime_files import write_runtime_files

        kept = old.get("runtime") if old.get("model") == source else None
        manifest["runtime"] = write_runtime_files(out, model, dims, kept, manifest["file_hashes"], log)
        _write_manifest(out, manifest)
    return manifest


def _onnx_stage(cfg, out: Path, entry: dict, key: str, precision: str, spec, dims, sources: str, tools: dict,
                export_source, log) -> bool:
    """The torch → ONNX stage of one network in one precision; True when it wrote a new graph."""
    from pedit.export.onnx_stage import (FP16_TOLERANCE, OPSET, ExportError, export_onnx, half_with_float_io,
                                         parity, parity_batches)
    from pedit.export.specs import torch_module

    versions = {k: tools.get(k) for k in ("torch", "onnx", "diffusers", "transformers", "pedit")}
    # Profiles are left out: the graph's batch axis is dynamic, and the engine's hash has them.
    onnx_hash = _digest(sources, spec.describe(profiles=False), OPSET, versions, precision, GRAPH_FORMAT)
    label = spec.name if precision == "fp32" else f"{spec.name} (fp16)"
    if not cfg.force and _fresh(entry.get(key), out, onnx_hash):
        log(f"{label}: ONNX skipped (inputs unchanged)")
        return False
    import torch

    module = torch_module(spec.name, export_source())
    stem = f"{spec.name}.onnx" if precision == "fp32" else f"{spec.name}.fp16.onnx"
    tolerance = cfg.tolerance if precision == "fp32" else FP16_TOLERANCE
    t0 = time.perf_counter()
    with graph_files.staging(out, stem) as folder:
        staged = folder / stem
        traced = module if precision == "fp32" else half_with_float_io(module)
        export_onnx(spec, traced, dims, staged, input_dtype=torch.float32)
        del traced
        large = graph_files.finish_graph(staged, spec, int(cfg.external_mb * 2**20))
        seconds = time.perf_counter() - t0
        check = {**parity(spec, module, dims, staged, batches=parity_batches(spec, large)), "tolerance": tolerance}
        if not check["max_rel"] <= tolerance:
            raise ExportError(
                f"{label}: the ONNX graph disagrees with torch (max_rel {check['max_rel']:.2e} > {tolerance:g}, "
                f"max_abs {check['max_abs']:.2e}); nothing was kept. Report it with PEDIT_DEBUG=1's traceback."
            )
        path = graph_files.move_into_place(staged, out, data=large)
    entry[key] = {**graph_files.record(path, data=large), "input_hash": onnx_hash, "source_hash": sources,
                  "precision": precision, "opset": OPSET, "parity": check, "seconds": round(seconds, 3)}
    log(f"{label}: ONNX written in {seconds:.1f} s{' (weights in ' + path.name + '.data)' if large else ''}, "
        f"parity max_abs {check['max_abs']:.2e} max_rel {check['max_rel']:.2e}")
    return True


def _trt_stage(cfg: ExportConfig, out: Path, manifest: dict, name: str, spec, log) -> None:
    from pedit.export import trt

    entry = manifest["networks"][name]
    graph = entry.get("onnx_fp16") or entry["onnx"]  # strongly typed: the engine runs in the graph's precision
    settings = trt.BuildSettings()
    trt_version = trt.version()
    engine_hash = _digest(graph["sha256"], graph.get("data", {}).get("sha256"), spec.describe(), settings,
                          trt.device_name(), trt_version)
    if not cfg.force and _fresh(entry.get("trt"), out, engine_hash):
        log(f"{name}: TensorRT engine skipped (inputs unchanged)")
        return
    path = out / f"{name}.plan"
    t0 = time.perf_counter()
    built = trt.build_engine(out / graph["file"], path, spec, settings, timing_cache=out / "timing.cache")
    entry["trt"] = {**graph_files.record(path, data=False), "input_hash": engine_hash, "graph": graph["file"],
                    "precision": built["precision"], "io": built["io"], "device": trt.device_name(),
                    "tensorrt": trt_version, "seconds": round(time.perf_counter() - t0, 1)}
    _write_manifest(out, manifest)
    log(f"{name}: TensorRT engine ({built['precision']}) written in {entry['trt']['seconds']} s")
