"""Buffer binding shared by the engine runners: which profile, which shapes, which buffers.

An engine runner gets torch tensors and must (1) check them against the network's spec, (2) pick
the optimisation profile whose batch range holds the call, (3) hand the runtime contiguous input
buffers of the engine's dtype and preallocated output buffers of the right shape, and (4) return
the outputs. Only the last step differs between runtimes, so `plan_io` does the rest once; the
TensorRT runner (pedit.export.trt) and `OrtBoundRunner` here bind the same plan. The ONNX Runtime
one is what the tests exercise on machines without TensorRT.
"""

from __future__ import annotations

from dataclasses import dataclass

from pedit.errors import PeditError
from pedit.export.specs import BATCH, NetworkSpec


class BindingError(PeditError):
    """Inputs that do not fit a network's spec or any of its profiles."""


@dataclass
class IOPlan:
    batch: int
    profile: int  # index into spec.profiles (insertion order), the TensorRT optimisation profile
    inputs: dict  # name → contiguous tensor in the engine's dtype
    outputs: dict  # name → preallocated empty tensor


def choose_profile(spec: NetworkSpec, batch: int) -> int:
    """Index of the profile whose [min, max] holds `batch`; of several, the one whose opt is nearest."""
    fits = [(abs(opt - batch), i) for i, (lo, opt, hi) in enumerate(spec.profiles.values()) if lo <= batch <= hi]
    if not fits:
        ranges = ", ".join(f"{k} {lo}-{hi}" for k, (lo, _, hi) in spec.profiles.items())
        raise BindingError(f"{spec.name}: batch {batch} fits no profile ({ranges}). Re-export with larger profiles "
                           "(`pedit export --mask-noises N`: 5 x N rows), or split the editing mask's call (--mask-batch).")
    return min(fits)[1]


def plan_io(spec: NetworkSpec, inputs: dict, float_dtype, device=None, dtypes: dict | None = None) -> IOPlan:
    """Check `inputs` (name → tensor) against `spec` and prepare the buffers of one call.

    Buffers are `float_dtype` (float tensors) or int64, unless `dtypes` (tensor name → torch dtype,
    what a TensorRT engine reports for each binding) says otherwise."""
    import torch

    names = [t.name for t in spec.inputs]
    if sorted(inputs) != sorted(names):
        raise BindingError(f"{spec.name}: expected inputs {names}, got {sorted(inputs)}.")
    batch = None
    feeds = {}
    for t in spec.inputs:
        x = inputs[t.name]
        if x.dim() != len(t.shape):
            raise BindingError(f"{spec.name}: input {t.name} has shape {tuple(x.shape)}, expected {t.shape}.")
        for got, want in zip(x.shape, t.shape):
            if want == BATCH:
                if batch not in (None, got):
                    raise BindingError(f"{spec.name}: inputs disagree on the batch size ({batch} vs {got}).")
                batch = got
            elif got != want:
                raise BindingError(f"{spec.name}: input {t.name} has shape {tuple(x.shape)}, expected {t.shape}.")
        dtype = (dtypes or {}).get(t.name) or (torch.int64 if t.dtype == "int64" else float_dtype)
        feeds[t.name] = x.to(device=device or x.device, dtype=dtype).contiguous()
    batch = batch or 1
    profile = choose_profile(spec, batch) if spec.profiles else 0
    device = device or next(iter(feeds.values())).device
    outputs = {t.name: torch.empty(t.concrete(batch), dtype=(dtypes or {}).get(t.name) or float_dtype, device=device)
               for t in spec.outputs}
    return IOPlan(batch, profile, feeds, outputs)


class OrtBoundRunner:
    """Runs an ONNX Runtime session through IO binding on `plan_io`'s buffers (no copies in or out)."""

    def __init__(self, session, spec: NetworkSpec, float_dtype=None):
        import torch

        self.session, self.spec = session, spec
        self.float_dtype = float_dtype or torch.float32
        self.device = torch.device("cuda" if "CUDAExecutionProvider" in session.get_providers() else "cpu")

    def __call__(self, **inputs):
        import numpy as np

        plan = plan_io(self.spec, inputs, self.float_dtype, self.device)
        binding = self.session.io_binding()
        kind, index = self.device.type, self.device.index or 0
        for name, buf in {**plan.inputs, **plan.outputs}.items():
            element = np.dtype(str(buf.dtype).removeprefix("torch."))
            bind = binding.bind_input if name in plan.inputs else binding.bind_output
            bind(name, kind, index, element, list(buf.shape), buf.data_ptr())
        self.session.run_with_iobinding(binding)
        return plan.outputs
