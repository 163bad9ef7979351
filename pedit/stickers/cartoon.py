"""The cartoon portrait (paper §4): augment the selfie, fine-tune, draw candidates, keep the best.

The prompt asks for a plain background (the sticker's background is keyed out without a model, see
matte.py). Each candidate is scored and the score recorded: identity distance to the selfie through
`pedit.faces` when the face model is installed (lower = more like the subject), and how plain the
background is (matte.fit_background's share of border pixels on the fitted colour). A candidate with a
busy background is only chosen when none is plain. `pick` overrides the choice.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path

import numpy as np
from PIL import Image

from pedit.errors import ConfigError
from pedit.photos.portrait import Box
from pedit.stickers.matte import fit_background

DEFAULT_STYLE = ("a cartoon sticker portrait of {subject}, flat colours, bold clean outlines, big expressive eyes, "
                 "head and shoulders, centred, on a plain white background")
NEGATIVE_PROMPT = "photo, realistic, busy background, scenery, text, watermark, cropped head, extra people"
PLAIN_ENOUGH = 0.6  # plain_fraction a candidate needs to be chosen over others on identity alone


def cartoon_prompt(style: str | None, subject: str) -> str:
    """The style prompt with the subject put in: at {subject}, or in front when the style has no slot."""
    style = (style or DEFAULT_STYLE).strip()
    if not style:
        raise ConfigError("--style is empty; give a style prompt, e.g. 'a flat cartoon of {subject}'.")
    return style.replace("{subject}", subject) if "{subject}" in style else f"{subject}, {style}"


def load_base_pipeline(base: str, allow_pickle: bool = False, device: str = "cpu"):
    """The Stable Diffusion pipeline of a base (local diffusers folder or hub id), quiet, on `device`."""
    from diffusers import StableDiffusionPipeline

    from pedit.errors import ModelError
    from pedit.model.loading import BASE_REQUIRED, _quiet_libraries, resolve_source, use_safetensors

    import diffusers

    _quiet_libraries()
    diffusers.utils.logging.disable_progress_bar()  # "Loading pipeline components": pedit draws its own
    root = resolve_source(base, "Base model", BASE_REQUIRED)
    safe = use_safetensors(root / "unet", allow_pickle)  # a config-only U-Net (the toon base) fails here
    try:
        pipe = StableDiffusionPipeline.from_pretrained(root, safety_checker=None, requires_safety_checker=False,
                                                       feature_extractor=None, image_encoder=None,
                                                       local_files_only=True, use_safetensors=safe)
    except (OSError, ValueError, RuntimeError, KeyError, TypeError) as e:
        first = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
        raise ModelError(f"Base model {root} could not be loaded as a Stable Diffusion pipeline: {first}") from None
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def draw_candidates(pipe, prompt: str, n: int, steps: int, seed: int,
                    progress: Callable[[int, int], None] = lambda i, n: None) -> list[tuple[int, Image.Image]]:
    """n portraits of `prompt`, candidate i from seed `seed + i` (so one can be redrawn alone)."""
    import torch
    from diffusers import DPMSolverMultistepScheduler

    pipe.scheduler = DPMSolverMultistepScheduler.from_config(pipe.scheduler.config)
    out = []
    for i in range(n):
        g = torch.Generator().manual_seed(seed + i)
        image = pipe(prompt, negative_prompt=NEGATIVE_PROMPT, num_inference_steps=steps, generator=g).images[0]
        out.append((seed + i, image))
        progress(i + 1, n)
    return out


def score_candidates(candidates, selfie: np.ndarray, scorer: Callable | None) -> list[dict]:
    """Per candidate: seed, identity_distance (None without the face model or a face), plain_background.

    `scorer` is pipeline.identity_scorer's (reference → distance function), or None.
    """
    to_selfie = scorer(selfie) if scorer is not None else (lambda rgb: None)
    scores = []
    for seed, image in candidates:
        rgb = np.asarray(image.convert("RGB"))
        distance = to_selfie(rgb)
        scores.append({"seed": seed, "identity_distance": None if distance is None else round(float(distance), 4),
                       "plain_background": round(fit_background(rgb).plain_fraction, 4)})
    return scores


def choose(scores: list[dict], pick: int | None = None) -> int:
    """The candidate to keep: `pick`, else the most like the subject among plain ones, else the plainest."""
    if pick is not None:
        if not 0 <= pick < len(scores):
            raise ConfigError(f"--pick {pick} is out of range: {len(scores)} candidates (0 to {len(scores) - 1}).")
        return pick
    plain = [i for i, s in enumerate(scores) if s["plain_background"] >= PLAIN_ENOUGH] or list(range(len(scores)))
    with_identity = [i for i in plain if scores[i]["identity_distance"] is not None]
    if with_identity:
        return min(with_identity, key=lambda i: scores[i]["identity_distance"])
    return max(plain, key=lambda i: scores[i]["plain_background"])


BASE_PARTS = ("model_index.json", "unet", "vae", "text_encoder", "tokenizer", "scheduler")  # what shapes a LoRA
# Weight variants the pipeline does not load (a full hub snapshot holds fp16, EMA and .bin copies beside the
# safetensors it reads): not hashed, so they neither cost a read nor make a cached LoRA stale.
# (.bin weights stay: they are what a pickle-only base loads.)
VARIANT_FILES = r".*\.(fp16|bf16|non_ema|ema)\..*|.*\.(msgpack|h5|onnx|onnx_data)"


def base_content(base: str) -> str:
    """The content hash of a base's files that shape its LoRA (pedit.cache.content_hash): what keys the
    LoRA cache, so another model placed at the same path (or hub id) never reuses a stale LoRA."""
    from pedit.cache import content_hash
    from pedit.model.loading import BASE_REQUIRED, resolve_source

    return content_hash(resolve_source(base, "Base model", BASE_REQUIRED), BASE_PARTS, skip=VARIANT_FILES)


@contextmanager
def lora_filled_alone(folder: Path, note: Callable[[str], None]):
    """Hold the LoRA cache folder's lock for the block: of two sticker-packs of one selfie at once,
    one trains and the other waits, then finds the LoRA made (the lock dies with its process)."""
    from pedit.errors import OutputError
    from pedit.files import LockBusy, held_lock

    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputError(f"Cannot write the LoRA cache folder {folder} ({e.strerror or e}); pass --cache-dir "
                          "with a writable folder.") from None
    lock = folder / ".lock"
    try:
        with held_lock(lock):
            pass  # a probe: a lock another run holds is said before this one waits on it
    except LockBusy as busy:
        note(f"waiting for another sticker-pack (pid {busy.holder}) training this LoRA")
    with held_lock(lock, wait=True):
        yield


def cached_lora_problem(lora_dir: Path) -> str | None:
    """None when the cached LoRA file reads as a LoRA (safetensors, finite tensors), else what is wrong:
    a cache is not trusted as if pedit had just written it."""
    import torch
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from pedit.files import regular_file_problem
    from pedit.stickers.dreambooth import LORA_FILE

    path = lora_dir / LORA_FILE
    if path.is_symlink() or lora_dir.is_symlink():
        return f"{path} is a link (a cache holds only the files pedit wrote)"
    if (why := regular_file_problem(path)) is not None:
        return f"{path} {why}"
    if (why := _entry_problem(lora_dir)) is not None:
        return why
    try:
        tensors = load_file(path)
    except (SafetensorError, OSError) as e:
        return f"{path} does not read as safetensors ({str(e).splitlines()[0][:120] if str(e) else type(e).__name__})"
    if not tensors or not all(t.is_floating_point() and bool(torch.isfinite(t).all()) for t in tensors.values()):
        return f"{path} holds no LoRA weights or non-finite ones"
    return None


def _entry_problem(lora_dir: Path) -> str | None:
    """None when the LoRA folder is the one trained for its cache key (its folder's name), its files as written."""
    import json

    from pedit.cache import entry_problem
    from pedit.stickers.dreambooth import ENTRY

    try:
        record = json.loads((lora_dir / ENTRY).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        record = None
    if not isinstance(record, dict):
        return f"{lora_dir / ENTRY} is missing or unreadable (its record of what it was trained for)"
    if record.get("key") != lora_dir.parent.name:
        return f"{lora_dir} was trained for another cache key ({str(record.get('key'))[:20]})"
    if (why := entry_problem(lora_dir, record.get("files"), record.get("content"))) is not None:
        return f"{lora_dir}: {why}"
    return None


def subject_lora(pipe, selfie: Image.Image, face: Box | None, aug, db, folder: Path, progress) -> Path:
    """The subject's LoRA folder: the cached one when it is intact, else augmented views and DreamBooth
    (under the cache folder's lock, so two runs of one selfie train once)."""
    from pedit.stickers.augment import augment_views
    from pedit.stickers.dreambooth import train_lora
    from pedit.stickers.progress import StageProgress

    lora = folder / "lora"
    with lora_filled_alone(folder, lambda detail: progress(StageProgress("fine-tune", 0, 0, detail))):
        views = []
        if os.path.lexists(lora):  # anything there, a dangling link included, is checked before use
            if (why := cached_lora_problem(lora)) is None:
                progress(StageProgress("augment", 0, 0, "skipped (LoRA cached)", skipped=True))
                progress(StageProgress("fine-tune", 0, 0, f"skipped (cached {folder.name})", skipped=True))
                return lora
            progress(StageProgress("fine-tune", 0, 0, f"the cached LoRA is damaged ({why}); training it again"))
            if lora.is_symlink() or not lora.is_dir():
                lora.unlink()  # a link is removed, never followed (rmtree refuses links)
            else:
                shutil.rmtree(lora)
        for i, view in enumerate(augment_views(selfie, face, aug)):
            views.append(view.image)
            progress(StageProgress("augment", i + 1, aug.n_views, "views"))
        return train_lora(pipe, views, db, folder,
                          progress=lambda s, n, loss: progress(StageProgress("fine-tune", s, n, f"loss {loss:.4f}")))


def cartoonize(cfg, selfie: Image.Image, face: Box | None, portrait: Image.Image, scorer, progress,
               cache_dir: Path) -> tuple[Image.Image, dict]:
    """Augment → DreamBooth LoRA (cached) → candidates → the chosen cartoon at 512 px, and its record.

    `cfg` is the pipeline's StickerConfig; `progress` takes pedit.stickers.progress.StageProgress events.
    """
    import hashlib

    import torch

    from pedit.stickers.augment import AugmentConfig
    from pedit.stickers.dreambooth import DreamBoothConfig, cache_key
    from pedit.stickers.progress import StageProgress

    device = cfg.device or ("cuda" if torch.cuda.is_available() else "cpu")
    pipe = load_base_pipeline(cfg.base, cfg.allow_pickle, device)
    size = pipe.unet.config.sample_size * pipe.vae_scale_factor
    db = DreamBoothConfig(steps=cfg.train_steps, rank=cfg.lora_rank, prior_preservation=cfg.prior_preservation,
                          seed=cfg.seed)
    aug = AugmentConfig(n_views=cfg.views, size=size, seed=cfg.seed)
    selfie_sha = hashlib.sha256(Path(cfg.selfie).read_bytes()).hexdigest()
    key = cache_key(selfie_sha, base_content(cfg.base), db, {"augment": asdict(aug)})
    folder = cache_dir / "dreambooth" / key
    lora = subject_lora(pipe, selfie, face, aug, db, folder, progress)
    pipe.load_lora_weights(lora)

    prompt = cartoon_prompt(cfg.style, db.subject)
    progress(StageProgress("cartoonize", 0, cfg.candidates, "candidates"))
    candidates = draw_candidates(pipe, prompt, cfg.candidates, cfg.cartoon_steps, cfg.seed,
                                 lambda i, n: progress(StageProgress("cartoonize", i, n, "candidates")))
    scores = score_candidates(candidates, np.asarray(portrait.convert("RGB")), scorer)
    chosen = choose(scores, cfg.pick)
    record = {"prompt": prompt, "negative_prompt": NEGATIVE_PROMPT, "steps": cfg.cartoon_steps, "candidates": scores,
              "picked": chosen, "picked_by": "--pick" if cfg.pick is not None else "score",
              "lora": {"key": key, "folder": str(lora), "dreambooth": db.weights_key(), "augment": asdict(aug)}}
    image = candidates[chosen][1].convert("RGB").resize((512, 512), Image.Resampling.LANCZOS)
    return image, record
