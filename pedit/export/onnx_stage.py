"""torch → ONNX for one network spec, and the parity check every export must pass.

The exporter is torch's TorchScript-based one (`dynamo=False`, opset 17): on these networks it is
fast (about 1 s for the toon U-Net) and its graphs run unchanged in ONNX Runtime and TensorRT
(tried on this project's machines: about 1 s for the toon U-Net, ONNX Runtime within 2e-6 of torch).
The batch axis stays dynamic; everything else is static, as the MCDM's fixed 77 + K context allows
(docs/design-notes.md, "Conditions and the model").

Parity: the exported graph and the torch module run on fresh random inputs (a seed the export did
not see, at the export batch and at every profile's max) and the largest absolute and relative
errors are returned for the manifest. Graphs big enough for external data (pedit.export.graph_files)
are checked at the smallest profile batch only: a 50-row SD 1.5 U-Net call needs tens of GB in ONNX
Runtime's CPU attention.

fp16 graphs (what TensorRT builds its strongly typed engines from): the fp32 module wrapped in
`HalfWithFloatIO` (an fp16 copy of the weights; float inputs cast to fp16 inside, outputs back to
fp32) and exported as is, so inputs and outputs stay float32 and every op inside runs in fp16.
Their parity against the fp32 torch module is held to FP16_TOLERANCE (max_rel) instead.
"""

from __future__ import annotations

import warnings
from pathlib import Path

from pedit.errors import PeditError
from pedit.export.specs import Dims, NetworkSpec, random_inputs

OPSET = 17
FP16_TOLERANCE = 2e-2  # max_rel an fp16 graph may show against the fp32 torch module
# The text encoder has no fp16 graph: transformers' CLIP text layers export with a LayerNormalization
# whose input is float32 and whose weights are fp16, which ONNX's type rules reject (tried: ONNX
# Runtime refuses the graph). Engines of it are built from the fp32 graph; the editor runs the U-Net
# on engines only (docs/deployment.md).
FP16_NETWORKS = ("unet", "image_projector", "vae_encoder", "vae_decoder")


class ExportError(PeditError):
    """An export that failed, or whose graph disagrees with torch beyond the tolerance."""


def export_onnx(spec: NetworkSpec, module, d: Dims, path: Path, input_dtype=None) -> None:
    """Write `module` as ONNX to `path`, in a staging folder of its own (pedit.export.graph_files):
    torch's exporter writes the weights of a graph over 2 GiB as files beside it."""
    import torch

    args = random_inputs(spec, d, spec.export_batch, seed=0, dtype=input_dtype or next(module.parameters()).dtype)
    dynamic = {t.name: {i: "B" for i, s in enumerate(t.shape) if s == "B"} for t in (*spec.inputs, *spec.outputs)}
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracer warnings about Python control flow on shapes
            torch.onnx.export(
                module, tuple(args.values()), str(path), dynamo=False, opset_version=OPSET,
                input_names=[t.name for t in spec.inputs], output_names=[t.name for t in spec.outputs],
                dynamic_axes={k: v for k, v in dynamic.items() if v}, do_constant_folding=True,
            )
    except Exception as e:
        raise ExportError(f"Exporting {spec.name} to ONNX failed: {type(e).__name__}: {str(e).splitlines()[0][:300]}") from e


def half_with_float_io(module):
    """An fp16 copy of `module` whose float inputs and outputs are float32 (cast inside the graph)."""
    import copy

    import torch
    from torch import nn

    class HalfWithFloatIO(nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = copy.deepcopy(module).half().eval()

        def forward(self, *args):
            args = [a.half() if a.is_floating_point() else a for a in args]
            return self.inner(*args).float()

    with torch.no_grad():
        return HalfWithFloatIO().eval()


def ort_session(path: Path, providers: list[str] | None = None):
    """An ONNX Runtime session; the CUDA provider first when onnxruntime-gpu offers it."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    wanted = providers or ["CUDAExecutionProvider", "CPUExecutionProvider"]
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    import torch

    opts.intra_op_num_threads = torch.get_num_threads()  # the same threads torch uses (OMP_NUM_THREADS)
    try:
        return ort.InferenceSession(str(path), opts, providers=[p for p in wanted if p in available])
    except Exception as e:  # a damaged graph, a missing or truncated .onnx.data: ORT's message, one line
        why = " ".join(str(e).split())[:300]
        raise ExportError(f"ONNX Runtime cannot load {path}: {why}. Export it again (`pedit export --force`).") from e


def parity_batches(spec: NetworkSpec, large: bool) -> list[int]:
    """The batches a graph is checked at: export batch and each profile's max; large graphs the smallest only."""
    if large:
        return [min((lo for lo, _, _ in spec.profiles.values()), default=1)]
    return sorted({spec.export_batch, *(hi for _, _, hi in spec.profiles.values())})


def parity(spec: NetworkSpec, module, d: Dims, path: Path, seed: int = 1234, batches: list[int] | None = None) -> dict:
    """Max abs / rel error of the ONNX graph against torch (`module`, fp32) on fresh random inputs."""
    import numpy as np
    import torch

    session = ort_session(path, ["CPUExecutionProvider"])
    dtype = next(module.parameters()).dtype
    batches = batches or parity_batches(spec, large=False)
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
