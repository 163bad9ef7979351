"""ONNX Runtime sessions of an exported folder's graphs, for the torch-free runtime (pedit.export.runtime).

    onnx   the CPU provider (CUDA first when onnxruntime-gpu is installed); on the CPU, the graph as
           ONNX Runtime optimised it is kept in the cache ($PEDIT_CACHE/ort/) and loaded from there
    trt    ONNX Runtime's TensorRT provider over the same graphs, fp16, its engines cached in the folder

Threads: OMP_NUM_THREADS when set (as torch reads it); no spinning waits under OMP_WAIT_POLICY=PASSIVE.
"""

from __future__ import annotations

import os
from pathlib import Path

from pedit.errors import ConfigError, MissingPackageError, ModelError

RUNTIME_BACKENDS = ("onnx", "trt")


def check_backend(backend: str) -> None:
    """ConfigError for a backend the runtime does not run; MissingPackageError when this onnxruntime
    cannot run it (trt needs its TensorRT provider). Checked before anything is exported or loaded."""
    if backend not in RUNTIME_BACKENDS:
        raise ConfigError(f"The runtime runs --backend {' or '.join(RUNTIME_BACKENDS)}, not {backend!r}.")
    if backend == "trt":
        import onnxruntime as ort

        available = ort.get_available_providers()
        if "TensorrtExecutionProvider" not in available:
            raise MissingPackageError(
                "--backend trt runs the exported graphs through ONNX Runtime's TensorRT provider, which this "
                f"onnxruntime does not have (it offers {', '.join(available)}); install onnxruntime-gpu with "
                "TensorRT on an NVIDIA machine, or use --backend onnx.")


def _providers(backend: str, folder: Path) -> list:
    import onnxruntime as ort

    available = ort.get_available_providers()
    if backend == "trt":
        cache = folder / "trt-cache"
        return [("TensorrtExecutionProvider", {"trt_engine_cache_enable": True, "trt_engine_cache_path": str(cache),
                                               "trt_fp16_enable": True}),
                "CUDAExecutionProvider", "CPUExecutionProvider"]
    return [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]


def _options():
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    threads = os.environ.get("OMP_NUM_THREADS", "")
    if threads.isdigit() and int(threads) > 0:
        opts.intra_op_num_threads = int(threads)
    if os.environ.get("OMP_WAIT_POLICY", "").upper() == "PASSIVE":
        # Threads that spin while they wait slow a busy machine down (docs/deployment.md, "CPU cold start").
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return opts


def session(path: Path, backend: str = "onnx", sha256: str | None = None):
    """An ONNX Runtime session of one exported graph (`sha256`: its hash, from the manifest); threads as
    OMP_NUM_THREADS says (as torch would). On the CPU the graph as ONNX Runtime optimised it for this
    machine is kept in the cache (`optimized_path`) and loaded from there after the first time."""
    import onnxruntime as ort

    providers = _providers(backend, path.parent)
    cached = optimized_path(sha256, providers) if sha256 else None
    if cached is not None and cached.is_file():
        try:
            return ort.InferenceSession(str(cached), _options(), providers=providers)
        except Exception:
            pass  # damaged or from another ONNX Runtime build: made again from the graph below
    opts = _options()
    tmp = None
    if cached is not None:
        from pedit.files import temp_path

        cached.parent.mkdir(parents=True, exist_ok=True)
        tmp = temp_path(cached)
        opts.optimized_model_filepath = str(tmp)
        opts.add_session_config_entry("session.save_model_format", "ORT")
    try:
        made = ort.InferenceSession(str(path), opts, providers=providers)
    except Exception as e:  # a graph ONNX Runtime cannot load: its message, one line
        why = " ".join(str(e).split())[:300]
        raise ModelError(f"ONNX Runtime cannot load {path}: {why}. Export it again (`pedit export --force`).") from None
    finally:
        if tmp is not None and tmp.is_file():
            try:
                os.replace(tmp, cached)  # whole or absent: another process may be loading it
            except OSError:
                tmp.unlink(missing_ok=True)
    return made


def optimized_path(sha256: str, providers: list) -> Path | None:
    """Where the CPU session of the graph with this hash keeps its optimised form, or None (not on the CPU).

    ONNX Runtime's optimised graph (ORT format) loads in about a quarter of the time of the ONNX graph
    and computes the same bytes (a test), but may hold kernels chosen for this CPU (NCHWc layouts):
    the key holds the ONNX Runtime version and the CPU's model and flags, beside the graph's hash."""
    import hashlib
    import platform

    import onnxruntime as ort

    from pedit.cache import cache_root

    if providers != ["CPUExecutionProvider"]:
        return None
    cpu = platform.machine() + platform.processor()
    try:
        info = Path("/proc/cpuinfo").read_text().split("\n\n")[0]
        cpu += "".join(line for line in info.splitlines() if line.startswith(("model name", "flags")))
    except OSError:
        pass
    machine = hashlib.sha256(f"{ort.__version__}|{cpu}".encode()).hexdigest()[:16]
    return cache_root("ort") / f"{sha256[:32]}-{machine}.ort"
