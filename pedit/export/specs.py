"""One export spec per network (docs/design-notes.md, "Export"): names, shapes, batch profiles, the torch module.

A spec is everything an exporter or an engine builder needs to know about a network from the
outside; nothing here exports or runs anything. Shapes hold ints and the symbol "B" (the one
dynamic axis, the batch). Profiles are (min, opt, max) batch sizes: TensorRT builds one
optimisation profile each, ONNX keeps the batch axis dynamic.

    unet             z_in (B, 8, h, w), t (B,) one timestep a row, context (B, 77 + K, D) → eps (B, 4, h, w)
                     profiles: "sampler" = the 5-row guidance batch of one image
                     (pedit.edit.guidance), "mask" = up to 5 rows x N noise draws (the editing mask
                     of §3.4 sends 2 rows a draw)
    image_projector  clip_pixels (B, 3, S, S) (CLIP-normalised), c_s (B, 4, h, w) → c_im (B, K, D):
                     the CLIP image encoder and the MCDM's projector as one network
    text_encoder     input_ids (B, 77) int64 → c_p (B, 77, D)
    vae_encoder      x (B, 3, R, R) in [-1, 1] → c_s (B, 4, h, w), posterior mode x scaling factor
    vae_decoder      z (B, 4, h, w) scaled latent → x (B, 3, R, R) in [-1, 1]
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from pedit.edit.guidance import N_ROWS, PROMPT_ROWS

BATCH = "B"
PROMPT_LENGTH = 77  # CLIP's context length (pedit.model.mcdm.PROMPT_LENGTH, not imported: that pulls diffusers)


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple  # ints and BATCH
    dtype: str = "float32"  # "float32" or "int64"; engines may run float tensors in fp16

    def concrete(self, batch: int) -> tuple[int, ...]:
        return tuple(batch if d == BATCH else int(d) for d in self.shape)


@dataclass(frozen=True)
class NetworkSpec:
    """One exported network. `sources` are the model-folder parts its weights come from (hashed)."""

    name: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    profiles: dict = field(default_factory=dict)  # profile name → (min, opt, max) batch
    sources: tuple[str, ...] = ()

    def __post_init__(self):
        if not self.inputs or not self.outputs:
            raise ValueError(f"{self.name}: a network needs inputs and outputs")
        for pname, (lo, opt, hi) in self.profiles.items():
            if not 1 <= lo <= opt <= hi:
                raise ValueError(f"{self.name}: profile {pname} needs 1 <= min <= opt <= max, got {(lo, opt, hi)}")

    @property
    def export_batch(self) -> int:
        """The batch the graph is traced at: the first profile's opt."""
        return next(iter(self.profiles.values()))[1] if self.profiles else 1

    def describe(self, profiles: bool = True) -> dict:
        """A JSON-able description (stored in the manifest). An ONNX graph's hash leaves the profiles
        out (its batch axis is dynamic: one graph serves any profile); an engine's keeps them."""
        out = {
            "inputs": {t.name: {"shape": list(t.shape), "dtype": t.dtype} for t in self.inputs},
            "outputs": {t.name: {"shape": list(t.shape), "dtype": t.dtype} for t in self.outputs},
        }
        if profiles:
            out["profiles"] = {k: list(v) for k, v in self.profiles.items()}
        return out

    def with_profiles(self, described: dict) -> "NetworkSpec":
        """This spec with the profiles of `described` (a manifest's `spec`): what an engine was built with.

        ValueError when they are not a name → (min, opt, max) mapping of positive batches."""
        import dataclasses

        raw = described.get("profiles") if isinstance(described, dict) else None
        if not isinstance(raw, dict) or not raw:
            raise ValueError(f"{self.name}: no profiles recorded")
        profiles = {}
        for k, v in raw.items():
            if not (isinstance(v, list) and len(v) == 3 and all(type(b) is int for b in v)):
                raise ValueError(f"{self.name}: profile {k!r} is not [min, opt, max], got {v!r}")
            profiles[k] = tuple(v)
        return dataclasses.replace(self, profiles=profiles)  # __post_init__ checks 1 <= min <= opt <= max

    def max_batch(self, profile: str) -> int:
        return self.profiles[profile][2] if profile in self.profiles else 0


@dataclass(frozen=True)
class Dims:
    """The sizes every spec is made of, read from a loaded model."""

    resolution: int  # R
    latent: int  # h = w = R / f
    latent_channels: int
    width: int  # D, the text-embedding width
    image_tokens: int  # K = 1 + P
    clip_size: int  # S
    vocab_size: int
    scale_token: int = 0  # 1 for a guidance-distilled student: its contexts end in the scale token

    @property
    def context_length(self) -> int:
        return PROMPT_LENGTH + self.image_tokens + self.scale_token


def dims_of(model) -> Dims:
    """Dims of a pedit.model.loading.LoadedModel."""
    parts = model.parts
    return Dims(
        resolution=model.resolution,
        latent=model.resolution // parts.latent_factor,
        latent_channels=int(parts.vae.config.latent_channels),
        width=int(parts.text_encoder.config.hidden_size),
        image_tokens=parts.num_image_tokens,
        clip_size=int(parts.image_encoder.config.image_size),
        vocab_size=int(parts.text_encoder.config.vocab_size),
        scale_token=int(bool(getattr(model.mcdm, "distilled", False))),
    )


def network_specs(d: Dims, n_noise: int = 10) -> dict[str, NetworkSpec]:
    """The five specs of an MCDM. `n_noise` sizes the mask profile (5 rows x N draws): the largest
    U-Net call is 5 x draws per mask call x images (pedit.edit.mask.unet_rows)."""
    c, h = d.latent_channels, d.latent
    return {
        "unet": NetworkSpec(
            "unet",
            inputs=(TensorSpec("z_in", (BATCH, 2 * c, h, h)), TensorSpec("t", (BATCH,)),
                    TensorSpec("context", (BATCH, d.context_length, d.width))),
            outputs=(TensorSpec("eps", (BATCH, c, h, h)),),
            # "mask" from 1 row: the mask call is 2 rows a draw (rows 3-4, pedit.edit.mask), so N = 1 or 2
            # sends fewer than 5; its max stays 5 x N, the unit engines_for counts capacity in.
            # a distilled student's step is 2 rows (1 without the mask): its sampler profile is (1, 2, 2)
            profiles={"sampler": (1, PROMPT_ROWS, PROMPT_ROWS) if d.scale_token else (N_ROWS, N_ROWS, N_ROWS),
                      "mask": (1, PROMPT_ROWS * n_noise, N_ROWS * n_noise)},
            sources=("unet",),
        ),
        "image_projector": NetworkSpec(
            "image_projector",
            inputs=(TensorSpec("clip_pixels", (BATCH, 3, d.clip_size, d.clip_size)), TensorSpec("c_s", (BATCH, c, h, h))),
            outputs=(TensorSpec("c_im", (BATCH, d.image_tokens, d.width)),),
            profiles={"image": (1, 1, 4)},
            sources=("image_encoder", "image_projector"),
        ),
        "text_encoder": NetworkSpec(
            "text_encoder",
            inputs=(TensorSpec("input_ids", (BATCH, PROMPT_LENGTH), "int64"),),
            outputs=(TensorSpec("c_p", (BATCH, PROMPT_LENGTH, d.width)),),
            profiles={"prompts": (1, 1, 4)},
            sources=("text_encoder", "tokenizer"),
        ),
        "vae_encoder": NetworkSpec(
            "vae_encoder",
            inputs=(TensorSpec("x", (BATCH, 3, d.resolution, d.resolution)),),
            outputs=(TensorSpec("c_s", (BATCH, c, h, h)),),
            profiles={"image": (1, 1, 4)},
            sources=("vae",),
        ),
        "vae_decoder": NetworkSpec(
            "vae_decoder",
            inputs=(TensorSpec("z", (BATCH, c, h, h)),),
            outputs=(TensorSpec("x", (BATCH, 3, d.resolution, d.resolution)),),
            profiles={"image": (1, 1, 4)},
            sources=("vae",),
        ),
    }


def random_inputs(spec: NetworkSpec, d: Dims, batch: int, seed: int, dtype=None) -> dict:
    """Fresh random inputs for a parity check: values in each input's working range."""
    import torch

    from pedit.noise import rand, randint, randn

    g = torch.Generator().manual_seed(seed)
    out = {}
    for t in spec.inputs:
        shape = t.concrete(batch)
        if t.dtype == "int64":
            out[t.name] = randint(0, d.vocab_size, shape, g)
        elif t.name == "t":
            out[t.name] = randint(0, 1000, shape, g).float()
        elif t.name == "x":
            out[t.name] = rand(shape, g) * 2 - 1
        else:
            out[t.name] = randn(shape, g)
        if dtype is not None and out[t.name].is_floating_point():
            out[t.name] = out[t.name].to(dtype)
    return out


def torch_module(name: str, model):
    """The torch module behind spec `name`, taking the spec's inputs positionally."""
    import torch
    from torch import nn

    from pedit.model.distilled import unet_eps

    mcdm, parts = model.mcdm, model.parts
    sf = parts.scaling_factor
    c = int(parts.vae.config.latent_channels)

    class UNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.unet = mcdm.unet

        def forward(self, z_in, t, context):
            return unet_eps(self.unet, z_in, t, context)  # a student's scale token is split off inside

    class ImageProjector(nn.Module):
        def __init__(self):
            super().__init__()
            self.encoder, self.projector = parts.image_encoder, mcdm.image_projector

        def forward(self, clip_pixels, c_s):
            tokens = self.encoder(pixel_values=clip_pixels).last_hidden_state  # (B, 1 + P, Dv)
            return self.projector(c_s, tokens.to(c_s.dtype))

    class TextEncoder(nn.Module):
        def __init__(self):
            super().__init__()
            self.encoder = parts.text_encoder

        def forward(self, input_ids):
            return self.encoder(input_ids).last_hidden_state

    class VaeEncoder(nn.Module):
        def __init__(self):
            super().__init__()
            self.vae = parts.vae

        def forward(self, x):
            # The posterior's mode is the first half of the moments' channels. Sliced with a constant
            # (not DiagonalGaussianDistribution's chunk, which exports as Shape -> Slice), so ONNX
            # shape inference gives the output (B, 4, h, w), as the spec says.
            moments = self.vae.encoder(x)
            if self.vae.quant_conv is not None:
                moments = self.vae.quant_conv(moments)  # (B, 2c, h, w): mean, log-variance
            return moments[:, :c] * sf

    class VaeDecoder(nn.Module):
        def __init__(self):
            super().__init__()
            self.vae = parts.vae

        def forward(self, z):
            return self.vae.decode(z / sf).sample.clamp(-1, 1)

    builders: dict[str, Callable[[], nn.Module]] = {
        "unet": UNet, "image_projector": ImageProjector, "text_encoder": TextEncoder,
        "vae_encoder": VaeEncoder, "vae_decoder": VaeDecoder,
    }
    with torch.no_grad():
        return builders[name]().eval()
