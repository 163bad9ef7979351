"""The Multi-Conditioned Diffusion Model (paper §3.3, Fig. 5) and its frozen companions.

Conditions, named as everywhere in pedit (docs/design-notes.md, "Conditions and the model"):
- `c_s`  spatial: E(x_A), the VAE posterior mode times the VAE scaling factor, (B, 4, h, w).
         Concatenated to the U-Net input: `cat([z_t, c_s])`, 8 channels.
- `c_im` image: ImageProjector([E(x_A), CLIP_im(x_A)]), (B, K, D) with K = 1 + P CLIP tokens.
- `c_p`  text: the frozen text encoder's embedding of the prompt, (B, 77, D).
Cross-attention context = `cat([c_p, c_im], tokens)`, a fixed (B, 77 + K, D), so exported engines
have static shapes. Null values: c_s → zeros, c_im → zeros at the context level, c_p → the
embedding of the empty prompt.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn


CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
PROMPT_LENGTH = 77


class ImageProjector(ModelMixin, ConfigMixin):
    """c_im = MLP([E(x_A), CLIP_im(x_A)]) → K tokens in the text-embedding width (trained from scratch).

    Each CLIP patch token is concatenated with the c_s vector at its grid position (c_s adaptively
    average-pooled to the patch grid), the class token with the mean of c_s; then
    Linear → GELU → Linear → LayerNorm, trained from scratch.
    """

    @register_to_config
    def __init__(self, vision_width: int, text_width: int, latent_channels: int = 4, num_tokens: int = 257):
        super().__init__()
        self.grid = int(round((num_tokens - 1) ** 0.5))
        if self.grid * self.grid != num_tokens - 1:
            raise ValueError(f"num_tokens must be 1 + a square number of patches, got {num_tokens}")
        self.mlp = nn.Sequential(
            nn.Linear(vision_width + latent_channels, text_width),
            nn.GELU(),
            nn.Linear(text_width, text_width),
        )
        self.norm = nn.LayerNorm(text_width)

    def forward(self, c_s: torch.Tensor, clip_tokens: torch.Tensor) -> torch.Tensor:
        # c_s: (B, 4, h, w); clip_tokens: (B, 1 + P, Dv) → (B, 1 + P, D)
        patches = F.adaptive_avg_pool2d(c_s, self.grid).flatten(2).transpose(1, 2)  # (B, P, 4)
        pooled = torch.cat([c_s.mean(dim=(2, 3))[:, None], patches], dim=1)  # (B, 1 + P, 4)
        return self.norm(self.mlp(torch.cat([clip_tokens, pooled.to(clip_tokens.dtype)], dim=-1)))


def widen_conv_in(unet, extra_channels: int = 4):
    """Give the U-Net `extra_channels` more input channels for c_s (paper §3.3, change (1)).

    The pretrained weights go to channels 0-3 and the new channels start at zero, so the widened
    model with c_s = 0 computes exactly what the base did. The bias is copied too: the diffusers
    InstructPix2Pix training script leaves it randomly initialised, which breaks that identity.
    """
    old = unet.conv_in
    new = nn.Conv2d(
        old.in_channels + extra_channels, old.out_channels, old.kernel_size, old.stride, old.padding
    ).to(device=old.weight.device, dtype=old.weight.dtype)
    with torch.no_grad():
        new.weight.zero_()
        new.weight[:, : old.in_channels] = old.weight
        new.bias.copy_(old.bias)
    unet.conv_in = new
    unet.register_to_config(in_channels=new.in_channels)
    return unet


class MCDM(nn.Module):
    """The trainable part: the 8-channel U-Net and the image projector."""

    def __init__(self, unet, image_projector: ImageProjector):
        super().__init__()
        self.unet = unet
        self.image_projector = image_projector

    @property
    def num_image_tokens(self) -> int:
        return self.image_projector.config.num_tokens

    @property
    def dtype(self) -> torch.dtype:
        return self.unet.dtype

    @property
    def distilled(self) -> bool:
        """A guidance-distilled student (pedit.model.distilled): its U-Net embeds the scales."""
        from pedit.model.distilled import is_student

        return is_student(self.unet)

    @property
    def context_length(self) -> int:
        """Tokens of a row's context: 77 + K, and one more (the scale token) for a distilled student."""
        return PROMPT_LENGTH + self.num_image_tokens + int(self.distilled)

    def forward(self, z_in, t, context, image_inputs=None, scales=None):
        """eps (N, 4, h, w) from z_in (N, 8, h, w) = cat([z_t, c_s]).

        Inference: `context` is the full (N, 77 + K, D) = cat([c_p, c_im]) (a distilled student's:
        (N, 77 + K + 1, D), the scale token last, pedit.model.distilled).
        Training: `context` is c_p (N, 77, D) and `image_inputs` = (c_s (N, 4, h, w),
        clip_tokens (N, 1 + P, Dv), keep_im (N, 1, 1)); c_im is computed here, so one forward
        touches every trainable parameter (what DistributedDataParallel needs). A student in
        training gets its rows' scales (N, 3) as `scales`.
        """
        if image_inputs is not None:
            c_s, clip_tokens, keep_im = image_inputs
            c_im = self.image_projector(c_s, clip_tokens) * keep_im  # (N, K, D); dropped → zeros
            context = torch.cat([context, c_im.to(context.dtype)], dim=1)
        elif context.shape[1] != self.context_length:  # a student's rows without their scale token, or a
            # teacher's with one: the U-Net would read a CLIP token as the scales, or the scales as a token
            raise ValueError(f"context of {context.shape[1]} tokens for an MCDM that reads {self.context_length} "
                             f"({'77 + K + the scale token' if self.distilled else '77 + K'})")
        from pedit.model.distilled import scale_token, unet_eps

        if scales is not None:  # a student in training: its rows' scales become their scale token
            context = torch.cat([context, scale_token(scales, context.shape[0], context.shape[-1], context)], dim=1)
        return unet_eps(self.unet, z_in, t, context)


@torch.no_grad()
def encode_prompts(tokenizer, text_encoder, prompts: list[str], device):
    """c_p for each prompt: (B, 77, D), the text encoder's last hidden state over 77 padded tokens."""
    ids = tokenizer(
        list(prompts), padding="max_length", max_length=PROMPT_LENGTH, truncation=True, return_tensors="pt"
    ).input_ids.to(device)
    return text_encoder(ids).last_hidden_state


@dataclass
class FrozenParts:
    """VAE, text encoder + tokenizer, CLIP vision encoder and the noise schedule; never trained."""

    vae: object
    text_encoder: object
    tokenizer: object
    image_encoder: object
    scheduler_config: dict
    image_mean: tuple = CLIP_MEAN
    image_std: tuple = CLIP_STD

    def to(self, device, dtype=None):
        for m in (self.vae, self.text_encoder, self.image_encoder):
            m.to(device=device, dtype=dtype)
        return self

    @property
    def device(self):
        return self.vae.device

    @property
    def dtype(self):
        return self.vae.dtype

    @property
    def scaling_factor(self) -> float:
        return float(self.vae.config.scaling_factor)

    @property
    def latent_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def num_image_tokens(self) -> int:
        cfg = self.image_encoder.config
        return 1 + (cfg.image_size // cfg.patch_size) ** 2

    @torch.no_grad()
    def encode_latent(self, x):
        """c_s = E(x) · scaling factor. x: (B, 3, R, R) in [-1, 1] → (B, 4, R/f, R/f)."""
        x = x.to(device=self.device, dtype=self.dtype)
        return self.vae.encode(x).latent_dist.mode() * self.scaling_factor

    @torch.no_grad()
    def decode(self, z):
        """(B, 4, h, w) scaled latent → (B, 3, R, R) in [-1, 1].

        In fp16 the SD VAE decoder can overflow to inf/NaN (black or speckled images): then the
        latent is decoded again by an fp32 copy of the VAE, made once, and the caller gets its dtype.
        """
        from pedit.vae import decode_latents

        return decode_latents(self.vae, z, self.vae_fp32, self.dtype, self.scaling_factor)

    def vae_fp32(self):
        """An fp32 copy of the VAE on its device, for reduced-precision runs that overflowed."""
        if getattr(self, "_vae32", None) is None:
            from pedit.vae import fp32_copy

            self._vae32 = fp32_copy(self.vae)
        return self._vae32

    def encode_prompts(self, prompts: list[str]):
        """c_p for each prompt: (B, 77, D). The empty prompt gives the null c_p."""
        return encode_prompts(self.tokenizer, self.text_encoder, prompts, self.device)

    @torch.no_grad()
    def clip_tokens(self, x):
        """CLIP_im(x): last hidden state (B, 1 + P, Dv). x: (B, 3, R, R) in [-1, 1]."""
        size = self.image_encoder.config.image_size
        x = F.interpolate(x.float(), size=(size, size), mode="bicubic", antialias=True, align_corners=False)
        mean = torch.tensor(self.image_mean, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(self.image_std, device=x.device).view(1, 3, 1, 1)
        x = ((x + 1) / 2 - mean) / std
        return self.image_encoder(pixel_values=x.to(device=self.device, dtype=self.dtype)).last_hidden_state
