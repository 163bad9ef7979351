"""The client of a pedit Triton server: `pedit edit --server URL`, `pedit app --server URL`, Python callers.

    client = ServerClient("http://127.0.0.1:8000")       # ServeError unless a pedit model is ready there
    results = client.edit(open("me.jpg", "rb").read(), ["laughing"], seed=0)
    results[0].image.save("me_laughing.png")

`RemoteEditor` puts the server behind the Editor interface that `pedit edit`'s file handling and the
web app call (direction, options_for, plan_many, edit_many), so a photo sent through a server
takes the same path as a local edit (decode, face crop, paste-back, identity check, outputs written
all-or-none under the same names) and only the square's edit runs on the server. The model's
directions and default settings come from the `pedit` model's config (parameter "model_meta").
"""

from __future__ import annotations

import io
import json
import math
import threading
from dataclasses import dataclass
from urllib.parse import urlparse

import numpy as np
from PIL import Image

from pedit.errors import MissingPackageError, PeditError
from pedit.serve import protocol
from pedit.serve.server import ServeError
from pedit.serve.service import png_bytes


@dataclass
class ServerResult:
    image: Image.Image
    mask: Image.Image
    identity: float | None


def _address(url: str) -> str:
    parsed = urlparse(url if "://" in url else f"http://{url}")
    if parsed.scheme != "http" or not parsed.hostname or parsed.path not in ("", "/"):
        raise ServeError(f"--server {url!r} is not an HTTP address like http://127.0.0.1:8000.")
    return f"{parsed.hostname}:{parsed.port or 80}"


class ServerClient:
    """A connection to a pedit Triton server's HTTP endpoint, checked on creation."""

    def __init__(self, url: str, concurrency: int = 1, timeout: float = 600.0):
        try:
            import tritonclient.http as http
            from tritonclient.utils import InferenceServerException
        except ImportError:
            raise MissingPackageError("Editing through a server needs tritonclient: pip install 'pedit[serve]'.") from None
        self._http, self._error = http, InferenceServerException
        self.url = url
        self.concurrency = max(1, concurrency)
        self._address, self._timeout = _address(url), timeout
        self._local = threading.local()  # geventhttpclient's connections belong to the thread that made them
        try:
            ready = self.client.is_server_ready()
        except Exception as e:  # refused, unreachable, not HTTP: all mean "no server there"
            raise ServeError(f"No Triton server answers at {url} ({type(e).__name__}: {str(e)[:200]}); start one with "
                             "`pedit serve` and pass the http URL it prints.") from None
        if not ready:
            raise ServeError(f"The Triton server at {url} is not ready yet; wait for it, or see its log.")
        try:
            model_ready = self.client.is_model_ready(protocol.MODEL)
            config = self.client.get_model_config(protocol.MODEL) if model_ready else {}
        except Exception as e:
            raise ServeError(f"The server at {url} could not be asked about its models ({str(e)[:200]}).") from None
        if not model_ready:
            raise ServeError(f"The Triton server at {url} has no ready '{protocol.MODEL}' model; serve a pedit "
                             "repository there (`pedit serve`, or `pedit export --triton`).")
        params = {k: v.get("string_value", "") for k, v in config.get("parameters", {}).items()}
        try:
            self.meta = json.loads(params["model_meta"])
        except (KeyError, ValueError):
            raise ServeError(f"The '{protocol.MODEL}' model at {url} does not describe its model (no model_meta); "
                             "export its repository again with this pedit.") from None

    @property
    def client(self):
        """This thread's connection to the server."""
        if getattr(self._local, "client", None) is None:
            self._local.client = self._http.InferenceServerClient(
                self._address, connection_timeout=self._timeout, network_timeout=self._timeout)
        return self._local.client

    def edit(self, photo: bytes, directions: list[str], seed: int = 0, settings: dict | None = None,
             user_mask: bytes | None = None) -> list[ServerResult]:
        """One request: the edited photo, its mask and identity distance per direction; ServeError with
        the server's message (pedit's own, for a bad request)."""
        http = self._http

        def tensor(name, array, dtype):
            t = http.InferInput(name, list(array.shape), dtype)
            t.set_data_from_numpy(array, binary_data=True)
            return t

        inputs = [tensor("photo", np.array([[photo]], dtype=np.object_), "BYTES"),
                  tensor("directions", np.array([[d.encode() for d in directions]], dtype=np.object_), "BYTES"),
                  tensor("seed", np.array([[seed]], dtype=np.int64), "INT64")]
        if settings:
            inputs.append(tensor("settings", np.array([[json.dumps(settings).encode()]], dtype=np.object_), "BYTES"))
        if user_mask is not None:
            inputs.append(tensor("user_mask", np.array([[user_mask]], dtype=np.object_), "BYTES"))
        outputs = [http.InferRequestedOutput(n, binary_data=True) for n in protocol.OUTPUTS]
        try:
            result = self.client.infer(protocol.MODEL, inputs, outputs=outputs)
        except self._error as e:
            raise ServeError(server_message(e.message() or str(e))) from None
        except Exception as e:  # the connection broke (server killed, network): never a result
            raise ServeError(f"The request to {self.url} failed ({type(e).__name__}: {str(e)[:200]}).") from None
        edited, masks = result.as_numpy("edited").reshape(-1), result.as_numpy("mask").reshape(-1)
        identity = result.as_numpy("identity").reshape(-1)
        if not len(edited) == len(masks) == len(identity) == len(directions):
            raise ServeError(f"The server returned {len(edited)} results for {len(directions)} directions.")
        return [ServerResult(_image(e), _image(m), None if math.isnan(float(i)) else float(i))
                for e, m, i in zip(edited, masks, identity)]

    def close(self):
        self.client.close()


def server_message(message: str) -> str:
    """The server's error as the user should read it: pedit's message without Triton's wrapping."""
    if protocol.ERROR_PREFIX in message:
        return message.split(protocol.ERROR_PREFIX, 1)[1].strip()
    if "Exceeds maximum queue size" in message:
        return f"The server is overloaded (its queue is full); try again later. ({message.strip()})"
    if "timeout" in message.lower():
        return f"The server did not start the request in time (overloaded); try again later. ({message.strip()})"
    return f"The server refused the request: {message.strip()}"


def _image(data: bytes) -> Image.Image:
    with Image.open(io.BytesIO(bytes(data))) as im:
        im.load()
        return im.copy()


class RemoteEditor:
    """What `pedit edit` and the web app call on an Editor, answered by a server (see the module docstring)."""

    cache_failed = False
    cache_status = None

    def __init__(self, client: ServerClient):
        from pedit.data.directions import model_directions

        self.client = client
        self.meta = client.meta
        self.directions = model_directions(self.meta, client.url)
        self.resolution = int(self.meta["resolution"])
        self.concurrency = client.concurrency  # photos `pedit edit` sends at once (pedit.photos.photo.run_batch)

    @property
    def is_bundled(self) -> bool:
        return bool(self.meta.get("bundled", False))

    def direction(self, direction):
        from pedit.data.directions import Direction, resolve

        return direction if isinstance(direction, Direction) else resolve(direction, self.directions)

    def default_options(self, direction=None):
        """The served model's own sampling settings (its pedit.json, which the server's config carries) for
        `direction`'s task, or no task's: what the web app's form shows. The mask stays the server's
        business: a request never sends one (MaskConfig's defaults here, unused)."""
        from pedit.edit.options import EditOptions
        from pedit.edit.guidance import GuidanceScales
        from pedit.model.sampling_settings import sampling_for

        s = sampling_for(self.meta, None if direction is None else self.direction(direction).task)
        return EditOptions(steps=s.steps, scheduler=s.scheduler, guidance_interval=s.guidance_interval,
                           scales=GuidanceScales(s.s_s, s.s_im, s.s_p))

    def options_for(self, direction, settings=None, **fields) -> "RemoteOptions":
        """What a request carries for `direction`: the caller's SamplingSettings as set (the server lays
        them over the model's own defaults, as a local Editor.options_for does) and the other fields."""
        from pedit.model.sampling_settings import SamplingSettings

        self.direction(direction)  # an unknown name fails here, listing the server's directions
        return RemoteOptions(settings or SamplingSettings(), fields.get("mask_mode", "replace"), fields.get("subject"))

    def plan_many(self, directions, options=None, **overrides):
        """Directions resolved (an unknown one fails here, listing the server's); the server checks the rest."""
        return [self.direction(d) for d in directions]

    @staticmethod
    def settings(options: "RemoteOptions") -> dict:
        """The request's settings: the SamplingSettings fields that are set, the mask mode and subject;
        the server edits the square it is sent (`face: none`) and the client checks identity itself."""
        s = options.sampling
        settings = {k: getattr(s, k) for k in protocol.SAMPLING if getattr(s, k) is not None}
        if "guidance_interval" in settings:
            settings["guidance_interval"] = list(settings["guidance_interval"])
        settings.update(mask_mode=options.mask_mode, face="none", identity=False)
        if options.subject is not None:
            settings["subject"] = options.subject
        return settings

    def edit_many(self, image, directions, options, callback=None, user_mask=None, **overrides):
        """The square `image` edited on the server toward each direction: [(image, mask)] like Editor's results."""
        directions = [self.direction(d) for d in directions]
        first = options[0] if isinstance(options, (list, tuple)) else options
        mask_png = None
        if user_mask is not None:
            mask_png = png_bytes(Image.fromarray(np.rint(np.clip(user_mask, 0, 1) * 255).astype(np.uint8)))
        results = self.client.edit(png_bytes(image.convert("RGB")), [d.name for d in directions], first.sampling.seed,
                                   self.settings(first), mask_png)
        if callback is not None:
            callback(1, 1)
        return results


@dataclass(frozen=True)
class RemoteOptions:
    """One direction's options as a server request carries them (RemoteEditor.options_for)."""

    sampling: object  # pedit.model.sampling_settings.SamplingSettings
    mask_mode: str = "replace"
    subject: str | None = None
