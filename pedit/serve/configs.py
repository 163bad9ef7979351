"""The `config.pbtxt` of every model in a pedit Triton repository, written from the export specs.

Each network (pedit.export.specs) becomes one model whose inputs and outputs are the spec's, less
the batch axis (Triton's `max_batch_size` carries it). The U-Net's timestep is a per-row input:
dims [1] per row, so a call of B rows sends t of shape (B, 1) and rows of different requests at
different steps share one execution. For the onnxruntime and TensorRT backends it is reshaped to
(B,), the graph's per-row timestep; the Python backend reshapes it itself.

Every network gets dynamic batching (preferred sizes, a queue delay), an instance group, warm-up
(zero inputs at its preferred batch, run before the model reports ready) and a queue policy: at
most `max_queue` waiting requests and a timeout, both rejected with an error instead of waiting
without bound. The `pedit` model (the edit itself, a Python model) gets the same queue policy.
"""

from __future__ import annotations

from dataclasses import dataclass

from pedit.errors import ConfigError

TRITON_TYPES = {"float32": "TYPE_FP32", "int64": "TYPE_INT64"}
NETWORK_BACKENDS = ("python", "onnxruntime", "tensorrt")


@dataclass(frozen=True)
class Batching:
    """How one network is batched and queued."""

    max_batch_size: int
    preferred: tuple[int, ...]
    queue_delay_us: int = 2000
    instances: int = 1
    max_queue: int = 256
    timeout_us: int = 30_000_000
    kind: str = "KIND_CPU"  # KIND_GPU: one group per GPU (count instances each)
    gpus: tuple[int, ...] = ()

    def __post_init__(self):
        if self.max_batch_size < 1 or not self.preferred or any(not 1 <= p <= self.max_batch_size for p in self.preferred):
            raise ConfigError(f"preferred batch sizes {self.preferred} must lie in 1..{self.max_batch_size}")
        if self.instances < 1 or self.max_queue < 1 or self.timeout_us < 1 or self.queue_delay_us < 0:
            raise ConfigError("instances, max_queue and the timeout must be positive, the queue delay not negative")
        if self.kind not in ("KIND_CPU", "KIND_GPU"):
            raise ConfigError(f"instance kind {self.kind!r} is not KIND_CPU or KIND_GPU")


def _dims(shape) -> str:
    return ", ".join(str(d) for d in shape)


def _queue_policy(b: Batching) -> str:
    return (f"  default_queue_policy {{\n    timeout_action: REJECT\n    default_timeout_microseconds: {b.timeout_us}\n"
            f"    allow_timeout_override: true\n    max_queue_size: {b.max_queue}\n  }}\n")


def _instance_group(b: Batching) -> str:
    gpus = f"\n    gpus: [ {_dims(b.gpus)} ]" if b.kind == "KIND_GPU" and b.gpus else ""
    return f"instance_group [\n  {{\n    kind: {b.kind}\n    count: {b.instances}{gpus}\n  }}\n]\n"


def network_config(spec, backend: str, b: Batching, parameters: dict[str, str] | None = None) -> str:
    """config.pbtxt of one exported network (a pedit.export.specs.NetworkSpec)."""
    if backend not in NETWORK_BACKENDS:
        raise ConfigError(f"Unknown network backend {backend!r}; choose from {', '.join(NETWORK_BACKENDS)}.")
    head = {"python": 'backend: "python"', "onnxruntime": 'platform: "onnxruntime_onnx"',
            "tensorrt": 'platform: "tensorrt_plan"'}[backend]
    lines = [f'name: "{spec.name}"', head, f"max_batch_size: {b.max_batch_size}"]

    def tensor(t, is_input: bool) -> str:
        per_row = t.shape[1:] if t.shape and t.shape[0] == "B" else ()
        if t.name == "t" and is_input:  # the per-row timestep: (B, 1) on the wire
            reshape = "" if backend == "python" else "\n    reshape: { shape: [ ] }"
            return f'  {{\n    name: "t"\n    data_type: {TRITON_TYPES[t.dtype]}\n    dims: [ 1 ]{reshape}\n  }}'
        return f'  {{\n    name: "{t.name}"\n    data_type: {TRITON_TYPES[t.dtype]}\n    dims: [ {_dims(per_row)} ]\n  }}'

    lines.append("input [\n" + ",\n".join(tensor(t, True) for t in spec.inputs) + "\n]")
    lines.append("output [\n" + ",\n".join(tensor(t, False) for t in spec.outputs) + "\n]")
    text = "\n".join(lines) + "\n"
    text += _instance_group(b)
    text += (f"dynamic_batching {{\n  preferred_batch_size: [ {_dims(b.preferred)} ]\n"
             f"  max_queue_delay_microseconds: {b.queue_delay_us}\n" + _queue_policy(b) + "}\n")
    text += _warmup(spec, b)
    for key, value in (parameters or {}).items():
        text += _parameter(key, value)
    return text


def _warmup(spec, b: Batching) -> str:
    """Zero inputs at the largest preferred batch: every kernel the U-Net's busiest call takes is
    loaded (and, on a GPU, tuned) before the model reports ready."""
    batch = max(b.preferred)
    inputs = []
    for t in spec.inputs:
        dims = [1] if t.name == "t" else list(t.shape[1:])
        inputs.append(f'    inputs {{\n      key: "{t.name}"\n      value {{\n        data_type: {TRITON_TYPES[t.dtype]}\n'
                      f"        dims: [ {_dims(dims)} ]\n        zero_data: true\n      }}\n    }}")
    return (f'model_warmup [\n  {{\n    name: "zeros_{batch}"\n    batch_size: {batch}\n' + "\n".join(inputs)
            + "\n  }\n]\n")


def _parameter(key: str, value: str) -> str:
    escaped = value.replace("\\", "\\\\").replace('"', '\\"')
    return f'parameters {{\n  key: "{key}"\n  value: {{ string_value: "{escaped}" }}\n}}\n'


def pedit_config(b: Batching, parameters: dict[str, str]) -> str:
    """config.pbtxt of the `pedit` model: photo bytes and directions in, edited photos out (pedit.serve.protocol)."""
    from pedit.serve import protocol

    def tensor(name, dtype, optional=False):
        opt = "\n    optional: true" if optional else ""
        return f'  {{\n    name: "{name}"\n    data_type: {dtype}\n    dims: [ -1 ]{opt}\n  }}'

    inputs = ",\n".join(tensor(n, d, n in protocol.OPTIONAL_INPUTS) for n, d in protocol.INPUTS.items())
    outputs = ",\n".join(tensor(n, d) for n, d in protocol.OUTPUTS.items())
    text = (f'name: "{protocol.MODEL}"\nbackend: "python"\nmax_batch_size: {b.max_batch_size}\n'
            f"input [\n{inputs}\n]\noutput [\n{outputs}\n]\n")
    text += _instance_group(b)
    text += (f"dynamic_batching {{\n  max_queue_delay_microseconds: {b.queue_delay_us}\n" + _queue_policy(b) + "}\n")
    for key, value in parameters.items():
        text += _parameter(key, value)
    return text
