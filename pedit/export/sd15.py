"""An MCDM of Stable Diffusion 1.5 size with random weights, built from configs in code (no download).

Latency does not depend on weight values, so `pedit bench --arch sd15` times the real shapes:
the SD1.5 U-Net widened to 8 input channels, the SD VAE, a CLIP ViT-L/14 text encoder (768 wide,
12 layers) and vision encoder (1024 wide, 24 layers, 224 px → K = 257 tokens), so the context is
77 + 257 = 334 tokens. The tokenizer is the bundled toon base's (token ids only select random rows).
`resolution` may be lowered to fit a CPU (the latent is resolution / 8).
"""

from __future__ import annotations

from pathlib import Path

SD15_SCHEDULER = {
    "_class_name": "DDIMScheduler", "num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012,
    "beta_schedule": "scaled_linear", "clip_sample": False, "set_alpha_to_one": False, "steps_offset": 1,
    "prediction_type": "epsilon",
}


def build_sd15(resolution: int = 512, device: str = "cpu", dtype=None, seed: int = 0):
    """A LoadedModel of SD1.5 size with random weights (its `path` names no folder)."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer, CLIPVisionConfig, CLIPVisionModel

    from pedit.data.directions import BUILTIN
    from pedit.model.loading import LoadedModel, _quiet_libraries, bundled_base_path
    from pedit.model.mcdm import MCDM, FrozenParts, ImageProjector

    if resolution % 64:
        raise ValueError(f"resolution must be a multiple of 64 (SD's U-Net downsamples the latent 8x), got {resolution}")
    dtype = dtype or torch.float32
    _quiet_libraries()
    torch.manual_seed(seed)
    tokenizer = CLIPTokenizer.from_pretrained(bundled_base_path() / "tokenizer", local_files_only=True, model_max_length=77)
    with torch.device(device):  # initialise where it runs: a GPU builds 1.3 B random weights in seconds
        unet = UNet2DConditionModel(sample_size=resolution // 8, in_channels=8, out_channels=4, cross_attention_dim=768,
                                    attention_head_dim=8, layers_per_block=2,
                                    block_out_channels=(320, 640, 1280, 1280))
        vae = AutoencoderKL(
            in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, sample_size=resolution,
            down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
            block_out_channels=(128, 256, 512, 512), scaling_factor=0.18215,
        )
        text = CLIPTextModel(CLIPTextConfig(
            vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
            max_position_embeddings=77, hidden_act="quick_gelu", projection_dim=768,
            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        ))
        vision = CLIPVisionModel(CLIPVisionConfig(
            hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16, image_size=224,
            patch_size=14, hidden_act="quick_gelu", projection_dim=768,
        ))
        projector = ImageProjector(1024, 768, 4, 1 + (224 // 14) ** 2)
    parts = FrozenParts(vae, text, tokenizer, vision, dict(SD15_SCHEDULER))
    mcdm = MCDM(unet, projector).eval().requires_grad_(False)
    for m in (vae, text, vision):
        m.eval().requires_grad_(False)
    mcdm.to(device=device, dtype=dtype)
    parts.to(device, dtype)
    meta = {"resolution": resolution, "directions": [vars(d) for d in BUILTIN.values()], "arch": "sd15"}
    return LoadedModel(mcdm, parts, meta, Path(f"<sd15 random weights, {resolution} px>"))
