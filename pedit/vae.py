"""Decoding latents safely: one helper for every VAE decode that may run in reduced precision.

The Stable Diffusion VAE decoder overflows in fp16 on some latents (inf/NaN: black or speckled
images). `decode_latents` then decodes the batch again with an fp32 copy of the VAE. Shared (below
every wing) because the edit path (pedit.model.mcdm.FrozenParts.decode) and gen-pairs
(pedit.data.sd_pairs) both decode, and the data wing may not import the model wing.
"""

from __future__ import annotations

from typing import Callable

import torch


def decode_latents(vae, z: torch.Tensor, fp32_vae: Callable[[], object], dtype: torch.dtype | None = None,
                   scaling_factor: float | None = None) -> torch.Tensor:
    """(B, 4, h, w) scaled latent → (B, 3, H, W) clamped to [-1, 1], in `dtype` (default the VAE's).

    `fp32_vae()` gives the fp32 copy used when a reduced-precision decode is not finite (made only
    then; callers keep it between calls). The result can still hold NaN where even fp32 failed (a
    NaN latent): callers that keep images must check (gen-pairs rejects such a canvas).
    """
    dtype = dtype or vae.dtype
    scaling_factor = vae.config.scaling_factor if scaling_factor is None else scaling_factor
    x = vae.decode(z.to(dtype) / scaling_factor).sample
    if dtype != torch.float32 and not torch.isfinite(x).all():
        x = fp32_vae().decode(z.float() / scaling_factor).sample.to(dtype)
    return x.clamp(-1, 1)


def fp32_copy(vae):
    """An fp32 copy of `vae` on its device."""
    import copy

    return copy.deepcopy(vae).float()
