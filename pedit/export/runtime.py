"""The deployment runtime: an exported folder edits photos with ONNX Runtime and numpy, without torch.

    rt = Runtime.load("engines/")                          # checked like a model folder
    result = rt.edit(square, "laughing", seed=0)           # (R, R, 3) uint8 in, EditResult out

Stages (what `pedit edit --backend onnx` and the serving model call, in this order):

    conditions(square, direction)   c_s (VAE encoder graph), c_im (image projector graph over the CLIP
                                    pixels: the antialiased bicubic resize as torch computes it, stored
                                    as a matrix at export time), c_p of p_b, p_a and "" (the `tokenizers`
                                    tokenizer + the text encoder graph; any prompt, --subject included)
    job(conds, settings, seed)      the edit job (pedit.edit.job.EditJob) with this folder's schedule
                                    table, numpy noise from the seed and the model's row builder;
                                    `run([job, ...], rt.denoise)` drives one or many through the U-Net
    decode(z_0)                     the VAE decoder graph → (R, R, 3) uint8
    keep_outside(...)               the composite (pedit.edit.mask: the same code as the torch path)

Noise: torch's CPU normal stream cannot be reproduced without torch (its vectorised Box-Muller runs
through SLEEF), so the runtime draws its own: `noise(seed)`, numpy's PCG64 generator seeded with the
edit's seed, standard normal float32, drawn in the order the job asks (the mask's draws, then z_T).
Same seed, same bytes, in the CLI and the server alike; a different sample than `--backend torch`.

Nothing at import time pulls torch, diffusers or transformers (tests/test_runtime.py checks
sys.modules); onnxruntime and tokenizers load when a Runtime is.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from pedit.errors import ConfigError, NonFiniteError
from pedit.export.runtime_folder import Export, read_export
from pedit.export.runtime_sessions import RUNTIME_BACKENDS, check_backend, session  # noqa: F401 (the API)


def noise(seed: int) -> Callable[[tuple], np.ndarray]:
    """draw(shape) → standard normal float32 of `shape`, from numpy's PCG64 seeded with `seed`; each
    call continues the stream (the job draws the mask's noise first, then z_T)."""
    rng = np.random.Generator(np.random.PCG64(seed))
    return lambda shape: rng.standard_normal(tuple(shape), dtype=np.float32)


@dataclass
class ImageConditions:
    """What every direction of one photo shares: c_s (1, 4, h, w), c_im (1, K, D)."""

    c_s: np.ndarray
    c_im: np.ndarray


class Runtime:
    """A loaded export: one ONNX Runtime session per network, and what the sampler reads."""

    def __init__(self, export: Export, backend: str = "onnx"):
        check_backend(backend)
        from tokenizers import Tokenizer

        from pedit.data.directions import model_directions

        self.export, self.backend = export, backend
        self.meta = export.meta
        self.directions = model_directions(export.meta, export.folder)
        self.sessions = {name: session(path, backend, export.hashes[name] or None) for name, path in export.graphs.items()}
        self.tokenizer = Tokenizer.from_file(str(export.tokenizer))
        self._prompts: dict[str, np.ndarray] = {}

    @classmethod
    def load(cls, folder, backend: str = "onnx") -> "Runtime":
        """The runtime of an exported folder (`pedit export -o folder`), checked first (pedit.export.runtime_folder)."""
        return cls(read_export(folder, backend), backend)

    @property
    def resolution(self) -> int:
        return self.export.resolution

    @property
    def is_bundled(self) -> bool:
        return bool(self.meta.get("bundled", False))

    # -- the networks -------------------------------------------------------------------------------

    def _run(self, name: str, **inputs) -> np.ndarray:
        return self.sessions[name].run(None, inputs)[0]

    def denoise(self, z_in, t, context) -> np.ndarray:
        """The backend contract: z_in (N, 8, h, w), t (N,) or one for all rows, context (N, 77 + K, D) → eps (N, 4, h, w)."""
        z_in = np.ascontiguousarray(z_in, dtype=np.float32)
        t = np.asarray(t, dtype=np.float32).reshape(-1)
        if t.size == 1:
            t = np.repeat(t, z_in.shape[0])
        return self._run("unet", z_in=z_in, t=t, context=np.ascontiguousarray(context, dtype=np.float32))

    def prompt(self, text: str) -> np.ndarray:
        """c_p (1, 77, D) of `text`: token ids from the exported tokenizer, then the text encoder graph."""
        if text not in self._prompts:
            ids = np.asarray([self.tokenizer.encode(text).ids], dtype=np.int64)  # (1, 77): padded and truncated
            self._prompts[text] = self._run("text_encoder", input_ids=ids)
        return self._prompts[text]

    def image_conditions(self, square: np.ndarray) -> ImageConditions:
        """c_s and c_im of one photo, `square` (R, R, 3) uint8 at the model's resolution."""
        size = self.resolution
        if square.shape != (size, size, 3) or square.dtype != np.uint8:
            raise ConfigError(f"The runtime takes a ({size}, {size}, 3) uint8 photo, got {square.shape} {square.dtype}.")
        x = uint8_to_array(square)  # (1, 3, R, R) in [-1, 1]
        c_s = self._run("vae_encoder", x=x)  # (1, 4, h, w)
        a = self.export.arrays
        resized = a["clip_resize"] @ x @ a["clip_resize"].T  # (1, 3, S, S): torch's antialiased bicubic resize
        mean, std = a["clip_mean"].reshape(1, 3, 1, 1), a["clip_std"].reshape(1, 3, 1, 1)
        clip_pixels = (((resized + 1) / 2 - mean) / std).astype(np.float32)
        return ImageConditions(c_s, self._run("image_projector", clip_pixels=clip_pixels, c_s=c_s))

    def conditions(self, image: ImageConditions | np.ndarray, direction):
        """EditConditions (numpy) of one photo (or its ImageConditions) toward `direction` (a name or Direction)."""
        from pedit.model.conditions import EditConditions

        if not isinstance(image, ImageConditions):
            image = self.image_conditions(image)
        d = self.direction(direction)
        return EditConditions(image.c_s, image.c_im, self.prompt(d.p_b), self.prompt(d.p_a), self.prompt(""))

    def direction(self, direction):
        from pedit.data.directions import Direction, resolve

        return direction if isinstance(direction, Direction) else resolve(direction, self.directions)

    def decode(self, z_0) -> np.ndarray:
        """(1, 4, h, w) clean latent → (R, R, 3) uint8; NaN or infinity is an error, never a grey region."""
        x = self._run("vae_decoder", z=np.ascontiguousarray(z_0, dtype=np.float32))  # (1, 3, R, R), clamped
        if not np.isfinite(x).all():
            raise NonFiniteError("The VAE decoder graph returned NaN or infinite values; nothing was written. "
                                 "Check the exported folder's graphs (`pedit export --force`).")
        return array_to_uint8(x)


def uint8_to_array(arr: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 → (1, 3, H, W) float32 in [-1, 1] (the torch path's uint8_to_tensor, in numpy)."""
    return np.ascontiguousarray(arr.astype(np.float32).transpose(2, 0, 1)[None] / np.float32(127.5) - np.float32(1))


def array_to_uint8(x: np.ndarray) -> np.ndarray:
    """(1, 3, H, W) in [-1, 1] → (H, W, 3) uint8, rounding half to even as torch.round does."""
    return np.rint((np.clip(x[0], -1, 1) + 1) * np.float32(127.5)).astype(np.uint8).transpose(1, 2, 0).copy()
