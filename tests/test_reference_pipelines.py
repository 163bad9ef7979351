"""pedit's math pinned to diffusers' own pipelines (the outside references every row-saving change is
measured against): the editing sampler against StableDiffusionInstructPix2PixPipeline, gen-pairs'
Eq. 2 against StableDiffusionControlNetPipeline. Same tiny components, inputs, initial noise and
steps; final latents equal within 1e-4.

DDIM alone would hide a sampler that forgets `init_noise_sigma` or `scale_model_input` (both are
the identity for DDIM); Euler needs both and DPM-Solver++ is multistep, so each scheduler is run.
"""

import numpy as np
import pytest
import torch

SCHEDULERS = ("ddim", "dpm", "euler")


def _reference_scheduler(name: str, config: dict):
    """diffusers' own scheduler of each kind from the model's config (DDIM without clipping, as pedit's)."""
    from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler

    if name == "ddim":
        return DDIMScheduler.from_config(config, clip_sample=False)
    if name == "dpm":
        return DPMSolverMultistepScheduler.from_config(config, algorithm_type="dpmsolver++")
    return EulerDiscreteScheduler.from_config(config)


@pytest.mark.parametrize("name", SCHEDULERS)
def test_sampler_with_a_neutral_image_condition_is_instructpix2pix(editor, portrait, name):
    """With s_im = 1 and the image tokens dropped (c_im = 0), rows 1 and 2 are one input, the s_im
    term vanishes, and the nested CFG of Eq. 1 is InstructPix2Pix's:
        e(∅,∅) + s_s [e(s,∅) − e(∅,∅)] + s_p [e(s,p) − e(s,∅)]   (image_guidance_scale = s_s, guidance_scale = s_p).
    The same math, not merely similar: pedit's c_s is the VAE mode *times* the scaling factor,
    IP2P's image latent is the mode unscaled. So the pipeline is handed pedit's c_s itself as its
    4-channel `image` (IP2P then uses it as the image latent, no VAE encode), and its prompt
    embeddings are pedit's contexts cat([c_p, zeros(K)]), 77 + K tokens, rows in IP2P's order.
    Both start from the same unit noise z_T (each multiplies it by its scheduler's init_noise_sigma)."""
    from diffusers import StableDiffusionInstructPix2PixPipeline

    from pedit.data.pairs import square_rgb
    from pedit.edit.editor import uint8_to_tensor
    from pedit.edit.guidance import GuidanceScales, guided_eps
    from pedit.edit.sampler import make_scheduler, sample
    from pedit.model.conditions import EditConditions

    model, steps = editor.model, 4
    config = model.parts.scheduler_config
    full = editor.conditions(uint8_to_tensor(square_rgb(portrait, editor.resolution)), editor.direction("laughing"))
    cond = EditConditions(full.c_s, torch.zeros_like(full.c_im), full.c_p_b, full.c_p_a, full.c_p_null)
    scales = GuidanceScales(s_s=1.5, s_im=1.0, s_p=4.0)
    z_T = torch.randn(cond.c_s.shape, generator=torch.Generator().manual_seed(7))

    ours = sample(editor.denoise, make_scheduler(name, config), z_T, *cond.guidance_rows(),
                  lambda eps: guided_eps(eps, scales), steps)

    pipe = StableDiffusionInstructPix2PixPipeline(
        vae=model.parts.vae, text_encoder=None, tokenizer=None, unet=model.mcdm.unet,
        scheduler=_reference_scheduler(name, config), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    no_im = torch.zeros_like(full.c_im)  # (1, K, D)
    with torch.no_grad():
        theirs = pipe(image=cond.c_s, prompt_embeds=torch.cat([cond.c_p_b, no_im], dim=1),
                      negative_prompt_embeds=torch.cat([cond.c_p_null, no_im], dim=1), latents=z_T.clone(),
                      num_inference_steps=steps, guidance_scale=scales.s_p, image_guidance_scale=scales.s_s,
                      output_type="latent").images
    assert ours.shape == theirs.shape == (1, 4, *cond.c_s.shape[-2:])
    assert ours.abs().max() > 0.1  # a real latent, not a degenerate zero
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-4)


@pytest.fixture(scope="module")
def tiny_controlnet(tiny_base, tmp_path_factory):
    """A tiny OpenPose-shaped ControlNet over the tiny base's U-Net, outputs made non-zero."""
    from diffusers import ControlNetModel, UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(tiny_base, subfolder="unet")
    torch.manual_seed(0)
    cnet = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(4, 4, 4, 4))
    with torch.no_grad():  # from_unet zero-initialises the outputs: make them matter
        for p in cnet.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    out = tmp_path_factory.mktemp("cnet") / "controlnet"
    cnet.save_pretrained(out, safe_serialization=True)
    return out


def test_gen_pairs_with_only_the_shared_prompt_is_the_controlnet_pipeline(tiny_base, tiny_controlnet, tmp_path):
    """With s'_a = s'_b = 0 and s'_d = 1, Eq. 2 is plain classifier-free guidance of the shared
    prompt p on the whole h × 2w latent: e(∅) + g [e(p) − e(∅)], the ControlNet on both rows with
    the pose canvas (the same skeleton in both halves). No identity (no IP-Adapter), DDIM.
    The pipeline gets its inputs on its own: it encodes the recorded prompt p and "" with the base's
    tokenizer and text encoder, reads the pose canvas from the saved pose half (PNG, lossless, drawn
    twice), and starts from the pair's z_T; VAE scaling does not enter (both stop at the latent)."""
    from diffusers import (AutoencoderKL, ControlNetModel, DDIMScheduler, StableDiffusionControlNetPipeline,
                           UNet2DConditionModel)
    from PIL import Image
    from transformers import CLIPTextModel, CLIPTokenizer

    from pedit.data.sd_pairs import SDPairsConfig, generate_sd_pairs
    from pedit.edit.sampler import make_scheduler, sample

    seen = {}

    def recording(denoise, scheduler, z, c_s_rows, context, guide, steps, **kw):
        seen["z_T"] = z.clone()
        seen["z_0"] = sample(denoise, scheduler, z, c_s_rows, context, guide, steps, **kw)
        return seen["z_0"]

    cfg = SDPairsConfig(output=str(tmp_path / "pairs"), n=1, base=str(tiny_base), controlnet=str(tiny_controlnet),
                        resolution=32, steps=3, device="cpu", contact_sheet=0, s_d=1.0, s_a=0.0, s_b=0.0,
                        guidance_scale=5.0, controlnet_scale=0.8)
    out = generate_sd_pairs(cfg, recording, make_scheduler)
    import json

    row = json.loads((out / "metadata.jsonl").read_text().splitlines()[0])
    half = np.asarray(Image.open(out / "images" / f"{row['id']}_pose_image.png").convert("RGB"))
    canvas = Image.fromarray(np.concatenate([half, half], axis=1))  # (H, 2W): the skeleton in both halves

    pipe = StableDiffusionControlNetPipeline(
        vae=AutoencoderKL.from_pretrained(tiny_base, subfolder="vae"),
        text_encoder=CLIPTextModel.from_pretrained(tiny_base, subfolder="text_encoder"),
        tokenizer=CLIPTokenizer.from_pretrained(tiny_base, subfolder="tokenizer"),
        unet=UNet2DConditionModel.from_pretrained(tiny_base, subfolder="unet"),
        controlnet=ControlNetModel.from_pretrained(tiny_controlnet),
        scheduler=DDIMScheduler.from_pretrained(tiny_base, subfolder="scheduler", clip_sample=False),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    with torch.no_grad():
        theirs = pipe(prompt=row["p"], negative_prompt="", image=canvas, height=32, width=64,
                      num_inference_steps=cfg.steps, guidance_scale=cfg.guidance_scale,
                      controlnet_conditioning_scale=cfg.controlnet_scale, latents=seen["z_T"].clone(),
                      output_type="latent").images
    ours = seen["z_0"]
    assert ours.shape == theirs.shape == (1, 4, 4, 8)
    assert ours.abs().max() > 0.1
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-4)
