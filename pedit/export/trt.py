"""The thin TensorRT layer: build an engine from an exported ONNX graph, and run it as a network.

Optional: `pip install pedit[trt]` on the target NVIDIA machine (TensorRT's PyPI wheels fetch their
libraries from NVIDIA's index, and an engine is built for the GPU it runs on). Everything that can
be checked without TensorRT lives elsewhere and is tested on the CPU: the specs and their profiles
(pedit.export.specs), the ONNX graphs and their parity (pedit.export.onnx_stage), and the buffer
binding (`plan_io` in pedit.export.bindings, which `TrtRunner` binds exactly as the ONNX Runtime
runner does).

One code path for TensorRT 10.x and 11.x: networks are strongly typed (the STRONGLY_TYPED creation
flag where the version has it; on 11 every network is), so the engine's precision is the ONNX
graph's: pipeline.py builds from the fp16 graph (float32 inputs and outputs, fp16 inside). No
`BuilderFlag.FP16` (removed in 11; weak typing deprecated since 10.12), no
`platform_has_fast_fp16` (gone in 11). Every binding's dtype is read from the engine
(`get_tensor_dtype`), never assumed. Any TensorRT failure (import, parse, build, deserialize, a
plan built for another GPU or TensorRT version) is one TensorRTError line.

Engines: one optimisation profile per spec profile (for the U-Net: the 5-row sampler batch and the
mask batch), a timing cache shared by every build in the engines folder. A runner enqueues on a
CUDA stream of its own, ordered after the caller's stream by events (never the legacy default
stream, on which TensorRT synchronises every call).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pedit.errors import PeditError
from pedit.export.bindings import plan_io
from pedit.export.specs import BATCH, NetworkSpec

MISSING = ("TensorRT is not installed. Engines are built on the NVIDIA machine that runs them: "
           "there, `pip install pedit[trt]` (its libraries come from NVIDIA's index), then run this again.")
REBUILD = "rebuild it on this machine with `pedit export --trt --force`"
# TensorRT DataType member name → torch dtype name (the names are the same in 10.x and 11.x).
DTYPES = {"FLOAT": "float32", "HALF": "float16", "BF16": "bfloat16", "INT32": "int32", "INT64": "int64",
          "INT8": "int8", "UINT8": "uint8", "BOOL": "bool"}


class TensorRTError(PeditError):
    """TensorRT missing or broken, an ONNX graph it cannot parse, a failed build, an engine it cannot load."""


@dataclass(frozen=True)
class BuildSettings:
    optimization_level: int = 3  # TensorRT's default; 5 searches longer for faster kernels

    def __post_init__(self):
        if not 0 <= self.optimization_level <= 5:
            raise ValueError(f"optimization_level must be 0-5, got {self.optimization_level}")


def _one_line(e: BaseException) -> str:
    return f"{type(e).__name__}: {' '.join(str(e).split())[:300]}"


def _tensorrt():
    try:
        import tensorrt
    except ImportError:
        raise TensorRTError(MISSING) from None
    except Exception as e:  # a broken install: libnvinfer missing or of another CUDA (OSError, ...)
        raise TensorRTError(f"TensorRT is installed but does not load ({_one_line(e)}); reinstall pedit[trt].") from e
    if not hasattr(tensorrt, "Builder"):  # type stubs alone (tensorrt-stubs) make an empty namespace package
        raise TensorRTError(MISSING)
    return tensorrt


def require():
    """The tensorrt module, or a TensorRTError that says what is missing (the package, or a GPU)."""
    import torch

    module = _tensorrt()
    if not torch.cuda.is_available():
        raise TensorRTError("TensorRT builds and runs engines on an NVIDIA GPU; this torch sees none.")
    return module


def available() -> bool:
    try:
        require()
        return True
    except TensorRTError:
        return False


def version() -> str | None:
    try:
        return str(_tensorrt().__version__)
    except TensorRTError:
        return None


def device_name() -> str:
    import torch

    return torch.cuda.get_device_name() if torch.cuda.is_available() else "no CUDA device"


def profile_shapes(spec: NetworkSpec) -> list[dict]:
    """For each profile: input name → (min, opt, max) shapes; inputs without a batch axis are static."""
    return [
        {t.name: (t.concrete(lo), t.concrete(opt), t.concrete(hi)) for t in spec.inputs if BATCH in t.shape}
        for lo, opt, hi in spec.profiles.values()
    ]


def network_flags(trt) -> int:
    """create_network's flags: strongly typed (10.x needs the flag; 11.x accepts it, or has only strong typing)."""
    flag = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    if flag is not None:
        return 1 << int(flag)
    if int(str(trt.__version__).split(".")[0]) >= 11:
        return 0  # every network is strongly typed
    raise TensorRTError(f"TensorRT {trt.__version__} has no strongly typed networks; pedit needs TensorRT 10 or 11.")


def graph_precision(onnx_path: Path) -> str:
    """"fp16" or "fp32": the float type holding most of the graph's weights, which a strongly typed
    engine computes in. Reads the graph only, not its external data."""
    import onnx

    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    count = {onnx.TensorProto.FLOAT: 0, onnx.TensorProto.FLOAT16: 0, onnx.TensorProto.BFLOAT16: 0}
    for init in graph.initializer:
        if init.data_type in count:
            n = 1
            for d in init.dims:
                n *= int(d)
            count[init.data_type] += n
    best = max(count, key=lambda k: count[k])
    return {onnx.TensorProto.FLOAT: "fp32", onnx.TensorProto.FLOAT16: "fp16", onnx.TensorProto.BFLOAT16: "bf16"}[best]


def engine_io(engine) -> dict[str, tuple[str, str]]:
    """Tensor name → ("input" | "output", torch dtype name), read from a deserialised engine."""
    import tensorrt as trt

    out = {}
    for i in range(engine.num_io_tensors):
        name = engine.get_tensor_name(i)
        dtype = engine.get_tensor_dtype(name)
        if dtype.name not in DTYPES:
            raise TensorRTError(f"Engine tensor {name} has type {dtype.name}, which pedit cannot bind.")
        mode = "input" if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT else "output"
        out[name] = (mode, DTYPES[dtype.name])
    return out


def build_engine(onnx_path: Path, engine_path: Path, spec: NetworkSpec, settings: BuildSettings,
                 timing_cache: Path | None = None) -> dict:
    """Parse `onnx_path` (its .onnx.data beside it), build a strongly typed engine with `spec`'s
    profiles, write it atomically. Returns {"precision", "io": {tensor: dtype}} of the built engine."""
    require()
    try:
        return _build(Path(onnx_path), Path(engine_path), spec, settings, timing_cache)
    except TensorRTError:
        raise
    except Exception as e:  # TensorRT's own exceptions (RuntimeError, TypeError from its bindings, ...)
        raise TensorRTError(f"TensorRT failed to build an engine for {spec.name}: {_one_line(e)}") from e


def _build(onnx_path: Path, engine_path: Path, spec: NetworkSpec, settings: BuildSettings,
           timing_cache: Path | None) -> dict:
    import tensorrt as trt

    from pedit.files import write_atomic

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(network_flags(trt))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise TensorRTError(f"TensorRT could not parse {onnx_path}: {' '.join(errors.split())[:500]}")
    config = builder.create_builder_config()
    config.builder_optimization_level = settings.optimization_level
    cache_bytes = timing_cache.read_bytes() if timing_cache is not None and timing_cache.exists() else b""
    cache = config.create_timing_cache(cache_bytes)
    config.set_timing_cache(cache, ignore_mismatch=True)
    for shapes in profile_shapes(spec):
        profile = builder.create_optimization_profile()
        for name, (lo, opt, hi) in shapes.items():
            profile.set_shape(name, lo, opt, hi)
        config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise TensorRTError(f"TensorRT failed to build an engine for {spec.name} (see its log above).")
    plan = bytes(serialized)
    engine = trt.Runtime(logger).deserialize_cuda_engine(plan)
    if engine is None:
        raise TensorRTError(f"TensorRT built an engine for {spec.name} that it cannot load (see its log above).")
    io = engine_io(engine)
    write_atomic(engine_path, lambda f: f.write(plan), overwrite=True)
    if timing_cache is not None:
        cache_out = bytes(config.get_timing_cache().serialize())
        write_atomic(timing_cache, lambda f: f.write(cache_out), overwrite=True)
    return {"precision": graph_precision(onnx_path), "io": {k: dtype for k, (_, dtype) in io.items()}}


class TrtRunner:
    """One engine as a callable: runner(**inputs) → {output name: tensor in the engine's dtype}.

    `device` is CUDA; "cpu" only serves the tests' stand-in for the tensorrt module (which runs the
    graph in ONNX Runtime on host memory)."""

    def __init__(self, engine_path: Path, spec: NetworkSpec, device=None):
        import torch

        trt = require() if device is None or torch.device(device).type == "cuda" else _tensorrt()
        self.spec, self.device = spec, torch.device(device or "cuda")
        try:
            plan = Path(engine_path).read_bytes()
            self.runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
            self.engine = self.runtime.deserialize_cuda_engine(plan)
        except OSError as e:
            raise TensorRTError(f"Cannot read the engine {engine_path}: {e.strerror or e}; {REBUILD}.") from e
        except Exception as e:
            raise TensorRTError(f"TensorRT cannot load {engine_path} ({_one_line(e)}); {REBUILD}.") from e
        if self.engine is None:
            raise TensorRTError(f"{engine_path} is not an engine for this GPU and TensorRT version (built for "
                                f"another one, or damaged); {REBUILD}.")
        io = engine_io(self.engine)
        want = {t.name for t in (*spec.inputs, *spec.outputs)}
        if set(io) != want:
            raise TensorRTError(f"{engine_path} has tensors {sorted(io)}, not {spec.name}'s {sorted(want)}; {REBUILD}.")
        self.dtypes = {name: getattr(torch, dtype) for name, (_, dtype) in io.items()}
        self.context = self.engine.create_execution_context()
        if self.context is None:
            raise TensorRTError(f"TensorRT could not create an execution context for {engine_path} (GPU memory?).")
        # A stream of our own: TensorRT synchronises every call enqueued on the legacy default stream.
        self.stream = torch.cuda.Stream(self.device) if self.device.type == "cuda" else None
        self.profile = -1

    def __call__(self, **inputs):
        import torch

        plan = plan_io(self.spec, inputs, torch.float32, self.device, dtypes=self.dtypes)
        handle = 0
        if self.stream is not None:
            caller = torch.cuda.current_stream(self.device)
            self.stream.wait_stream(caller)  # inputs were written on the caller's stream
            handle = self.stream.cuda_stream
        if plan.profile != self.profile:
            self.context.set_optimization_profile_async(plan.profile, handle)
            self.profile = plan.profile
        for name, buf in plan.inputs.items():
            self.context.set_input_shape(name, tuple(buf.shape))
        for name, buf in {**plan.inputs, **plan.outputs}.items():
            self.context.set_tensor_address(name, buf.data_ptr())
        if not self.context.execute_async_v3(handle):
            raise TensorRTError(f"TensorRT failed to run {self.spec.name}.")
        if self.stream is not None:
            caller.wait_stream(self.stream)  # the caller reads the outputs after the engine wrote them
            for buf in (*plan.inputs.values(), *plan.outputs.values()):
                buf.record_stream(self.stream)  # not reused by the allocator before the engine is done
        return plan.outputs
