"""`pedit export --triton -o REPO`: a Triton model repository for a model folder, and its checks at load.

    REPO/
      unet/              config.pbtxt, 1/model.onnx (+ 1/model.py on the Python backend) or 1/model.plan
      vae_encoder/  vae_decoder/  image_projector/  text_encoder/      the same, one model per network
      pedit/             config.pbtxt, 1/model.py: the edit (pedit.serve.pedit_model), 1/export/: the export
                         folder (all five graphs, tokenizer, schedule) its torch-free runtime reads
      pedit-manifest.json                 the model folder and its hash, every file's sha256

The networks come from the same specs and the same cached export as `pedit export`
(pedit.export.pipeline), so the graphs are parity-checked against torch. They run as
`onnxruntime_onnx`, as `tensorrt_plan` (--trt), or, on a server without those backends (the
tritonserver nvidia-pytriton bundles has the Python backend only), as Python models running ONNX
Runtime on the same graph (pedit.serve.network_model). Configs: pedit.serve.configs.

At load the `pedit` model checks the repository against its manifest: a file changed or missing
since export, or a model folder that is not the one exported (or has changed since), and it refuses
to load with pedit's message. The repository is written in a temporary folder and renamed into
place, so a failed export leaves nothing half-written.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from pedit.model.paths import DEFAULT_EDIT_MODEL
from pedit.errors import ConfigError, ModelError, OutputError
from pedit.serve import protocol
from pedit.serve.configs import NETWORK_BACKENDS, Batching, network_config, pedit_config

MANIFEST = "pedit-manifest.json"
EXPORT = "export"  # pedit/1/export: the `pedit export` folder the pedit model's runtime reads
FORMAT = 1
NETWORKS = ("unet", "image_projector", "text_encoder", "vae_encoder", "vae_decoder")
SHIM = '"""Written by `pedit export --triton`: the model is {module}."""\nfrom {module} import TritonPythonModel  # noqa: F401\n'
REEXPORT = "export it again with `pedit export --triton -m MODEL -o REPO --overwrite`"


@dataclass(frozen=True)
class RepositoryConfig:
    model: str | None = None  # None → DEFAULT_EDIT_MODEL, what `pedit edit` uses without -m (pedit.model.paths)
    output: str = "triton-repo"
    trt: bool = False
    network_backend: str | None = None  # python | onnxruntime | tensorrt; None: tensorrt with trt, else what the server has
    batching: bool = True  # False: no dynamic batching for the U-Net (each request executed alone): the baseline
    unet_instances: int = 1
    unet_max_rows: int = 80  # the U-Net's max_batch_size: 16 requests' 5-row steps
    unet_preferred: tuple[int, ...] = (20, 40, 80)
    queue_delay_us: int = 2000
    pedit_instances: int = 4
    max_queue: int = 64  # requests waiting for a pedit instance before new ones are rejected
    timeout_s: float = 120.0  # a request still queued after this long is rejected
    threads: int = 1  # ONNX Runtime threads of each Python-backend network instance
    max_pixels: int = 50_000_000
    max_request_bytes: int = protocol.MAX_REQUEST_BYTES
    overwrite: bool = False
    gpus: tuple[int, ...] = ()  # instance groups per GPU (KIND_GPU) when given
    # Networks served as models besides the U-Net (which the pedit model calls and is always there);
    # the pedit model runs the others in its own process for now (load_editor_for).
    networks: tuple[str, ...] = NETWORKS
    allow_pickle: bool = False

    def __post_init__(self):
        from pedit.validate import check_int, check_number

        if self.network_backend is not None and self.network_backend not in NETWORK_BACKENDS:
            raise ConfigError(f"Unknown network backend {self.network_backend!r}; choose from {', '.join(NETWORK_BACKENDS)}.")
        for name in ("unet_instances", "pedit_instances", "threads"):
            check_int(name, getattr(self, name), 1, 64)
        check_int("unet_max_rows", self.unet_max_rows, 5, 4096)
        check_int("max_queue", self.max_queue, 1, 100_000)
        check_int("queue_delay_us", self.queue_delay_us, 0, 10_000_000)
        check_number("timeout_s", self.timeout_s, 0, 3600, lo_open=True)
        if "unet" not in self.networks or any(n not in NETWORKS for n in self.networks):
            raise ConfigError(f"networks {self.networks} must include unet and be among {', '.join(NETWORKS)}.")
        if any(not 1 <= p <= self.unet_max_rows for p in self.unet_preferred):
            raise ConfigError(f"unet_preferred {self.unet_preferred} must lie in 1..{self.unet_max_rows}.")

    def backend(self) -> str:
        if self.network_backend is not None:
            return self.network_backend
        if self.trt:
            return "tensorrt"
        from pedit.serve.server import ServeError, find_triton

        try:
            return "onnxruntime" if find_triton().has_onnxruntime else "python"
        except ServeError:
            return "onnxruntime"  # no local server to ask: NVIDIA's containers have the onnxruntime backend


def model_hash(folder: Path) -> str:
    from pedit.cache import folder_hash

    return folder_hash(folder, tuple(sorted(p.name for p in folder.iterdir())))


def _graphs(cfg: RepositoryConfig, log) -> tuple[Path, dict, object]:
    """The exported graphs of every network (pedit export's cache for this model: skipped when fresh)."""
    import hashlib

    from pedit.cache import cache_root
    from pedit.export.pipeline import ExportConfig, export_model
    from pedit.model.loading import load_model, model_path

    folder = model_path(cfg.model or DEFAULT_EDIT_MODEL).resolve()
    key = hashlib.sha256(str(folder).encode()).hexdigest()[:16]
    out = cache_root("triton-graphs") / key
    model = load_model(folder, allow_pickle=cfg.allow_pickle, device="cpu")
    # All five graphs, whichever are served as models: the pedit model's runtime reads the whole export.
    manifest = export_model(ExportConfig(model=str(folder), output=str(out), trt=cfg.trt, wait=True,
                                         allow_pickle=cfg.allow_pickle), log, model=model)
    return out, manifest, model


def export_repository(cfg: RepositoryConfig, log: Callable[[str], None] = lambda m: None) -> Path:
    """Write the repository (see the module docstring); returns its folder."""
    from pedit import __version__
    from pedit.cache import file_sha256
    from pedit.export.specs import dims_of, network_specs

    repo = Path(cfg.output)
    if repo.exists() and not cfg.overwrite:
        raise OutputError(f"{repo} already exists; pass --overwrite to replace it, or choose another -o.")
    backend = cfg.backend()
    graphs, manifest, model = _graphs(cfg, log)
    specs = network_specs(dims_of(model))
    folder = Path(model.path).resolve()
    repo.parent.mkdir(parents=True, exist_ok=True)
    staging = repo.parent / f".{repo.name}.partial"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        for name in cfg.networks:
            _write_network(staging, name, specs[name], manifest["networks"][name], graphs, backend, cfg)
        _write_pedit_model(staging, cfg, folder)
        _copy_export(graphs, manifest, staging / protocol.MODEL / "1" / EXPORT)
        files = {str(p.relative_to(staging)): file_sha256(p) for p in sorted(staging.rglob("*")) if p.is_file()}
        (staging / MANIFEST).write_text(json.dumps({
            "format": FORMAT, "pedit": __version__, "model": str(folder), "model_hash": model_hash(folder),
            "network_backend": backend, "batching": cfg.batching, "files": files}, indent=2))
        if repo.exists():
            old = repo.parent / f".{repo.name}.old"
            shutil.rmtree(old, ignore_errors=True)
            repo.rename(old)
            staging.rename(repo)
            shutil.rmtree(old, ignore_errors=True)
        else:
            staging.rename(repo)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log(f"Triton repository ({backend} networks, U-Net batching {'on' if cfg.batching else 'off'}) in {repo}")
    return repo


def _copy_export(graphs: Path, manifest: dict, to: Path) -> None:
    """The export folder the pedit model's runtime loads (pedit.export.runtime): manifest, graphs, runtime files."""
    to.mkdir(parents=True)
    names = {"manifest.json"}
    for entry in manifest.get("networks", {}).values():
        for key in ("onnx", "onnx_fp16"):
            if rec := entry.get(key):
                names.add(rec["file"])
                if "data" in rec:
                    names.add(rec["data"]["file"])
    names.update(rec["file"] for rec in manifest.get("runtime", {}).get("files", {}).values())
    for name in sorted(names):
        shutil.copy2(graphs / name, to / name)


def _batching(name: str, cfg: RepositoryConfig) -> Batching:
    kind, gpus = ("KIND_GPU", cfg.gpus) if cfg.gpus else ("KIND_CPU", ())
    timeout = int(cfg.timeout_s * 1e6)
    if name == "unet":
        return Batching(cfg.unet_max_rows, cfg.unet_preferred, cfg.queue_delay_us, cfg.unet_instances,
                        max(cfg.max_queue * 4, 256), timeout, kind, gpus)
    return Batching(4, (1,), cfg.queue_delay_us, 1, cfg.max_queue, timeout, kind, gpus)


def _write_network(repo: Path, name: str, spec, entry: dict, graphs: Path, backend: str, cfg: RepositoryConfig) -> None:
    version = repo / name / "1"
    version.mkdir(parents=True)
    if backend == "tensorrt":
        shutil.copyfile(graphs / entry["trt"]["file"], version / "model.plan")
    else:
        shutil.copyfile(graphs / entry["onnx"]["file"], version / "model.onnx")
    if backend == "python":
        (version / "model.py").write_text(SHIM.format(module="pedit.serve.network_model"))
    batching = _batching(name, cfg)
    text = network_config(spec, backend, batching, {"threads": str(cfg.threads)} if backend == "python" else None)
    if name == "unet" and not cfg.batching:
        text = _without_dynamic_batching(text)
    (repo / name / "config.pbtxt").write_text(text)


def _without_dynamic_batching(text: str) -> str:
    """The config with its dynamic_batching block removed: each request is executed on its own."""
    start = text.index("dynamic_batching {")
    depth, i = 0, start
    while True:
        if text[i] == "{":
            depth += 1
        elif text[i] == "}":
            depth -= 1
            if depth == 0:
                break
        i += 1
    return text[:start] + text[i + 2:]


# What a client needs of pedit.json to resolve directions and build the default settings (no paths).
CLIENT_META = ("resolution", "directions", "mask", "mask_by_task", "mask_by_direction", "sampling", "sampling_by_task",
               "distilled", "bundled")


def _write_pedit_model(repo: Path, cfg: RepositoryConfig, folder: Path) -> None:
    from pedit.model.loading import read_model_folder

    meta = read_model_folder(folder)[1]
    version = repo / protocol.MODEL / "1"
    version.mkdir(parents=True)
    (version / "model.py").write_text(SHIM.format(module="pedit.serve.pedit_model"))
    params = {"unet_model": "unet", "unet_max_rows": str(cfg.unet_max_rows), "unet_timeout_s": str(cfg.timeout_s),
              "max_pixels": str(cfg.max_pixels),
              "max_request_bytes": str(cfg.max_request_bytes),
              "model_meta": json.dumps({k: meta[k] for k in CLIENT_META if k in meta}, sort_keys=True)}
    batching = Batching(1, (1,), 0, cfg.pedit_instances, cfg.max_queue, int(cfg.timeout_s * 1e6))
    (repo / protocol.MODEL / "config.pbtxt").write_text(pedit_config(batching, params))


@dataclass
class Manifest:
    folder: Path
    data: dict = field(default_factory=dict)

    @property
    def model(self) -> Path:
        return Path(self.data["model"])


def read_manifest(repo: str | Path) -> Manifest:
    repo = Path(repo)
    path = repo / MANIFEST
    if not repo.is_dir():
        raise ModelError(f"Triton repository {repo} does not exist or is not a folder; write one with "
                         "`pedit export --triton -o REPO`.")
    try:
        data = json.loads(path.read_text())
        if data.get("format") != FORMAT or not isinstance(data.get("files"), dict):
            raise ValueError(f"format {data.get('format')!r}")
    except FileNotFoundError:
        raise ModelError(f"{repo} has no {MANIFEST}: it was not written by `pedit export --triton`; {REEXPORT}.") from None
    except (ValueError, UnicodeDecodeError, AttributeError) as e:
        raise ModelError(f"{path} is not a pedit repository manifest ({e}); {REEXPORT}.") from None
    return Manifest(repo, data)


def check_repository(repo: str | Path, model: str | Path | None = None) -> Manifest:
    """The repository's manifest, after checking every file against it and the model folder against
    its hash (and, when `model` is given, that it was exported from that folder). ModelError otherwise."""
    from pedit.cache import file_sha256
    from pedit.model.paths import model_path

    manifest = read_manifest(repo)
    folder = Path(repo)
    files = manifest.data["files"]
    for rel, digest in sorted(files.items()):
        path = folder / rel
        if not path.is_file():
            raise ModelError(f"Triton repository {folder} is missing {rel} (written at export); {REEXPORT}.")
        if file_sha256(path) != digest:
            raise ModelError(f"Triton repository {folder}: {rel} changed after export; {REEXPORT}.")
    extra = sorted(str(p.relative_to(folder)) for p in folder.rglob("*")
                   if p.is_file() and p.name != MANIFEST and "__pycache__" not in p.parts
                   and str(p.relative_to(folder)) not in files)
    if extra:
        raise ModelError(f"Triton repository {folder} holds files the export did not write ({', '.join(extra[:3])}); "
                         f"{REEXPORT}.")
    exported = manifest.model
    if model is not None and model_path(model).resolve() != exported:
        raise ModelError(f"Triton repository {folder} was exported from another model ({exported}), not "
                         f"{model_path(model).resolve()}; {REEXPORT}.")
    # A repository carries its export (pedit/1/export): the model folder need not be on a serving machine,
    # but where it is, it must be the one exported.
    if exported.is_dir() and model_hash(exported) != manifest.data.get("model_hash"):
        raise ModelError(f"The model folder {exported} has changed since {folder} was exported from it; {REEXPORT}.")
    return manifest


def load_editor_for(manifest: Manifest):
    """The editor the pedit model runs: the torch-free runtime editor (pedit.export.runtime_editor, the
    path of `pedit edit --backend onnx`) over the repository's own export folder. The pedit model then
    replaces its U-Net with the server's `unet` model (pedit.serve.pedit_model)."""
    from pedit.export.runtime import Runtime
    from pedit.export.runtime_editor import RuntimeEditor

    return RuntimeEditor(Runtime.load(manifest.folder / protocol.MODEL / "1" / EXPORT))


def serving_repository(cfg: RepositoryConfig, log: Callable[[str], None] = lambda m: None) -> Path:
    """A repository of cfg's model in pedit's cache (`pedit serve -m`): exported on first use, and
    again when the model folder or the export settings change."""
    import dataclasses
    import hashlib

    from pedit.cache import cache_root
    from pedit.model.paths import model_path

    folder = model_path(cfg.model or DEFAULT_EDIT_MODEL).resolve()
    settings = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in ("output", "overwrite", "model")}
    key = hashlib.sha256(json.dumps([str(folder), settings, cfg.backend()], sort_keys=True).encode()).hexdigest()[:16]
    repo = cache_root("triton") / key
    try:
        check_repository(repo, folder)
        log(f"Using the exported repository {repo}")
        return repo
    except ModelError:
        pass
    return export_repository(dataclasses.replace(cfg, model=str(folder), output=str(repo), overwrite=True), log)
