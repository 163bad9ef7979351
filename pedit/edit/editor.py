"""Mask-guided editing with a trained MCDM (paper §3.4): the Python API the CLI itself uses.

    editor = Editor.from_pretrained("my-model")      # or None for the bundled toon model
    result = editor.edit(image, "royal", seed=0)
    result.image.save("royal.png"); result.mask.save("mask.png")

One U-Net call per step on a 5-row batch (pedit.edit.guidance); the editing mask comes from the same
model (pedit.edit.mask). The backend is a `denoise(z_in, t, context)` callable: eager PyTorch by default.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np
import torch
from PIL import Image

from pedit.data.directions import Direction, model_directions, resolve
from pedit.errors import ConfigError, NonFiniteError
from pedit.noise import randn
from pedit.edit.options import EditOptions, check_folder_samplers, default_options, options_for  # EditOptions imported from here too
from pedit.arrays import to_like
from pedit.edit.job import EditJob, jobs_by_sampler, run, run_by_sampler
from pedit.edit.mask import keep_outside  # noqa: F401 (callers import it from here too)
from pedit.edit.pixel_mask import needs_reconstruction
from pedit.model.sampling_settings import SCHEDULERS, SamplingSettings
from pedit.data.pairs import square_rgb
from pedit.model.conditions import EditConditions
from pedit.edit.sampler import check_steps, make_scheduler
from pedit.edit.rows import StudentRows, rows_for
from pedit.model.distilled import distilled_for
from pedit.edit.user_mask import user_mask_at
from pedit.edit.schedules import noise_scheduler as make_noise_scheduler

if TYPE_CHECKING:  # loading imports diffusers (seconds), which a cached model never needs
    from pedit.model.loading import LoadedModel
    from pedit.model.traced import TracedModel


PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass
class EditResult:
    image: Image.Image  # RGB at the model's resolution; equal to the input where `mask` is 0
    mask: Image.Image  # L: the blend weight actually used (0 = input pixel kept exactly)
    raw: Image.Image  # the decoded sample before compositing
    mask_latent: torch.Tensor | None  # (1, 1, h, w) binary editing mask, None with use_mask=False


def uint8_to_tensor(arr: np.ndarray) -> torch.Tensor:
    """(H, W, 3) uint8 → (1, 3, H, W) in [-1, 1]."""
    return torch.from_numpy(arr.astype(np.float32)).permute(2, 0, 1)[None] / 127.5 - 1


def tensor_to_uint8(x: torch.Tensor) -> np.ndarray:
    """(1, 3, H, W) in [-1, 1] → (H, W, 3) uint8."""
    return ((x[0].float().clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).cpu().numpy()


def torch_denoise(mcdm) -> Callable:
    """The eager-PyTorch backend: denoise(z_in (N, 8, h, w), t, context (N, 77+K, D)) → eps (N, 4, h, w)."""

    @torch.no_grad()
    def denoise(z_in, t, context):
        return mcdm(z_in, t, context)

    return denoise


class Editor:
    """A loaded MCDM ready to edit square portraits at its resolution."""

    def __init__(self, model: LoadedModel | TracedModel, denoise: Callable | None = None):
        self.model = model
        self.cache_status: str | None = None  # with from_pretrained(cache=True): what happened to the cache
        self.cache_failed = False
        self.denoise = denoise or torch_denoise(model.mcdm)
        self.directions = model_directions(model.meta, model.path)
        self.distillation = distilled_for(model.meta)  # pedit.json "distilled": a student's scale range, else None
        self.rows = rows_for(model.meta)  # the model's row builder: a teacher's 5 rows a step, a student's 2
        self._prompt_cache: dict[str, torch.Tensor] = {}
        self._last_reconstruction = None  # (c_s, its decode): `_reconstruction`
        # every sampler the folder can resolve runs here, checked once (ModelError naming the entry)
        check_folder_samplers(model.meta, Path(model.path) / "pedit.json", self.scheduler, SCHEDULERS, "torch")

    @property
    def distilled(self) -> bool:
        """A guidance-distilled student (pedit distill): 2 rows a step, scales inside its trained range."""
        return isinstance(self.rows, StudentRows)

    @classmethod
    def from_pretrained(cls, path: str | Path | None = None, device: str | None = None, allow_pickle: bool = False,
                        backend: str = "torch", precision: str | None = None, cache: bool = False):
        """Load a model folder (None: the bundled toon model) for editing with eager PyTorch.

        precision: fp32 | fp16 | bf16 (default fp16 on CUDA, fp32 on the CPU). Another backend
        (compile, onnx, trt) is handed to the editor by pedit.export.backends.load_editor, which
        calls this first; backend is here only to say so.
        cache=True (what `pedit edit` passes) with the torch backend, fp32, on the CPU: load the model
        from its TorchScript cache, writing the cache first when there is none (pedit.model.traced).
        A new process then edits without importing diffusers or transformers, with the same bytes out.
        Models with over 1 GiB of weights (Stable Diffusion size) are never traced (traced.worth_tracing).
        """
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        try:
            kind = torch.device(device).type
        except RuntimeError:
            raise ConfigError(f"Unknown device {device!r}; use cpu, cuda or cuda:N.") from None
        if kind not in ("cpu", "cuda", "mps"):
            raise ConfigError(f"Device {device!r} cannot run an edit; use cpu, cuda or cuda:N.")
        if kind == "mps" and not torch.backends.mps.is_available():
            raise ConfigError(f"Device {device!r} asked for, but this torch has no MPS support; use --device cpu.")
        if kind == "cuda" and not torch.cuda.is_available():
            raise ConfigError(f"Device {device!r} asked for, but this torch sees no CUDA GPU; use --device cpu.")
        precision = precision or ("fp16" if kind == "cuda" else "fp32")
        if precision not in PRECISIONS:
            raise ConfigError(f"Unknown precision {precision!r}; choose from {', '.join(PRECISIONS)}.")
        if backend != "torch":
            # The editor is handed its backend, never fetches one (docs/design-notes.md): the export wing
            # sits above this one and builds engines on first use.
            raise ConfigError(f"Editor.from_pretrained runs the eager torch backend; for {backend!r} use "
                              "pedit.export.backends.load_editor(path, backend=...).")
        if cache and kind == "cpu" and precision == "fp32":
            return cls._from_cache(path, allow_pickle)
        from pedit.model.loading import load_model

        model = load_model(path, allow_pickle=allow_pickle, device=device, dtype=PRECISIONS[precision])
        return cls(model)

    @classmethod
    def _from_cache(cls, path, allow_pickle: bool) -> "Editor":
        """The model's TorchScript cache (pedit.model.traced), written first when there is none."""
        from pedit.model import traced
        from pedit.model.loading import check_weights_allowed, load_model, read_model_folder

        folder, meta = read_model_folder(path)  # the same checks, and errors, as load_model
        check_weights_allowed(folder, allow_pickle)
        if (why_not := traced.worth_tracing(folder)) is not None:
            editor = cls(load_model(folder, allow_pickle=allow_pickle))
            editor.cache_status = why_not
            return editor
        key = traced.model_key(folder)
        model = traced.load_cached(folder, meta, key, allow_pickle)
        if model is not None:
            editor = cls(model)
            editor.cache_status = f"loaded from the TorchScript cache {traced.cache_dir() / key}"
            return editor
        editor = cls(load_model(folder, allow_pickle=allow_pickle))
        try:
            editor.cache_status = f"wrote the TorchScript cache {traced.build_cache(editor.model, key)}"
        except (traced.CacheError, OSError) as e:
            editor.cache_status = f"no TorchScript cache ({e}); editing without it"
            editor.cache_failed = True
        return editor

    @property
    def resolution(self) -> int:
        return self.model.resolution

    @property
    def is_bundled(self) -> bool:
        return bool(self.model.meta.get("bundled", False))

    def default_options(self, direction: str | Direction | None = None) -> EditOptions:
        """EditOptions, with the editing-mask settings the model folder carries in pedit.json for
        `direction` (its "mask", then "mask_by_task", then "mask_by_direction"; pedit.model.mask_settings)
        and its sampling settings ("sampling": steps, scheduler, guidance interval, scales)."""
        return default_options(self.model.meta, None if direction is None else self.direction(direction), self.model.path)

    def options_for(self, direction: str | Direction, settings: SamplingSettings | None = None, **fields) -> EditOptions:
        """The EditOptions of `settings` (what a command's flags, the app or the caller set) laid over the
        model folder's defaults for `direction` (`default_options`): each field set wins, each None keeps
        the folder's. `fields`: EditOptions fields outside the sampling settings (mask_mode, subject, ...)."""
        return options_for(self.default_options(direction), settings, **fields)

    def scheduler(self, options: EditOptions):
        """The sampling scheduler for `options`; ConfigError when its steps do not fit the model's schedule."""
        scheduler = make_scheduler(options.scheduler, self.model.parts.scheduler_config)
        check_steps(options.steps, scheduler)
        return scheduler

    def direction(self, direction: str | Direction) -> Direction:
        return direction if isinstance(direction, Direction) else resolve(direction, self.directions)

    def forget_prompts(self) -> None:
        """Drop the cached prompt embeddings (a benchmark counts encoding a direction's prompts)."""
        self._prompt_cache.clear()

    def _prompt(self, text: str) -> torch.Tensor:
        if text not in self._prompt_cache:
            self._prompt_cache[text] = self.model.parts.encode_prompts([text])
        return self._prompt_cache[text]

    @torch.no_grad()
    def conditions(self, x_A: torch.Tensor, direction: Direction) -> EditConditions:
        """c_s, c_im and the three prompt embeddings for one image x_A (1, 3, R, R) in [-1, 1]."""
        return self._conditions_for(self._image_conditions(x_A), direction)

    @torch.no_grad()
    def _image_conditions(self, x_A: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(c_s (1, 4, h, w), c_im (1, K, D)) of x_A: what every direction of one photo shares."""
        parts, mcdm = self.model.parts, self.model.mcdm
        dtype = mcdm.dtype  # the frozen parts may run in another precision (training validation)
        c_s = parts.encode_latent(x_A).to(dtype)  # (1, 4, h, w)
        return c_s, mcdm.image_projector(c_s, parts.clip_tokens(x_A).to(dtype))

    def _conditions_for(self, image_conds: tuple[torch.Tensor, torch.Tensor], direction: Direction) -> EditConditions:
        dtype = self.model.mcdm.dtype
        prompts = (self._prompt(t).to(dtype) for t in (direction.p_b, direction.p_a, ""))
        return EditConditions(*image_conds, *prompts)

    @torch.no_grad()
    def edit(self, image: Image.Image, direction: str | Direction, options: EditOptions | None = None,
             callback: Callable[[int, int], None] | None = None, **overrides) -> EditResult:
        """Edit `image` (any size; resized to the model's square resolution) toward `direction`.

        `overrides` are EditOptions fields (`seed=3`, `steps=10`, ...). `callback(step, total)`
        reports progress. Same seed → same bytes. `user_mask=` (an (H, W) array in [0, 1], see
        pedit.edit.user_mask.load_user_mask) and `mask_mode=` restrict or widen the model's mask.
        """
        # 1. The direction and the settings, checked before any work.
        [(direction, options)] = self.plan_many([direction], options, **overrides)
        # 2. The photo as the model's square.
        original = square_rgb(image, self.resolution)  # (R, R, 3) uint8
        # 3. Its conditions: c_s = E(x_A), c_im, and the prompts p_b, p_a, "".
        cond = self.conditions(uint8_to_tensor(original), direction)
        # 4. The job: the editing mask's noise draws, then the sampler's steps, one U-Net call each.
        job = self.job([cond], [options], callback)
        run([job], self.denoise)
        # 5. Decode, and keep every pixel outside the mask.
        return self.finish(original, self.decode(job.z_0[0]), job, 0)

    def plan_many(self, directions, options: EditOptions | list[EditOptions] | None = None, **overrides):
        """[(Direction, EditOptions)] for `edit_many`, checked before any work (pedit.edit.options.plan_many)."""
        from pedit.edit.options import plan_many

        return plan_many(self, directions, options, **overrides)

    @torch.no_grad()
    def edit_many(self, image: Image.Image, directions, options: EditOptions | list[EditOptions] | None = None,
                  callback: Callable[[int, int], None] | None = None, batch_steps: bool = False,
                  **overrides) -> list[EditResult]:
        """Edit `image` toward each of `directions` (names or Direction), one result each: the single
        edit's stages, with the photo's work shared.

        `options`: one EditOptions for all, one per direction, or None (each direction's defaults).
        Shared: c_s and c_im are encoded once; directions whose masks draw the same noise (same seed,
        n_noise, strength, batch) get their masks from one U-Net call per draw chunk with each
        distinct prompt once (K p_b + the shared p_a: K + 1 rows a draw instead of 2K, pedit.edit.mask.MaskJob).
        Sampling costs 5 rows a step per direction whichever way it runs (each direction's latent is
        its own after the first step). Directions whose samplers differ (a folder's "sampling_by_task",
        or per-direction options) are separate jobs (pedit.edit.job.jobs_by_sampler), each the job its
        directions make alone. `batch_steps=False` (default): one 5-row loop per direction, the jobs one
        after another. True: the K loops as one, 5K rows a step in one call, the jobs ticked together
        (fewer, larger calls: what a GPU wants). Either way the same edits as K separate `edit` calls
        with the same options and seed: the same bytes with ONNX Runtime on the CPU, up to float
        rounding with eager torch or on a GPU, whose kernels round a row differently at another batch
        size (the shared mask call; docs/design-notes.md, "Bytes").
        """
        plans = self.plan_many(directions, options, **overrides)
        original = square_rgb(image, self.resolution)  # (R, R, 3) uint8
        image_conds = self._image_conditions(uint8_to_tensor(original))
        conds = [self._conditions_for(image_conds, d) for d, _ in plans]
        jobs = jobs_by_sampler(self.job, conds, [o for _, o in plans], callback, batch_steps)
        run_by_sampler(jobs, self.denoise, together=batch_steps)
        results: list = [None] * len(plans)
        for job, members in jobs:
            for j, i in enumerate(members):
                results[i] = self.finish(original, self.decode(job.z_0[j]), job, j)
        return results

    def job(self, conds: list[EditConditions], options: list[EditOptions], callback=None,
            batch_steps: bool = False) -> EditJob:
        """The EditJob of one photo's conditions toward len(conds) directions (pedit.edit.job): its
        seeded noise, the model's row builder and schedules, and a user's mask on the latent grid."""
        first = options[0]
        user = None
        if first.user_mask is not None:
            user = user_mask_at(first.user_mask, self.resolution, conds[0].c_s.shape[-1])
            user = dataclasses.replace(user, latent=to_like(user.latent, conds[0].c_s))  # where the latents live
        like = conds[0].c_s

        def new_noise(seed: int):
            generator = torch.Generator().manual_seed(seed)
            return lambda shape: randn(shape, generator, like=like)

        return EditJob(conds, options, self.scheduler, make_noise_scheduler(self.model.parts.scheduler_config),
                      new_noise, self.rows, batch_steps, user, callback)

    def decode(self, z_0: torch.Tensor) -> np.ndarray:
        """(1, 4, h, w) latent → (R, R, 3) uint8; NaN or infinity is an error, never a grey region."""
        decoded = self.model.parts.decode(z_0)  # (1, 3, R, R)
        if not torch.isfinite(decoded).all():  # NaN would become a grey region (clamp, then round)
            raise NonFiniteError("The VAE decoder returned NaN or infinite values; nothing was written. In fp16 try "
                                 "--precision fp32, and check the model folder's VAE weights.")
        return tensor_to_uint8(decoded)

    def _reconstruction(self, job: EditJob) -> np.ndarray:
        """The decoded c_s of the job's photo, (R, R, 3) uint8: one VAE decode a photo, kept for the
        job's other directions (a "pixel" mask measuring the edit's change from it)."""
        c_s = job.conds[0].c_s
        if self._last_reconstruction is None or self._last_reconstruction[0] is not c_s:
            self._last_reconstruction = (c_s, self.decode(c_s))
        return self._last_reconstruction[1]

    def finish(self, original: np.ndarray, raw: np.ndarray, job: EditJob, i: int) -> EditResult:
        """The EditResult of the job's direction i: `raw` composited onto `original` by its blend weight
        (a "pixel" refinement reads the job's difference map, and may read the decoded reconstruction
        of the input: `_reconstruction`)."""
        options = job.settings[i]
        reconstruction = self._reconstruction(job) if options.use_mask and needs_reconstruction(options.mask) else None
        out, weight = job.blend(i, original, raw, reconstruction)
        return EditResult(
            image=Image.fromarray(out),
            mask=Image.fromarray(np.rint(weight * 255).astype(np.uint8)),
            raw=Image.fromarray(raw),
            mask_latent=job.masks[i],
        )
