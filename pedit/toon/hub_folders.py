"""Folders of Stable Diffusion 1.5 size laid out like the hub repositories a user passes, with random weights.

For the SD 1.5 dry run (scripts/sd15_dry_run.sh, docs/deployment.md "SD 1.5 dry run"): every card
command is run against folders shaped like

- `runwayml/stable-diffusion-v1-5`  → `sd15/`: model_index.json, unet/, vae/, text_encoder/, tokenizer/,
  scheduler/ (PNDM, as the hub's), feature_extractor/; no image_encoder/ (train then needs --image-encoder);
- `lllyasviel/sd-controlnet-openpose` → `controlnet-openpose/`: a ControlNet of the SD 1.5 U-Net;
- `h94/IP-Adapter` → `ip-adapter/models/`: image_encoder/ (CLIP ViT-H/14 with projection, 1280 wide,
  32 layers), `ip-adapter-full-face_sd15.safetensors` (MLP projection, 257 tokens) and
  `ip-adapter-plus-face_sd15.safetensors` (Perceiver resampler, 16 tokens), in the original key layout
  (`image_proj.*`, `ip_adapter.N.to_k_ip.weight`) that diffusers' `load_ip_adapter` converts;
- `openai/clip-vit-large-patch14` → `clip-vit-large-patch14/`: the MCDM's CLIP_im (§3.3), 1024 wide,
  24 layers (the vision tower alone; the hub repo also holds the text tower, which pedit never loads).

Differences from the hub, on purpose: the tokenizer is pedit's small BPE vocabulary (toon words;
the real 49,408-token vocabulary cannot be fetched), so the text encoder's embedding table is that
size; there is no safety_checker/ (model_index lists it as absent, as many SD 1.5 copies do).
Every network is built by `pedit.toon.parts.build_base(SD15)` or from the same seed here.

Each folder is written into a temporary sibling and renamed into place whole, with `.pedit-built`
recording what built it, so a rerun reuses a finished folder and rebuilds a half-written one.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

STAMP = ".pedit-built"
BUILD_VERSION = 1  # bump when what a folder holds changes: cached folders are then rebuilt
CLIP_VIT_H = dict(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=16,
                  image_size=224, patch_size=14, projection_dim=1024, hidden_act="gelu")
# SD 1.5's own scheduler config (PNDM; pedit reads it into DDIM and DDPM, as diffusers' pipelines do).
SD15_PNDM = {"_class_name": "PNDMScheduler", "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
             "num_train_timesteps": 1000, "set_alpha_to_one": False, "skip_prk_steps": True, "steps_offset": 1,
             "clip_sample": False, "trained_betas": None}
# The IP-Adapter image encoder of the tiny layout (tests; `SIZE=tiny scripts/sd15_dry_run.sh`, a quick path check).
TINY_VIT = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4, image_size=32,
                patch_size=16, projection_dim=32, hidden_act="gelu")
SD15_VAE_SCALE = 0.18215
PLUS_FACE = dict(depth=4, dim_head=64, heads=12, num_queries=16, ff_mult=4)  # IP-Adapter's Resampler


def build_hub_folders(root: str | Path, seed: int = 0, log=print, spec=None, ip_vision: dict | None = None) -> dict[str, Path]:
    """The four folders under `root` (built when missing, else reused); returns their paths by role.

    `spec` (default pedit.toon.parts.SD15) and `ip_vision` (default CLIP ViT-H/14) size the networks:
    tests pass tiny ones and get the same layout.
    """
    from pedit.toon.parts import SD15

    spec, ip_vision = spec or SD15, ip_vision or CLIP_VIT_H
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    paths = {"base": root / "sd15", "clip": root / "clip-vit-large-patch14",
             "controlnet": root / "controlnet-openpose", "ip_adapter": root / "ip-adapter"}
    if not (paths["clip"] / STAMP).exists():  # the CLIP folder comes out of the base's build
        (paths["base"] / STAMP).unlink(missing_ok=True)
    _once(paths["base"], lambda tmp: _base_and_clip(tmp, root, seed, spec), log)
    _once(paths["controlnet"], lambda tmp: _controlnet(paths["base"], tmp, seed), log)
    _once(paths["ip_adapter"], lambda tmp: _ip_adapter(paths["base"], tmp, seed, ip_vision), log)
    return paths


def _once(folder: Path, build, log) -> None:
    stamp = {"version": BUILD_VERSION, "folder": folder.name}
    if (folder / STAMP).exists() and json.loads((folder / STAMP).read_text()) == stamp:
        log(f"reusing {folder}")
        return
    tmp = folder.with_name(f".{folder.name}.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.rmtree(folder, ignore_errors=True)
    log(f"building {folder} ...")
    build(tmp)
    (tmp / STAMP).write_text(json.dumps(stamp) + "\n")
    tmp.rename(folder)


def _base_and_clip(tmp: Path, root: Path, seed: int, spec) -> None:
    """pedit's SD15 base, rearranged as the hub's SD 1.5 folder; its image encoder becomes the CLIP folder."""
    import diffusers
    from transformers import CLIPImageProcessor

    from pedit.toon.parts import CLIP_IMAGE_MEAN, CLIP_IMAGE_STD, build_base

    build_base(tmp, spec, seed=seed)
    clip = root / "clip-vit-large-patch14"
    shutil.rmtree(clip, ignore_errors=True)
    shutil.move(str(tmp / "image_encoder"), str(clip))
    (clip / STAMP).write_text(json.dumps({"version": BUILD_VERSION, "folder": clip.name}) + "\n")
    vae_cfg = json.loads((tmp / "vae" / "config.json").read_text())
    vae_cfg["scaling_factor"] = SD15_VAE_SCALE
    (tmp / "vae" / "config.json").write_text(json.dumps(vae_cfg, indent=2) + "\n")
    for f in (tmp / "scheduler").iterdir():
        f.unlink()
    (tmp / "scheduler" / "scheduler_config.json").write_text(
        json.dumps({**SD15_PNDM, "_diffusers_version": diffusers.__version__}, indent=2) + "\n")
    size = spec.vision_image_size
    CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size},
                       image_mean=list(CLIP_IMAGE_MEAN), image_std=list(CLIP_IMAGE_STD),
                       do_convert_rgb=True).save_pretrained(tmp / "feature_extractor")
    index = {"_class_name": "StableDiffusionPipeline", "_diffusers_version": diffusers.__version__,
             "feature_extractor": ["transformers", "CLIPImageProcessor"], "image_encoder": [None, None],
             "requires_safety_checker": False, "safety_checker": [None, None],
             "scheduler": ["diffusers", "PNDMScheduler"], "text_encoder": ["transformers", "CLIPTextModel"],
             "tokenizer": ["transformers", "CLIPTokenizer"], "unet": ["diffusers", "UNet2DConditionModel"],
             "vae": ["diffusers", "AutoencoderKL"]}
    (tmp / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")


def _controlnet(base: Path, tmp: Path, seed: int) -> None:
    """A ControlNet of the base U-Net's size (from_unet), its zero convolutions given small random weights
    so the pose condition reaches the U-Net (a trained ControlNet's are not zero)."""
    import torch

    from pedit.noise import randn
    from diffusers import ControlNetModel, UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(base, subfolder="unet")
    cnet = ControlNetModel.from_unet(unet)
    del unet
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in cnet.named_parameters():
            if name.startswith(("controlnet_down_blocks", "controlnet_mid_block")):
                p.copy_(randn(p.shape, g) * 1e-3)
    cnet.save_pretrained(tmp, safe_serialization=True)


def _ip_adapter(base: Path, tmp: Path, seed: int, vision: dict) -> None:
    """h94/IP-Adapter's SD 1.5 face files: models/image_encoder/ and two weight files."""
    import torch
    from diffusers import UNet2DConditionModel
    from safetensors.torch import save_file
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(seed)
    CLIPVisionModelWithProjection(CLIPVisionConfig(**vision)).save_pretrained(
        tmp / "models" / "image_encoder", safe_serialization=True)
    unet_cfg = UNet2DConditionModel.load_config(base, subfolder="unet")
    g = torch.Generator().manual_seed(seed)
    attn = _ip_attention(unet_cfg, g)
    width, dim = vision["hidden_size"], unet_cfg["cross_attention_dim"]
    full = {"image_proj.proj.0.weight": _w(g, width, width), "image_proj.proj.0.bias": torch.zeros(width),
            "image_proj.proj.2.weight": _w(g, dim, width), "image_proj.proj.2.bias": torch.zeros(dim),
            "image_proj.proj.3.weight": torch.ones(dim), "image_proj.proj.3.bias": torch.zeros(dim)}
    save_file({**full, **attn}, str(tmp / "models" / "ip-adapter-full-face_sd15.safetensors"))
    plus = {f"image_proj.{k}": v for k, v in _resampler(g, width, dim).items()}
    save_file({**plus, **attn}, str(tmp / "models" / "ip-adapter-plus-face_sd15.safetensors"))


def _w(g, rows: int, cols: int):
    from pedit.noise import randn

    return randn((rows, cols), g) / cols**0.5


def _ip_attention(unet_cfg: dict, g) -> dict:
    """`ip_adapter.N.to_{k,v}_ip.weight` (hidden, 768) for each cross-attention layer, N = 1, 3, 5, ... in
    diffusers' attn_processors order (self- and cross-attention interleaved: down, up, mid)."""
    widths, n = unet_cfg["block_out_channels"], unet_cfg["layers_per_block"]
    down = [w for w in widths[:-1] for _ in range(n)]  # CrossAttnDownBlock2D levels
    up = [w for w in widths[::-1][1:] for _ in range(n + 1)]  # CrossAttnUpBlock2D levels
    hidden = down + up + [widths[-1]]
    dim, state = unet_cfg["cross_attention_dim"], {}
    for i, h in enumerate(hidden):
        state[f"ip_adapter.{2 * i + 1}.to_k_ip.weight"] = _w(g, h, dim)
        state[f"ip_adapter.{2 * i + 1}.to_v_ip.weight"] = _w(g, h, dim)
    return state


def _resampler(g, width: int, out: int) -> dict:
    """IP-Adapter Plus's Resampler (ip_adapter/resampler.py) in its original key names; its width is
    the U-Net's cross-attention width (768 at SD 1.5), its heads 64 wide as diffusers assumes."""
    import torch

    from pedit.noise import randn

    d = out
    inner, q = PLUS_FACE["dim_head"] * PLUS_FACE["heads"], PLUS_FACE["num_queries"]
    ff = d * PLUS_FACE["ff_mult"]
    s = {"latents": randn((1, q, d), g) / d**0.5, "proj_in.weight": _w(g, d, width),
         "proj_in.bias": torch.zeros(d), "proj_out.weight": _w(g, out, d), "proj_out.bias": torch.zeros(out),
         "norm_out.weight": torch.ones(out), "norm_out.bias": torch.zeros(out)}
    for i in range(PLUS_FACE["depth"]):
        for norm in ("norm1", "norm2"):
            s[f"layers.{i}.0.{norm}.weight"], s[f"layers.{i}.0.{norm}.bias"] = torch.ones(d), torch.zeros(d)
        s[f"layers.{i}.0.to_q.weight"] = _w(g, inner, d)
        s[f"layers.{i}.0.to_kv.weight"] = _w(g, 2 * inner, d)
        s[f"layers.{i}.0.to_out.weight"] = _w(g, d, inner)
        s[f"layers.{i}.1.0.weight"], s[f"layers.{i}.1.0.bias"] = torch.ones(d), torch.zeros(d)
        s[f"layers.{i}.1.1.weight"] = _w(g, ff, d)
        s[f"layers.{i}.1.3.weight"] = _w(g, d, ff)
    return s
