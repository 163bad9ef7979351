"""Small "base models" built from scratch, in the folder layout of a Stable Diffusion checkpoint.

No pretrained weights can be fetched on the project's machines (docs/design-notes.md, "The toon world"), so
pedit makes its own base folders: a CLIP-style BPE tokenizer over a small vocabulary, a CLIP text
encoder, a VAE, a U-Net, a DDPM scheduler and a CLIP vision encoder (the MCDM's CLIP_im, §3.3),
each written with `save_pretrained`. Everything downstream then loads them with the real
`from_pretrained` code paths, exactly as it would load runwayml/stable-diffusion-v1-5.

Two sizes: `TINY` (32 px, for tests: every forward pass takes milliseconds) and `TOON` (128 px, the
base of the shipped toon model, whose VAE `train_vae` fits to cartoon renders).

Importing this module is cheap: torch, diffusers and transformers load inside the functions.
"""

from __future__ import annotations

import dataclasses
import json
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING


if TYPE_CHECKING:
    import torch
    from diffusers import AutoencoderKL

BOS = "<|startoftext|>"
EOS = "<|endoftext|>"  # also pad and unk, as in the SD 1.x tokenizer
MAX_LENGTH = 77  # CLIP's context length; the MCDM's context is 77 + K tokens
END_OF_WORD = "</w>"
# CLIP's image normalisation (openai/clip-vit-large-patch14 preprocessor_config.json).
CLIP_IMAGE_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_IMAGE_STD = (0.26862954, 0.26130258, 0.27577711)

# The toon base's whole vocabulary, fixed: the bundled base's tokenizer is built from it, so it must
# not shift when a direction is added (tests/test_toon_parts.py checks every built-in prompt's words
# are here). The toon wing knows no direction: it sits below pedit.data.
_WORDS = """
    a an the of on in with and photo portrait picture cartoon toon drawing person woman man girl boy
    face head hair eyes glasses hat smile smiling happy sad surprised costume expression clothes
    everyday neutral crown flowers wearing background left right same red blue green yellow pink
    purple orange brown black white grey
    angry claus crying flower laughing royal santa sheep shocked
"""


TOON_WORDS: tuple[str, ...] = tuple(sorted(set(_WORDS.split())))


# ----------------------------------------------------------------------------------------------
# Tokenizer


def _learn_merges(words: Iterable[str]) -> list[tuple[str, str]]:
    """Classic BPE learned on the word list until every word is one symbol.

    Not one independent merge chain per word: chains conflict (the chain of "the" merges "t h",
    which would split "clothes" as "clo|th|..." before its own chain reaches "clot"). Learning
    merges greedily over all words and applying them in rank order gives, by construction, the
    same segmentation at tokenization time: every known word becomes one token, every piece on
    the way is in the vocabulary, and unknown words fall back to the learned pieces.
    """
    # Each word starts as its characters, the last one marked as word-final (CLIP's "</w>").
    seqs = [list(w[:-1]) + [w[-1] + END_OF_WORD] for w in sorted(set(words)) if w]
    merges = []
    while True:
        pairs = Counter(p for s in seqs for p in zip(s, s[1:]))
        if not pairs:
            return merges
        # Most frequent pair; ties broken by the pair itself so the vocabulary is deterministic.
        best = min(pairs, key=lambda p: (-pairs[p], p))
        merges.append(best)
        joined = best[0] + best[1]
        for s in seqs:
            i = 0
            while i < len(s) - 1:
                if (s[i], s[i + 1]) == best:
                    s[i : i + 2] = [joined]
                i += 1


def build_tokenizer(folder: Path, words: Iterable[str] = TOON_WORDS) -> None:
    """Write vocab.json, merges.txt, tokenizer_config.json and special_tokens_map.json to `folder`.

    `transformers.CLIPTokenizer.from_pretrained(folder, local_files_only=True)` loads it. The vocab
    follows CLIP's order: single characters (every printable ASCII char, alone and word-final),
    then one token per merge, then the two special tokens. Non-ASCII characters are not in the
    vocabulary and become <|endoftext|> (the unk token).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    words = [w.lower() for w in words]
    bad = [w for w in words if not w.isascii() or not w.isalpha()]
    if bad:
        # CLIP's pre-tokenizer splits letters from everything else, so such a "word" could never
        # reach the BPE model whole.
        raise ValueError(f"Tokenizer words must be ASCII letters only, got {bad[:5]}.")
    chars = [chr(c) for c in range(33, 127)]  # printable ASCII without space (CLIP splits on it)
    tokens = chars + [c + END_OF_WORD for c in chars]
    merges = _learn_merges(words)
    tokens += [a + b for a, b in merges]
    tokens += [BOS, EOS]
    vocab = {tok: i for i, tok in enumerate(dict.fromkeys(tokens))}

    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False, indent=0) + "\n", encoding="utf-8")
    # CLIP's merges.txt starts with a version line that loaders skip.
    merges_text = "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges)
    (folder / "merges.txt").write_text(merges_text, encoding="utf-8")
    special = {"bos_token": BOS, "eos_token": EOS, "pad_token": EOS, "unk_token": EOS}
    config = {
        "tokenizer_class": "CLIPTokenizer",
        "model_max_length": MAX_LENGTH,
        "do_lower_case": True,
        "clean_up_tokenization_spaces": False,
        "add_prefix_space": False,
        **special,
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    (folder / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n", encoding="utf-8")


# ----------------------------------------------------------------------------------------------
# Base folders


@dataclass(frozen=True)
class BaseSpec:
    """Sizes of the networks of a base folder.

    `attention_head_dim` is channels per attention head everywhere (text, vision, U-Net): each
    network gets width // attention_head_dim heads. (diffusers' U-Net argument of the same name
    is, for historical reasons, the number of heads; `build_base` converts.)
    """

    resolution: int  # image side in pixels
    vae_channels: tuple[int, ...]  # one per VAE level; latent factor = 2 ** (len - 1)
    unet_channels: tuple[int, ...]  # one per U-Net level
    unet_layers_per_block: int
    text_width: int  # CLIP text hidden size = U-Net cross_attention_dim
    text_layers: int
    vision_width: int
    vision_layers: int
    vision_image_size: int  # CLIP_im input side; (size // patch) ** 2 patch tokens + 1 class token
    vision_patch: int
    attention_head_dim: int
    norm_groups: int  # GroupNorm groups in the VAE and the U-Net
    vae_layers_per_block: int = 1  # encoder resnets per level (the decoder has one more)
    unet_heads: int | None = None  # heads at every U-Net level instead (SD 1.5: 8, head width 40-160)
    # The VAE's scaling factor as built (train_vae later sets 1 / latent std). Tests' TINY base carries
    # Stable Diffusion's 0.18215: with 1.0 a latent left unscaled, or scaled twice, looks the same (issue 27).
    scaling_factor: float = 1.0

    def __post_init__(self):
        widths = (*self.vae_channels, *self.unet_channels)
        if any(c % self.norm_groups for c in widths):
            raise ValueError(f"norm_groups={self.norm_groups} must divide every VAE and U-Net width {widths}.")
        if self.unet_heads is not None and (self.unet_heads < 1 or any(c % self.unet_heads for c in self.unet_channels)):
            raise ValueError(f"unet_heads={self.unet_heads} must divide every U-Net width {self.unet_channels}.")
        heads = (*([] if self.unet_heads else self.unet_channels), self.text_width, self.vision_width)
        if any(c % self.attention_head_dim for c in heads):
            raise ValueError(f"attention_head_dim={self.attention_head_dim} must divide the widths {heads}.")
        if self.resolution % self.latent_factor or self.vision_image_size % self.vision_patch:
            raise ValueError("resolution must be a multiple of the latent factor, vision size of the patch.")

    @property
    def latent_factor(self) -> int:
        return 2 ** (len(self.vae_channels) - 1)

    @property
    def latent_size(self) -> int:
        return self.resolution // self.latent_factor


# Tests: 32 px images, 4x4x4 latents, 4 vision patches (+1 class token).
TINY = BaseSpec(
    resolution=32,
    vae_channels=(8, 8, 16, 16),
    unet_channels=(16, 32),
    unet_layers_per_block=1,
    text_width=32,
    text_layers=1,
    vision_width=32,
    vision_layers=1,
    vision_image_size=32,
    vision_patch=16,
    attention_head_dim=8,
    norm_groups=4,
    scaling_factor=0.18215,  # Stable Diffusion 1.x's: an identity constant hides whole classes of bug
)

# The shipped toon model's base: 128 px images, 16x16x4 latents (factor 8, as SD), 16 vision patches.
# One resnet per U-Net level: 3.2M parameters (two per level, as SD, give 4.5M and +25% step time
# on the CPU). The VAE has 1.0M; its cost is the convolutions at 128 px (decoder levels 0-1).
TOON = BaseSpec(
    resolution=128,
    vae_channels=(16, 32, 64, 64),
    unet_channels=(32, 64, 128),
    unet_layers_per_block=1,
    text_width=64,
    text_layers=2,
    vision_width=64,
    vision_layers=2,
    vision_image_size=64,
    vision_patch=16,
    attention_head_dim=32,
    norm_groups=8,
)

# The same networks with a VAE of factor 4: 32×32 latents at 128 px. The editing mask lives on the
# latent grid, and on 16×16 the best IoU any mask can reach on expression edits is 0.39–0.51
# (docs/toon-model.md, "Resolution"); on 32×32 it is 0.56–0.69.
TOON32 = dataclasses.replace(TOON, vae_channels=(16, 32, 64))


# Stable Diffusion 1.5's sizes with random weights, for measuring what training costs at that size
# (scripts/bench_train_sd15.py): the U-Net of 860M parameters, SD's VAE, CLIP ViT-L/14 widths for
# text (768 x 12) and vision (1024 x 24, 224 px, 257 tokens). The vocabulary stays the toon one (382
# rows instead of 49,408: 37M fewer text-embedding weights, which cost nothing per step). The same
# networks as `pedit bench --arch sd15` (pedit.export.sd15), written as a base folder `pedit train` reads.
SD15 = BaseSpec(
    resolution=512,
    vae_channels=(128, 256, 512, 512),
    vae_layers_per_block=2,
    unet_channels=(320, 640, 1280, 1280),
    unet_layers_per_block=2,
    unet_heads=8,
    text_width=768,
    text_layers=12,
    vision_width=1024,
    vision_layers=24,
    vision_image_size=224,
    vision_patch=14,
    attention_head_dim=64,
    norm_groups=32,
)


def _model_index() -> dict:
    import diffusers

    # As a real SD 1.x folder's, with no safety checker and no feature extractor (the image
    # encoder's preprocessor config lives beside it). image_encoder/ (the MCDM's CLIP_im) is on
    # disk but listed as absent: StableDiffusionPipeline expects a CLIPVisionModelWithProjection
    # there and warns on every load of the folder; pedit loads image_encoder/ directly.
    return {
        "_class_name": "StableDiffusionPipeline",
        "_diffusers_version": diffusers.__version__,
        "feature_extractor": [None, None],
        "image_encoder": [None, None],
        "requires_safety_checker": False,
        "safety_checker": [None, None],
        "scheduler": ["diffusers", "DDPMScheduler"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    }


def _save_quietly(model, folder: Path) -> None:
    """save_pretrained for a transformers model without its "Writing model shards" bar on stderr
    (the library reports progress through callbacks; only the front ends draw)."""
    from transformers.utils import logging

    was_enabled = logging.is_progress_bar_enabled()
    logging.disable_progress_bar()
    try:
        model.save_pretrained(folder, safe_serialization=True)
    finally:
        if was_enabled:
            logging.enable_progress_bar()


def unet_config(spec: BaseSpec) -> dict:
    """The base U-Net's diffusers config: SD's layout, cross-attention at every level but the deepest
    (down), mirrored (up)."""
    n = len(spec.unet_channels)
    return dict(
        sample_size=spec.latent_size,
        in_channels=4,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock2D",) * (n - 1) + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * (n - 1),
        block_out_channels=spec.unet_channels,
        layers_per_block=spec.unet_layers_per_block,
        cross_attention_dim=spec.text_width,
        # diffusers' name for the number of heads (see BaseSpec)
        attention_head_dim=spec.unet_heads or tuple(c // spec.attention_head_dim for c in spec.unet_channels),
        norm_num_groups=spec.norm_groups,
    )


def build_base(folder: Path, spec: BaseSpec = TINY, seed: int = 0) -> Path:
    """Write a Stable-Diffusion-layout folder of randomly initialised networks sized by `spec`.

    Subfolders: tokenizer, text_encoder, vae, unet, scheduler, image_encoder (+ model_index.json).
    Weights are safetensors and a function of `seed` alone: the global torch seed is set before
    each network is constructed, so one network's size never changes another's weights.
    """
    import torch
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPImageProcessor, CLIPTextConfig, CLIPTextModel, CLIPVisionConfig, CLIPVisionModel

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    build_tokenizer(folder / "tokenizer")
    vocab = json.loads((folder / "tokenizer" / "vocab.json").read_text(encoding="utf-8"))

    def heads(width: int) -> int:
        return width // spec.attention_head_dim

    torch.manual_seed(seed)
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(vocab),
            hidden_size=spec.text_width,
            intermediate_size=4 * spec.text_width,
            num_hidden_layers=spec.text_layers,
            num_attention_heads=heads(spec.text_width),
            max_position_embeddings=MAX_LENGTH,
            hidden_act="quick_gelu",
            projection_dim=spec.text_width,
            # The pooled output looks for eos_token_id in input_ids: it must be this vocab's id.
            bos_token_id=vocab[BOS],
            eos_token_id=vocab[EOS],
            pad_token_id=vocab[EOS],
        )
    )
    _save_quietly(text_encoder, folder / "text_encoder")

    n_vae = len(spec.vae_channels)
    torch.manual_seed(seed)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * n_vae,
        up_block_types=("UpDecoderBlock2D",) * n_vae,
        block_out_channels=spec.vae_channels,
        layers_per_block=spec.vae_layers_per_block,
        latent_channels=4,
        norm_num_groups=spec.norm_groups,
        sample_size=spec.resolution,
        scaling_factor=spec.scaling_factor,  # set to 1 / latent std by train_vae
    )
    vae.save_pretrained(folder / "vae", safe_serialization=True)

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**unet_config(spec))
    unet.save_pretrained(folder / "unet", safe_serialization=True)

    scheduler = DDPMScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        prediction_type="epsilon",
        clip_sample=False,
        steps_offset=1,
    )
    # Not a DDPM argument, but DDIMScheduler.from_config reads it (SD's folders carry it too).
    scheduler.register_to_config(set_alpha_to_one=False)
    scheduler.save_pretrained(folder / "scheduler")

    torch.manual_seed(seed)
    image_encoder = CLIPVisionModel(
        CLIPVisionConfig(
            hidden_size=spec.vision_width,
            intermediate_size=4 * spec.vision_width,
            num_hidden_layers=spec.vision_layers,
            num_attention_heads=heads(spec.vision_width),
            image_size=spec.vision_image_size,
            patch_size=spec.vision_patch,
            num_channels=3,
            hidden_act="quick_gelu",
            projection_dim=spec.vision_width,
        )
    )
    _save_quietly(image_encoder, folder / "image_encoder")
    size = spec.vision_image_size
    CLIPImageProcessor(
        size={"shortest_edge": size},
        crop_size={"height": size, "width": size},
        image_mean=list(CLIP_IMAGE_MEAN),
        image_std=list(CLIP_IMAGE_STD),
    ).save_pretrained(folder / "image_encoder")

    (folder / "model_index.json").write_text(json.dumps(_model_index(), indent=2) + "\n", encoding="utf-8")
    return folder


# ----------------------------------------------------------------------------------------------
# VAE training


def train_vae(
    vae: AutoencoderKL,
    sample_images: Callable[[int, torch.Generator], torch.Tensor],
    steps: int,
    batch_size: int = 16,
    lr: float = 1e-3,
    kl_weight: float = 1e-6,
    device: str = "cpu",
    seed: int = 0,
    callback: Callable[[int, float], None] | None = None,
) -> float:
    """Fit `vae` to images from `sample_images(batch_size, generator)` -> (B, 3, R, R) in [-1, 1].

    Loss: MSE reconstruction of a posterior sample + kl_weight * KL (per-sample sum, batch mean),
    AdamW. `callback(step, recon_loss)` after every step, step counting from 1. Afterwards the
    latent scaling factor is set to 1 / std of the posterior mode over a few fresh batches, so
    scaled latents have unit variance like SD's (c_s and z_t share this scale).
    Returns the MSE of the mode reconstruction on those batches. The VAE is left in eval mode.
    """
    import torch
    import torch.nn.functional as F

    vae.to(device).train()
    generator = torch.Generator().manual_seed(seed)  # images and posterior noise, on the CPU
    optimizer = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=0.0)
    for step in range(1, steps + 1):
        x = sample_images(batch_size, generator).to(device)  # (B, 3, R, R)
        posterior = vae.encode(x).latent_dist  # mean, std: (B, 4, R/f, R/f)
        z = posterior.sample(generator=generator)
        recon = vae.decode(z).sample  # (B, 3, R, R)
        recon_loss = F.mse_loss(recon, x)
        loss = recon_loss + kl_weight * posterior.kl().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        optimizer.step()
        if callback is not None:
            callback(step, recon_loss.item())

    vae.eval()
    latents, errors = [], []
    with torch.no_grad():
        for _ in range(4):
            x = sample_images(batch_size, generator).to(device)
            mode = vae.encode(x).latent_dist.mode()  # (B, 4, R/f, R/f)
            latents.append(mode.flatten().float().cpu())
            errors.append(F.mse_loss(vae.decode(mode).sample, x).item())
    std = torch.cat(latents).std().item()
    vae.register_to_config(scaling_factor=1.0 / max(std, 1e-6))
    return sum(errors) / len(errors)
