"""The thin TensorRT layer: build an engine from an exported ONNX graph, and run it as a network.

Optional: `pip install pedit[trt]` on the target NVIDIA machine (TensorRT's PyPI wheels fetch their
libraries from NVIDIA's index, and an engine is built for the GPU it runs on). Everything that can
be checked without TensorRT lives elsewhere and is tested on the CPU: the specs and their profiles
(pedit.export.specs), the ONNX graphs and their parity (pedit.export.onnx_stage), and the buffer
binding (`plan_io` in pedit.export.bindings, which `TrtRunner` binds exactly as the ONNX Runtime
runner does).

Engines: fp16, one optimisation profile per spec profile (for the U-Net: the 5-row sampler batch
and the mask batch), a timing cache shared by every build in the engines folder.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pedit.errors import PeditError
from pedit.export.bindings import plan_io
from pedit.export.specs import BATCH, NetworkSpec

MISSING = ("TensorRT is not installed. Engines are built on the NVIDIA machine that runs them: "
           "there, `pip install pedit[trt]` (its libraries come from NVIDIA's index), then run this again.")


class TensorRTError(PeditError):
    """TensorRT missing, an ONNX graph it cannot parse, or a build that failed."""


@dataclass(frozen=True)
class BuildSettings:
    fp16: bool = True
    optimization_level: int = 3  # TensorRT's default; 5 searches longer for faster kernels

    def __post_init__(self):
        if not 0 <= self.optimization_level <= 5:
            raise ValueError(f"optimization_level must be 0-5, got {self.optimization_level}")


def _tensorrt():
    try:
        import tensorrt
    except ImportError:
        raise TensorRTError(MISSING) from None
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


def device_name() -> str:
    import torch

    return torch.cuda.get_device_name() if torch.cuda.is_available() else "no CUDA device"


def profile_shapes(spec: NetworkSpec) -> list[dict]:
    """For each profile: input name → (min, opt, max) shapes; inputs without a batch axis are static."""
    return [
        {t.name: (t.concrete(lo), t.concrete(opt), t.concrete(hi)) for t in spec.inputs if BATCH in t.shape}
        for lo, opt, hi in spec.profiles.values()
    ]


def build_engine(onnx_path: Path, engine_path: Path, spec: NetworkSpec, settings: BuildSettings,
                 timing_cache: Path | None = None) -> None:
    """Parse `onnx_path`, build a serialised engine with `spec`'s profiles, write it atomically."""
    trt = require()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise TensorRTError(f"TensorRT could not parse {onnx_path}: {errors[:500]}")
    config = builder.create_builder_config()
    if settings.fp16:
        config.set_flag(trt.BuilderFlag.FP16)
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
    tmp = engine_path.with_name(engine_path.name + ".tmp")
    tmp.write_bytes(bytes(serialized))
    tmp.replace(engine_path)
    if timing_cache is not None:
        timing_cache.write_bytes(bytes(config.get_timing_cache().serialize()))


class TrtRunner:
    """One engine as a callable: runner(**inputs) → {output name: tensor}, on the current CUDA stream."""

    def __init__(self, engine_path: Path, spec: NetworkSpec):
        trt = require()
        self.spec = spec
        self.runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engine = self.runtime.deserialize_cuda_engine(Path(engine_path).read_bytes())
        if self.engine is None:
            raise TensorRTError(f"{engine_path} is not an engine for this GPU / TensorRT version; rebuild it "
                                "with `pedit export --trt --force`.")
        self.context = self.engine.create_execution_context()
        self.profile = -1

    def __call__(self, **inputs):
        import torch

        plan = plan_io(self.spec, inputs, torch.float32, torch.device("cuda"))
        stream = torch.cuda.current_stream().cuda_stream
        if plan.profile != self.profile:
            self.context.set_optimization_profile_async(plan.profile, stream)
            self.profile = plan.profile
        for name, buf in plan.inputs.items():
            self.context.set_input_shape(name, tuple(buf.shape))
        for name, buf in {**plan.inputs, **plan.outputs}.items():
            self.context.set_tensor_address(name, buf.data_ptr())
        if not self.context.execute_async_v3(stream):
            raise TensorRTError(f"TensorRT failed to run {self.spec.name}.")
        return plan.outputs
