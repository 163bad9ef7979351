"""torch → ONNX for one network spec, and the parity check every export must pass.

The exporter is torch's TorchScript-based one (`dynamo=False`, opset 17): on these networks it is
fast (about 1 s for the toon U-Net) and its graphs run unchanged in ONNX Runtime and TensorRT
(STACK.md). The batch axis stays dynamic; everything else is static, as the MCDM's fixed 77 + K
context allows (DESIGN.md, "MCDM").

Parity: the exported graph and the torch module run on fresh random inputs (a seed the export did
not see, at the export batch and at every profile's max) and the largest absolute and relative
errors are returned for the manifest.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

from pedit.errors import PeditError
from pedit.export.specs import Dims, NetworkSpec, random_inputs

OPSET = 17


class ExportError(PeditError):
    """An export that failed, or whose graph disagrees with torch beyond the tolerance."""


def export_onnx(spec: NetworkSpec, module, d: Dims, path: Path) -> None:
    """Write `module` as ONNX to `path` (written beside it first, then renamed: never half a file)."""
    import torch

    args = random_inputs(spec, d, spec.export_batch, seed=0, dtype=next(module.parameters()).dtype)
    dynamic = {t.name: {i: "B" for i, s in enumerate(t.shape) if s == "B"} for t in (*spec.inputs, *spec.outputs)}
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracer warnings about Python control flow on shapes
            torch.onnx.export(
                module, tuple(args.values()), str(tmp), dynamo=False, opset_version=OPSET,
                input_names=[t.name for t in spec.inputs], output_names=[t.name for t in spec.outputs],
                dynamic_axes={k: v for k, v in dynamic.items() if v}, do_constant_folding=True,
            )
        os.replace(tmp, path)
    except Exception as e:
        raise ExportError(f"Exporting {spec.name} to ONNX failed: {type(e).__name__}: {str(e).splitlines()[0][:300]}") from e
    finally:
        tmp.unlink(missing_ok=True)


def ort_session(path: Path, providers: list[str] | None = None):
    """An ONNX Runtime session; the CUDA provider first when onnxruntime-gpu offers it."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    wanted = providers or ["CUDAExecutionProvider", "CPUExecutionProvider"]
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    import torch

    opts.intra_op_num_threads = torch.get_num_threads()  # the same threads torch uses (OMP_NUM_THREADS)
    return ort.InferenceSession(str(path), opts, providers=[p for p in wanted if p in available])


def parity(spec: NetworkSpec, module, d: Dims, path: Path, seed: int = 1234) -> dict:
    """Max abs / rel error of the ONNX graph against torch on fresh random inputs, at each checked batch."""
    import numpy as np
    import torch

    session = ort_session(path, ["CPUExecutionProvider"])
    dtype = next(module.parameters()).dtype
    batches = sorted({spec.export_batch, *(hi for _, _, hi in spec.profiles.values())})
    worst_abs, worst_rel = 0.0, 0.0
    for i, batch in enumerate(batches):
        inputs = random_inputs(spec, d, batch, seed=seed + i, dtype=dtype)
        with torch.no_grad():
            want = module(*inputs.values()).float().numpy()
        got = session.run(None, {k: v.numpy() for k, v in inputs.items()})[0].astype(np.float32)
        if got.shape != want.shape:
            raise ExportError(f"{spec.name}: ONNX output shape {got.shape} != torch {want.shape} at batch {batch}.")
        err = np.abs(got - want)
        worst_abs = max(worst_abs, float(err.max()))
        worst_rel = max(worst_rel, float(err.max() / max(float(np.abs(want).max()), 1e-12)))
    return {"max_abs": worst_abs, "max_rel": worst_rel, "batches": batches, "seed": seed}
