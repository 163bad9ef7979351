"""The `pedit` model of a Triton repository (Python backend): one request = one photo's edit.

Each instance checks the repository against its manifest (a repository exported from another model,
or changed since, is refused: the server logs `pedit-refused: <why>` and the model does not load),
loads the repository's export folder into pedit's torch-free runtime editor (the edit job of
`pedit edit --backend onnx`), and edits requests with it; the job's U-Net call of each tick goes to
the `unet` model through BLS (business-logic scripting). Instances are separate
processes: while each runs its own request's steps, their U-Net calls queue in the `unet` model's
dynamic batcher and execute together, so concurrent requests share U-Net executions step by step.

The sampler is pedit's one sampler; only where its U-Net runs differs from `pedit edit --backend onnx`
(the same ONNX graph, in ONNX Runtime, in the `unet` model's process): the same bytes (tested).
"""

from __future__ import annotations

import json
import os
import threading
import traceback
from pathlib import Path

import numpy as np

import triton_python_backend_utils as pb_utils  # only inside Triton's Python-backend stub

from pedit.errors import PeditError
from pedit.serve import protocol


def bls_denoise(unet_model: str, max_rows: int, timeout_s: float | None = None):
    """denoise(z_in (N, 8, h, w), t (N,) or one for all rows, context (N, L, D)) → eps (N, 4, h, w)
    through the U-Net model; numpy arrays in and out (a torch tensor is taken too, and answered in kind).

    Every row carries its timestep (the per-row input); a call over `max_rows` rows (the U-Net
    model's max_batch_size) goes as several requests. A call that gets no answer within `timeout_s`
    fails this request with PeditError (a U-Net process that died without Triton noticing leaves its
    callers waiting for ever: the client gets an error instead; Watchdog)."""

    watchdog = Watchdog(timeout_s)

    def call(z_in: np.ndarray, t_rows: np.ndarray, context: np.ndarray) -> np.ndarray:
        request = pb_utils.InferenceRequest(
            model_name=unet_model, requested_output_names=["eps"],
            inputs=[pb_utils.Tensor("z_in", z_in), pb_utils.Tensor("t", t_rows), pb_utils.Tensor("context", context)])
        response = watchdog(request.exec, "The U-Net model")
        if response.has_error():
            raise PeditError(f"The U-Net model failed: {response.error().message()}")
        return pb_utils.get_output_tensor_by_name(response, "eps").as_numpy()

    def denoise(z_in, t, context):
        z, ctx, steps = (_numpy(a) for a in (z_in, context, t))
        t_rows = np.ascontiguousarray(np.broadcast_to(steps.reshape(-1), (len(z),)).reshape(-1, 1), dtype=np.float32)
        parts = [call(z[i:i + max_rows], t_rows[i:i + max_rows], ctx[i:i + max_rows]) for i in range(0, len(z), max_rows)]
        eps = np.concatenate(parts) if len(parts) > 1 else np.array(parts[0])
        if not np.isfinite(eps).all():
            raise PeditError("The U-Net model returned NaN or infinite values; nothing was returned.")
        if isinstance(z_in, np.ndarray):
            return eps
        import torch

        return torch.from_numpy(eps).to(device=z_in.device, dtype=z_in.dtype)

    return denoise


class Watchdog:
    """Runs a call into Triton on a helper thread and gives up on it after `timeout_s` (PeditError): a
    BLS call cannot be cancelled, so a given-up call's thread, its inputs in shared memory and a BLS
    worker stay until it returns. At most `max_abandoned` such calls at a time: past that, calls fail
    at once ("not answering") instead of piling up, until one of them returns."""

    def __init__(self, timeout_s: float | None, max_abandoned: int = 4):
        self.timeout_s, self.max_abandoned = timeout_s, max_abandoned
        self.abandoned = 0
        self.lock = threading.Lock()

    def __call__(self, work, what: str):
        if self.timeout_s is None:
            return work()
        with self.lock:
            if self.abandoned >= self.max_abandoned:
                raise PeditError(f"{what} is not answering ({self.abandoned} calls waiting past {self.timeout_s} s); "
                                 "nothing was returned. If it stays so, restart the server.")
        done, box = threading.Event(), {}

        def run():
            try:
                box["value"] = work()
            except BaseException as e:  # handed to the caller's thread
                box["error"] = e
            with self.lock:
                done.set()
                if box.get("abandoned"):
                    self.abandoned -= 1

        threading.Thread(target=run, daemon=True, name="pedit-bls").start()
        if not done.wait(self.timeout_s):
            with self.lock:
                if not done.is_set():  # it may have ended in between
                    box["abandoned"] = True
                    self.abandoned += 1
                    raise PeditError(f"{what} did not answer within {self.timeout_s} s; nothing was returned.")
        if "error" in box:
            raise box["error"]
        return box["value"]


def _numpy(a) -> np.ndarray:
    """float32 numpy of a numpy array, a number or a torch tensor (on any device)."""
    if hasattr(a, "detach"):
        a = a.detach().float().cpu().numpy()
    return np.ascontiguousarray(np.asarray(a, dtype=np.float32))


def _parameters(model_config: dict) -> dict[str, str]:
    return {k: v.get("string_value", "") for k, v in model_config.get("parameters", {}).items()}


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = _parameters(config)
        repository = Path(args["model_repository"]).resolve().parent
        try:
            from pedit.serve.repository import check_repository, load_editor_for

            manifest = check_repository(repository)
            editor = load_editor_for(manifest)
        except PeditError as e:
            pb_utils.Logger.log_error(f"pedit-refused: {e}")
            raise
        # The runtime's U-Net calls (pedit.edit.job.run: one a tick) go to the unet model.
        timeout = float(params["unet_timeout_s"]) if params.get("unet_timeout_s") else None
        editor.runtime.denoise = bls_denoise(params.get("unet_model", "unet"), int(params.get("unet_max_rows", "80")),
                                             timeout)
        from pedit.serve.service import EditService

        self.service = EditService(editor, max_pixels=int(params.get("max_pixels", "50000000")),
                                   max_request_bytes=int(params.get("max_request_bytes", str(protocol.MAX_REQUEST_BYTES))))

    def execute(self, requests):
        return [self._one(request) for request in requests]

    def _one(self, request):
        try:
            outputs = self._edit(request)
            return pb_utils.InferenceResponse(output_tensors=outputs)
        except PeditError as e:
            message = str(e)
        except Exception as e:  # not foreseen: still one line for the client, the traceback in the server's log
            pb_utils.Logger.log_error(traceback.format_exc())
            message = f"unexpected {type(e).__name__}: {e}"
        return pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(protocol.ERROR_PREFIX + message))

    def _edit(self, request):
        def tensor(name):
            t = pb_utils.get_input_tensor_by_name(request, name)
            return None if t is None else t.as_numpy()

        photo = tensor("photo")
        directions = tensor("directions")
        seed = tensor("seed")
        if photo is None or directions is None or seed is None:
            raise PeditError("A request needs photo, directions and seed.")
        settings, user_mask = tensor("settings"), tensor("user_mask")
        results = self.service.edit(
            photo.reshape(-1)[0], protocol.parse_directions(list(directions.reshape(-1))),
            int(seed.reshape(-1)[0]), protocol.parse_settings(None if settings is None else settings.reshape(-1)[0]),
            None if user_mask is None else user_mask.reshape(-1)[0])
        edited = np.array([[r.edited for r in results]], dtype=np.object_)
        masks = np.array([[r.mask for r in results]], dtype=np.object_)
        identity = np.array([[r.identity for r in results]], dtype=np.float32)
        return [pb_utils.Tensor("edited", edited), pb_utils.Tensor("mask", masks), pb_utils.Tensor("identity", identity)]
