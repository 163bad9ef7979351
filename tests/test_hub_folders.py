"""The hub-layout folders of the SD 1.5 dry run (pedit.toon.hub_folders), built at tiny size: each loads
through the code a user's real folder goes through, with diffusers' own loaders as the oracle."""

import json

import pytest
import torch

from pedit.toon.hub_folders import TINY_VIT, build_hub_folders
from pedit.toon.parts import TINY


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    return build_hub_folders(tmp_path_factory.mktemp("hub"), spec=TINY, ip_vision=TINY_VIT, log=lambda _m: None)


def test_the_base_has_the_hub_layout_and_loads_as_a_pipeline(folders):
    from diffusers import StableDiffusionPipeline

    base = folders["base"]
    assert sorted(p.name for p in base.iterdir() if not p.name.startswith(".")) == [
        "feature_extractor", "model_index.json", "scheduler", "text_encoder", "tokenizer", "unet", "vae"]
    pipe = StableDiffusionPipeline.from_pretrained(base, safety_checker=None)
    assert type(pipe.scheduler).__name__ == "PNDMScheduler"
    assert pipe.vae.config.scaling_factor == pytest.approx(0.18215)
    assert pipe.feature_extractor is not None


def test_train_loads_the_base_with_the_clip_folder_as_image_encoder(folders):
    from pedit.model.loading import load_base

    _root, parts = load_base(folders["base"], image_encoder=str(folders["clip"]))
    assert parts.image_encoder.config.hidden_size == TINY.vision_width


def test_the_controlnet_fits_the_base_and_reaches_the_unet(folders):
    from diffusers import ControlNetModel, UNet2DConditionModel

    from pedit.data.sd_models import check_controlnet

    cnet = ControlNetModel.from_pretrained(folders["controlnet"])
    check_controlnet(cnet, UNet2DConditionModel.from_pretrained(folders["base"], subfolder="unet"), "test")
    zero_convs = [p for n, p in cnet.named_parameters() if n.startswith("controlnet_down_blocks")]
    assert all(p.abs().sum() > 0 for p in zero_convs)  # from_unet's zeros would make the pose do nothing


@pytest.mark.parametrize("weight, projection, tokens", [
    ("ip-adapter-full-face_sd15.safetensors", "IPAdapterFullImageProjection", 5),  # 2x2 patches + class token
    ("ip-adapter-plus-face_sd15.safetensors", "IPAdapterPlusImageProjection", 16),
])
def test_each_ip_adapter_file_loads_strictly_into_its_diffusers_projection(folders, weight, projection, tokens):
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(folders["base"], safety_checker=None)
    pipe.load_ip_adapter(str(folders["ip_adapter"]), subfolder="models", weight_name=weight,
                         image_encoder_folder="image_encoder")
    layer = pipe.unet.encoder_hid_proj.image_projection_layers[0]
    assert type(layer).__name__ == projection
    with torch.no_grad():
        hidden = pipe.image_encoder(torch.zeros(1, 3, 32, 32), output_hidden_states=True).hidden_states[-2]
        assert layer(hidden).shape == (1, tokens, TINY.text_width)
    cross = [p for n, p in pipe.unet.attn_processors.items() if n.endswith("attn2.processor")]
    assert all(type(p).__name__.startswith("IPAdapter") for p in cross)


def test_a_rerun_reuses_finished_folders_and_rebuilds_a_half_written_one(folders, tmp_path):
    before = (folders["base"] / "unet" / "diffusion_pytorch_model.safetensors").stat().st_mtime_ns
    (folders["controlnet"] / ".pedit-built").unlink()  # as if the build was cut short before its stamp
    again = build_hub_folders(folders["base"].parent, spec=TINY, ip_vision=TINY_VIT, log=lambda _m: None)
    assert (again["base"] / "unet" / "diffusion_pytorch_model.safetensors").stat().st_mtime_ns == before
    assert json.loads((again["controlnet"] / ".pedit-built").read_text())["folder"] == "controlnet-openpose"
