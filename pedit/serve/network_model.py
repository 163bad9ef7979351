"""A network of a Triton repository as a Python-backend model running ONNX Runtime on its exported graph.

What a server without the onnxruntime backend runs (the tritonserver that nvidia-pytriton bundles has
the Python backend only); with that backend the same graph is served as `onnxruntime_onnx` instead.
Triton's dynamic batcher hands `execute` every request it gathered; their rows are concatenated into
one ONNX Runtime call (B rows) and the output split back. The U-Net's timestep arrives per row,
(B, 1): a graph with a per-row timestep takes it as (B,); a graph exported with one timestep for
the call, (1,), is run once per distinct timestep, rows kept in order.
ONNX Runtime's CPU kernels give a row the same bytes whatever else is in its batch (tested), so a
request's result does not depend on which other requests shared its execution.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

import triton_python_backend_utils as pb_utils  # only inside Triton's Python-backend stub


class TritonPythonModel:
    def initialize(self, args):
        import onnxruntime as ort

        config = json.loads(args["model_config"])
        params = {k: v.get("string_value", "") for k, v in config.get("parameters", {}).items()}
        folder = Path(args["model_repository"]) / args["model_version"]
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        opts.intra_op_num_threads = int(params.get("threads", os.environ.get("OMP_NUM_THREADS", "1")))
        opts.inter_op_num_threads = 1
        if os.environ.get("OMP_WAIT_POLICY", "").upper() == "PASSIVE":
            # As the runtime's sessions (pedit.export.runtime_sessions): with threads > 1, workers that
            # spin between calls take CPU from the pedit instances on a busy machine.
            opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in ort.get_available_providers()]
        self.session = ort.InferenceSession(str(folder / "model.onnx"), opts, providers=providers)
        self.inputs = [i.name for i in self.session.get_inputs()]
        self.outputs = [o.name for o in self.session.get_outputs()]
        t = next((i for i in self.session.get_inputs() if i.name == "t"), None)
        self.t_per_row = t is not None and not isinstance(t.shape[0], int)  # (B,) symbolic, else (1,)

    def execute(self, requests):
        feeds, counts = {name: [] for name in self.inputs}, []
        for request in requests:
            for name in self.inputs:
                feeds[name].append(pb_utils.get_input_tensor_by_name(request, name).as_numpy())
            counts.append(len(feeds[self.inputs[0]][-1]))
        batch = {name: np.concatenate(parts) if len(parts) > 1 else parts[0] for name, parts in feeds.items()}
        outputs = self._run(batch)
        responses, start = [], 0
        for n in counts:
            responses.append(pb_utils.InferenceResponse(
                output_tensors=[pb_utils.Tensor(name, np.ascontiguousarray(out[start:start + n]))
                                for name, out in zip(self.outputs, outputs)]))
            start += n
        return responses

    def _run(self, batch: dict) -> list[np.ndarray]:
        if "t" not in batch:
            return self.session.run(self.outputs, batch)
        t = batch["t"].reshape(-1).astype(np.float32)
        if self.t_per_row:
            return self.session.run(self.outputs, {**batch, "t": t})
        # A graph with one timestep per call: one run per distinct timestep, results put back in row order.
        results = None
        for value in np.unique(t):
            rows = np.flatnonzero(t == value)
            part = {k: (np.array([value], np.float32) if k == "t" else v[rows]) for k, v in batch.items()}
            got = self.session.run(self.outputs, part)
            if results is None:
                results = [np.empty((len(t),) + g.shape[1:], g.dtype) for g in got]
            for out, g in zip(results, got):
                out[rows] = g
        return results
