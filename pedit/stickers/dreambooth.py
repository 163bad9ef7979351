"""DreamBooth with LoRA (paper §4): teach a Stable Diffusion base one subject from augmented views.

The LoRA lives on the U-Net's attention projections (peft, `unet.add_adapter`) and is saved and
loaded through diffusers' LoRA format (`save_lora_weights` / `pipe.load_lora_weights`), so any
diffusers pipeline can use it. A rare token names the subject ("a photo of sks person"); with prior
preservation, images of the class drawn by the base itself keep the class from drifting.

The result is cached in a folder named by a hash of the selfie and every setting that changes the
weights: a second run (another style, other expressions) skips training. Training writes
checkpoints (LoRA, optimizer, step) and resumes from the newest; the noise of step i depends on
(seed, i) only, so a resumed run ends with the same weights as an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from pedit.errors import ConfigError
from pedit.files import write_atomic
from pedit.noise import randint, randn

LORA_FILE = "pytorch_lora_weights.safetensors"  # diffusers' default name, found by load_lora_weights
TARGET_MODULES = ("to_q", "to_k", "to_v", "to_out.0")


@dataclass(frozen=True)
class DreamBoothConfig:
    steps: int = 400
    rank: int = 4
    learning_rate: float = 1e-4
    batch_size: int = 1
    token: str = "sks"  # rare in CLIP's vocabulary, so it carries little meaning of its own
    class_noun: str = "person"
    prior_preservation: bool = False
    prior_weight: float = 1.0
    class_images: int = 50
    class_steps: int = 25  # sampling steps for each class image
    checkpoint_every: int = 100
    keep_checkpoints: int = 2
    seed: int = 0

    def __post_init__(self):
        from pedit.validate import check_int, check_number, check_seed

        for name in ("steps", "rank", "batch_size", "class_images", "class_steps", "checkpoint_every", "keep_checkpoints"):
            check_int(name, getattr(self, name), 1)
        check_number("learning_rate", self.learning_rate, 0, lo_open=True)
        check_number("prior_weight", self.prior_weight, 0)
        check_seed("seed", self.seed)
        if not isinstance(self.prior_preservation, bool):
            raise ConfigError(f"prior_preservation must be True or False, got {self.prior_preservation!r}")
        for name in ("token", "class_noun"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value.strip():
                raise ConfigError(f"{name} must be a non-empty word, got {value!r}")

    @property
    def instance_prompt(self) -> str:
        return f"a photo of {self.token} {self.class_noun}"

    @property
    def class_prompt(self) -> str:
        return f"a photo of a {self.class_noun}"

    @property
    def subject(self) -> str:
        """How prompts name the subject."""
        return f"{self.token} {self.class_noun}"

    def weights_key(self) -> dict:
        """The fields that change the trained weights (not how often checkpoints are written)."""
        d = asdict(self)
        for name in ("checkpoint_every", "keep_checkpoints"):
            d.pop(name)
        if not self.prior_preservation:
            for name in ("prior_weight", "class_images", "class_steps"):
                d.pop(name)
        return d


def cache_key(selfie_sha256: str, base: str, cfg: DreamBoothConfig, extra: dict | None = None) -> str:
    """A short hash naming the LoRA of this selfie, base (its content hash: cartoon.base_content) and settings."""
    blob = json.dumps({"selfie": selfie_sha256, "base": base, "dreambooth": cfg.weights_key(), **(extra or {})},
                      sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _to_tensor(images: Sequence[Image.Image], size: int) -> torch.Tensor:
    """RGB images → (N, 3, size, size) in [-1, 1]."""
    arr = np.stack([np.asarray(im.convert("RGB").resize((size, size), Image.Resampling.LANCZOS)) for im in images])
    return torch.from_numpy(arr).permute(0, 3, 1, 2).float() / 127.5 - 1


@torch.no_grad()
def _latents(vae, images: torch.Tensor, batch: int = 8) -> torch.Tensor:
    """Scaled VAE posterior modes (N, 4, h, w): the deterministic choice, as the MCDM's c_s."""
    out = [vae.encode(images[i:i + batch].to(vae.device, vae.dtype)).latent_dist.mode() for i in range(0, len(images), batch)]
    return torch.cat(out).float() * vae.config.scaling_factor


@torch.no_grad()
def _prompt_embeds(pipe, prompt: str) -> torch.Tensor:
    ids = pipe.tokenizer([prompt], padding="max_length", max_length=pipe.tokenizer.model_max_length,
                         truncation=True, return_tensors="pt").input_ids.to(pipe.device)
    return pipe.text_encoder(ids)[0].float()  # (1, 77, D)


def _class_images(pipe, cfg: DreamBoothConfig, folder: Path) -> list[Image.Image]:
    """The prior-preservation set, drawn by the base and kept in the cache (drawing is the slow part)."""
    folder.mkdir(parents=True, exist_ok=True)
    images = []
    for i in range(cfg.class_images):
        path = folder / f"{i:04d}.png"
        if not path.exists():
            g = torch.Generator().manual_seed(cfg.seed * 100_003 + i)
            image = pipe(cfg.class_prompt, num_inference_steps=cfg.class_steps, generator=g).images[0]
            write_atomic(path, lambda f: image.save(f, format="PNG"), overwrite=True)  # temps of killed runs get cleaned
        with Image.open(path) as im:
            images.append(im.convert("RGB"))
    return images


def _checkpoints(folder: Path) -> list[Path]:
    return sorted(p for p in folder.glob("step-*") if (p / "state.json").exists())


def _save_checkpoint(folder: Path, unet, optimizer, step: int, keep: int) -> None:
    from peft.utils import get_peft_model_state_dict
    from safetensors.torch import save_file

    target = folder / f"step-{step:07d}"
    tmp = folder / f".step-{step:07d}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file({k: v.detach().cpu().contiguous() for k, v in get_peft_model_state_dict(unet).items()}, tmp / "lora.safetensors")
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    (tmp / "state.json").write_text(json.dumps({"step": step}))
    shutil.rmtree(target, ignore_errors=True)
    os.replace(tmp, target)
    for old in _checkpoints(folder)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


def _resume(folder: Path, unet, optimizer) -> int:
    """Load the newest checkpoint into the adapter and optimizer; the step it reached (0: none)."""
    from peft.utils import set_peft_model_state_dict
    from safetensors.torch import load_file

    found = _checkpoints(folder)
    if not found:
        return 0
    latest = found[-1]
    set_peft_model_state_dict(unet, load_file(latest / "lora.safetensors", device=str(unet.device)))
    # weights_only: the file is ours, but a cache folder is still not a place to run pickled code from.
    optimizer.load_state_dict(torch.load(latest / "optimizer.pt", map_location=unet.device, weights_only=True))
    return int(json.loads((latest / "state.json").read_text())["step"])


def train_lora(pipe, views: Sequence[Image.Image], cfg: DreamBoothConfig, folder: Path,
               progress: Callable[[int, int, float | None], None] = lambda step, total, loss: None) -> Path:
    """Train (or find cached) the subject LoRA for `pipe`'s U-Net; returns the folder holding LORA_FILE.

    `folder` is this LoRA's cache folder (named by `cache_key`). The pipeline's U-Net is left as it
    was (the adapter is removed after saving); load the result with `pipe.load_lora_weights`.
    """
    from diffusers import DDPMScheduler, StableDiffusionPipeline
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    folder = Path(folder)
    lora_dir = folder / "lora"
    if (lora_dir / LORA_FILE).exists():
        return lora_dir
    folder.mkdir(parents=True, exist_ok=True)
    unet, vae = pipe.unet, pipe.vae
    size = unet.config.sample_size * pipe.vae_scale_factor

    class_latents = class_embeds = None
    if cfg.prior_preservation:  # drawn by the base before the adapter exists
        class_latents = _latents(vae, _to_tensor(_class_images(pipe, cfg, folder / "class_images"), size))
        class_embeds = _prompt_embeds(pipe, cfg.class_prompt)
    latents = _latents(vae, _to_tensor(views, size))  # (N, 4, h, w)
    embeds = _prompt_embeds(pipe, cfg.instance_prompt)  # (1, 77, D)
    noise_scheduler = DDPMScheduler.from_config(pipe.scheduler.config)

    unet.requires_grad_(False)
    with torch.random.fork_rng(devices=[]):  # the adapter's random init from the seed, global RNG untouched
        torch.manual_seed(cfg.seed)
        unet.add_adapter(LoraConfig(r=cfg.rank, lora_alpha=cfg.rank, init_lora_weights="gaussian",
                                    target_modules=list(TARGET_MODULES)))
    try:
        params = [p for p in unet.parameters() if p.requires_grad]
        for p in params:
            p.data = p.data.float()
        optimizer = torch.optim.AdamW(params, lr=cfg.learning_rate)
        checkpoints = folder / "checkpoints"
        start = _resume(checkpoints, unet, optimizer)
        unet.train()
        for step in range(start, cfg.steps):
            g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)  # step i's draws: (seed, i) only
            loss = _loss(unet, noise_scheduler, latents, embeds, cfg.batch_size, g)
            if class_latents is not None:
                loss = loss + cfg.prior_weight * _loss(unet, noise_scheduler, class_latents, class_embeds, cfg.batch_size, g)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            done = step + 1
            if done % cfg.checkpoint_every == 0 and done < cfg.steps:
                _save_checkpoint(checkpoints, unet, optimizer, done, cfg.keep_checkpoints)
            progress(done, cfg.steps, float(loss.detach()))
        unet.eval()
        layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(unet))
        tmp = folder / ".lora.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        StableDiffusionPipeline.save_lora_weights(tmp, unet_lora_layers=layers, safe_serialization=True)
        (tmp / "dreambooth.json").write_text(json.dumps({**asdict(cfg), "instance_prompt": cfg.instance_prompt,
                                                         "views": len(views), "resolution": size}, indent=2))
        seal_lora(tmp, folder.name)
        os.replace(tmp, lora_dir)
        shutil.rmtree(checkpoints, ignore_errors=True)
    finally:
        unet.delete_adapters("default")
        unet.eval()
    return lora_dir


ENTRY = "entry.json"  # the LoRA folder's record: its cache key and its files' content hash (pedit.cache.seal)
LORA_FILES = (LORA_FILE, "dreambooth.json")


def seal_lora(lora_dir: Path, key: str) -> None:
    """Record, in the finished LoRA folder, the key it was trained for and its files' content hash: what
    cartoon.cached_lora_problem checks before a cached LoRA is used (issue 27)."""
    from pedit.cache import seal

    (lora_dir / ENTRY).write_text(json.dumps({"key": key, "files": list(LORA_FILES),
                                              "content": seal(lora_dir, list(LORA_FILES))}))


def _loss(unet, noise_scheduler, latents: torch.Tensor, embeds: torch.Tensor, batch: int, g: torch.Generator):
    """The denoising loss on a random batch: eps (or v) prediction at a random timestep."""
    import torch.nn.functional as F

    # Every draw on g's device (the CPU) in a fixed order, then moved to the latents' device: the
    # same seed trains the same LoRA on the CPU and on a GPU, and no CPU tensor meets a CUDA one.
    dev = latents.device
    idx = randint(0, len(latents), (batch,), g, device=dev)
    z_0 = latents[idx]  # (B, 4, h, w)
    noise = randn(z_0.shape, g, like=z_0)
    t = randint(0, noise_scheduler.config.num_train_timesteps, (batch,), g, device=dev)
    z_t = noise_scheduler.add_noise(z_0, noise, t)
    if noise_scheduler.config.prediction_type == "v_prediction":
        target = noise_scheduler.get_velocity(z_0, noise, t)
    else:
        target = noise
    device, dtype = unet.device, unet.dtype
    # bf16 autocast on CUDA only (autocast refuses device types such as `meta`, which the tests use)
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()
    with amp:
        pred = unet(z_t.to(device, dtype), t.to(device), embeds.expand(batch, -1, -1).to(device, dtype)).sample
    return F.mse_loss(pred.float(), target.to(device).float())
