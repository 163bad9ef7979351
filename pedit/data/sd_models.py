"""The networks of the SD gen-pairs source: a Stable Diffusion base, an OpenPose ControlNet, an
identity encoder (paper §3.2), loaded and checked against each other before any work starts.

Identity: diffusers' IP-Adapter loading (`load_ip_adapter`; default the face variant,
h94/IP-Adapter `models/ip-adapter-full-face_sd15.safetensors`). `IdentityEncoder` is the seam for
the paper's choice, an ELITE-style encoder that turns a face into word embeddings: such an encoder
returns `IdentityTerms(tokens=...)` (appended to the prompt embeddings) instead of
`IdentityTerms(image_embeds=...)` (fed to the IP-Adapter's attention), and nothing else changes.

This module knows nothing of the sampler or Eq. 2; it gives tensors and checks shapes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from pedit.errors import ModelError, PeditError
from pedit.files import IMAGE_SUFFIXES, image_files

SD_PARTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")


class IdentityError(PeditError):
    """An identity folder that cannot be used (missing, no photos, no faces)."""


@dataclass
class SDParts:
    unet: object
    vae: object
    text_encoder: object
    tokenizer: object
    scheduler_config: dict
    controlnet: object | None
    pipe: object | None  # the diffusers pipeline that owns the IP-Adapter (its image encoder), or None
    source: str  # the base id or folder

    def vae_fp32(self):
        """An fp32 copy of the VAE, made the first time an fp16 decode overflows (pedit.vae)."""
        if getattr(self, "_vae32", None) is None:
            from pedit.vae import fp32_copy

            self._vae32 = fp32_copy(self.vae)
        return self._vae32


def _load(cls, source: str, what: str, allow_pickle: bool, **kwargs):
    try:
        return cls.from_pretrained(source, use_safetensors=None if allow_pickle else True, **kwargs)
    except (OSError, ValueError, KeyError, TypeError) as e:
        hint = " (weights only as .bin/.pt? pass --allow-pickle for trusted files)" if not allow_pickle else ""
        raise ModelError(f"Could not load the {what} from {source}: {type(e).__name__}: {str(e).splitlines()[0]}{hint}") from None


def check_sd_layout(base: str) -> None:
    """A local base folder must be a Stable Diffusion (text-to-image) layout: refuse early, clearly."""
    root = Path(base)
    if not root.exists():
        return  # a hub id: from_pretrained says what is wrong
    missing = [p for p in ("model_index.json", *SD_PARTS) if not (root / p).exists()]
    if missing:
        raise ModelError(f"{base} is not a Stable Diffusion base folder: {', '.join(missing)} missing "
                         f"(expected model_index.json and {', '.join(p + '/' for p in SD_PARTS)}).")
    try:
        unet_cfg = json.loads((root / "unet" / "config.json").read_text())
    except (OSError, ValueError) as e:
        raise ModelError(f"{root / 'unet' / 'config.json'} is unreadable ({e}).") from None
    if unet_cfg.get("in_channels") != 4 or unet_cfg.get("out_channels", 4) != 4:
        raise ModelError(f"{base}: the U-Net takes {unet_cfg.get('in_channels')} input channels; gen-pairs needs a "
                         "text-to-image Stable Diffusion base (4), not an MCDM, inpainting or InstructPix2Pix model.")


def check_controlnet(controlnet, unet, where: str) -> None:
    """A ControlNet fits a base when its input, widths and cross-attention width match the U-Net's."""
    c, u = controlnet.config, unet.config
    problems = [f"{k} {getattr(c, k)} vs the base's {getattr(u, k)}"
                for k in ("in_channels", "cross_attention_dim", "block_out_channels")
                if tuple(np.atleast_1d(getattr(c, k))) != tuple(np.atleast_1d(getattr(u, k)))]
    if problems:
        raise ModelError(f"ControlNet {where} does not fit the base: {'; '.join(problems)}. "
                         "Use a ControlNet trained for this base (SD 1.x: lllyasviel/sd-controlnet-openpose).")
    if c.conditioning_channels != 3:
        raise ModelError(f"ControlNet {where} takes {c.conditioning_channels}-channel conditions; a pose image has 3.")


def load_sd_parts(base: str, controlnet: str | None, ip_adapter: tuple[str, str, str, str] | None, ip_scale: float,
                  device, dtype, allow_pickle: bool = False) -> SDParts:
    """Load and cross-check base, ControlNet and IP-Adapter (`(repo, subfolder, weight_name, image_encoder_folder)`)."""
    import diffusers
    import transformers
    from diffusers import AutoencoderKL, ControlNetModel, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    # diffusers/transformers print bars and notes while loading; pedit reports its own progress.
    diffusers.utils.logging.set_verbosity_error()
    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    check_sd_layout(base)
    unet = _load(UNet2DConditionModel, base, "U-Net", allow_pickle, subfolder="unet")
    if unet.config.in_channels != 4:
        raise ModelError(f"{base}: the U-Net takes {unet.config.in_channels} channels; gen-pairs needs a text-to-image SD base.")
    vae = _load(AutoencoderKL, base, "VAE", allow_pickle, subfolder="vae")
    text_encoder = _load(CLIPTextModel, base, "text encoder", allow_pickle, subfolder="text_encoder")
    try:
        tokenizer = CLIPTokenizer.from_pretrained(base, subfolder="tokenizer")
    except (OSError, ValueError) as e:
        raise ModelError(f"Could not load the tokenizer from {base}: {e}") from None
    if text_encoder.config.hidden_size != unet.config.cross_attention_dim:
        raise ModelError(f"{base}: text encoder width {text_encoder.config.hidden_size} ≠ the U-Net's cross-attention "
                         f"width {unet.config.cross_attention_dim}.")
    from diffusers import DDIMScheduler

    try:
        scheduler_config = dict(DDIMScheduler.load_config(base, subfolder="scheduler"))
    except (OSError, ValueError) as e:
        raise ModelError(f"Could not load the scheduler config from {base}: {e}") from None
    cnet = None
    if controlnet is not None:
        cnet = _load(ControlNetModel, controlnet, "ControlNet", allow_pickle)
        check_controlnet(cnet, unet, controlnet)
    pipe = None
    if ip_adapter is not None:
        pipe = _with_ip_adapter(unet, vae, text_encoder, tokenizer, ip_adapter, ip_scale, scheduler_config)
    for net in (unet, vae, text_encoder, cnet, pipe and pipe.image_encoder):
        if net is not None:
            net.to(device=device, dtype=dtype).eval().requires_grad_(False)
    return SDParts(unet, vae, text_encoder, tokenizer, scheduler_config, cnet, pipe, base)


def _with_ip_adapter(unet, vae, text_encoder, tokenizer, ip_adapter, scale: float, scheduler_config: dict):
    """A StableDiffusionPipeline shell over our networks, used only for `load_ip_adapter` (it
    installs the adapter's attention processors into `unet`) and its image encoder."""
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    repo, subfolder, weight_name, image_encoder_folder = ip_adapter
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=DDIMScheduler.from_config(scheduler_config), safety_checker=None, feature_extractor=None,
                                   image_encoder=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    try:
        pipe.load_ip_adapter(repo, subfolder=subfolder, weight_name=weight_name, image_encoder_folder=image_encoder_folder)
    except (OSError, ValueError, KeyError, RuntimeError) as e:
        raise ModelError(f"Could not load the IP-Adapter {repo}/{subfolder}/{weight_name}: {type(e).__name__}: "
                         f"{str(e).splitlines()[0]}") from None
    pipe.set_ip_adapter_scale(scale)
    _check_ip_adapter_fits(pipe, f"{repo}/{subfolder}/{weight_name}")
    return pipe


@torch.no_grad()
def _check_ip_adapter_fits(pipe, where: str) -> None:
    """The adapter's image encoder must feed its projection: one grey image through both, so an
    encoder of another width (ViT-bigG beside an SD 1.5 ViT-H adapter) is one Error line at load,
    not a raw shape error in the first batch. The attention weights were checked by load_ip_adapter."""
    try:
        terms = IPAdapterIdentity(pipe).encode(np.full((64, 64, 3), 127, np.uint8))  # (1, 1, T, D) or (1, 1, D)
        pipe.unet.encoder_hid_proj([terms.image_embeds.to(pipe.unet.dtype)])
    except RuntimeError as e:
        enc = pipe.image_encoder.config
        raise ModelError(f"IP-Adapter {where} does not fit its image encoder (hidden size {enc.hidden_size}, "
                         f"projection {enc.projection_dim}): {str(e).splitlines()[0]}. Use the image_encoder folder "
                         "the adapter was trained with (SD 1.5 adapters: models/image_encoder).") from None


# ---------------------------------------------------------------------------------------------
# Identity


@dataclass
class IdentityTerms:
    """What an identity adds to a U-Net call, per identity: IP-Adapter image embeddings (the
    maintained CLIP-based choice) or word embeddings appended to the prompt (ELITE, the paper's)."""

    # (1, 1, T, D), or (1, 1, D) for plain IP-Adapter: (batch, num_images, ...) as diffusers'
    # prepare_ip_adapter_image_embeds gives them; the projection layers reshape by those two axes
    image_embeds: torch.Tensor | None = None
    null_image_embeds: torch.Tensor | None = None  # the unconditional row's
    tokens: torch.Tensor | None = None  # (1, K, D_text): an ELITE-style encoder's words


class IdentityEncoder(Protocol):
    name: str

    def encode(self, face_rgb: np.ndarray) -> IdentityTerms: ...


class IPAdapterIdentity:
    """Face crop → IP-Adapter image embeddings through the pipeline's CLIP image encoder."""

    name = "ip-adapter"

    def __init__(self, pipe):
        self.pipe = pipe

    @torch.no_grad()
    def encode(self, face_rgb: np.ndarray) -> IdentityTerms:
        from diffusers.models.embeddings import ImageProjection
        from PIL import Image

        layer = self.pipe.unet.encoder_hid_proj.image_projection_layers[0]
        hidden = not isinstance(layer, ImageProjection)  # the face variants read the penultimate hidden states
        pos, neg = self.pipe.encode_image(Image.fromarray(face_rgb), self.pipe.unet.device, 1, hidden)
        # (1, T, D) or (1, D) → (1, num_images = 1, ...). Without the axis only the full-face MLP
        # happened to work; the Resampler (plus-face) and ImageProjection (plain) need it.
        return IdentityTerms(image_embeds=pos.unsqueeze(1), null_image_embeds=neg.unsqueeze(1))


def _face_boxes(rgb: np.ndarray) -> list[tuple[int, int, int, int]]:
    """(x0, y0, x1, y1) of the faces in `rgb` (pedit.faces' default: dlib HOG, or Haar without dlib)."""
    from pedit.faces import get_detector

    return [f.box for f in get_detector("default").detect(rgb)]


def face_crop(rgb: np.ndarray, box, size: int = 224, margin: float = 0.4) -> np.ndarray:
    """A square crop around `box` with `margin` (in face widths) on each side, resized to `size`."""
    from PIL import Image

    x0, y0, x1, y1 = box
    side = max(x1 - x0, y1 - y0) * (1 + 2 * margin)
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    crop = Image.fromarray(rgb).crop((round(cx - side / 2), round(cy - side / 2), round(cx + side / 2), round(cy + side / 2)))
    return np.array(crop.resize((size, size), Image.LANCZOS))


def identity_faces(folder: str | Path, read_photo, progress=None) -> list[tuple[str, np.ndarray]]:
    """(file name, face crop) of each photo in `folder` with a face (the largest one), sorted by name.
    `read_photo(path) -> (H, W, 3) uint8` decodes a photo (the CLI passes pedit.photos' loader,
    from the wing above this one)."""
    root = Path(folder)
    if not root.is_dir():
        raise IdentityError(f"Identity folder {root} does not exist.")
    if read_photo is None:
        raise IdentityError("Identity photos need a photo reader (read_photo); the CLI passes pedit.photos' loader.")
    files = image_files(root)
    if not files:
        raise IdentityError(f"Identity folder {root} has no photos ({', '.join(IMAGE_SUFFIXES)}).")
    faces = []
    for i, path in enumerate(files):
        try:
            rgb = np.asarray(read_photo(path))
        except PeditError:
            continue  # unreadable photos are skipped; none usable at all is the error below
        boxes = _face_boxes(rgb)
        if boxes:
            largest = max(boxes, key=lambda b: (b[2] - b[0]) * (b[3] - b[1]))
            faces.append((path.name, face_crop(rgb, largest)))
        if progress is not None:
            progress(i + 1, len(files))
    if not faces:
        raise IdentityError(f"Identity folder {root}: none of its {len(files)} photo(s) shows a face a detector can "
                            "find; give frontal portraits.")
    return faces
