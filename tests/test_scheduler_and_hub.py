"""DDIM never clips latents; hub downloads fetch only what is loaded (a fake hub listing, offline)."""

import fnmatch
from pathlib import Path

import torch

from pedit.edit.sampler import make_scheduler
from pedit.model.loading import BASE_REQUIRED, hub_patterns, resolve_source

SD_CONFIG_WITHOUT_CLIP_SAMPLE = {  # what an SD 1.x scheduler_config.json (PNDM) holds: no clip_sample key
    "_class_name": "PNDMScheduler", "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000, "set_alpha_to_one": False, "skip_prk_steps": True, "steps_offset": 1,
}


def test_ddim_from_a_config_without_clip_sample_does_not_clip_latents():
    sched = make_scheduler("ddim", SD_CONFIG_WITHOUT_CLIP_SAMPLE)
    assert sched.config.clip_sample is False
    sched.set_timesteps(10)
    t = sched.timesteps[-1]  # the last step: x_prev = sqrt(a_0) * predicted x_0 with zero noise
    z = torch.full((1, 4, 2, 2), 3.0)  # SD latents (x 0.18215) routinely exceed 1
    out = sched.step(torch.zeros_like(z), t, z).prev_sample
    expected = z / sched.alphas_cumprod[t].sqrt() * sched.alphas_cumprod[0].sqrt()
    assert torch.allclose(out, expected, atol=1e-5) and out.min() > 2.9  # clipped, x_0 would be 1


def test_ddim_ignores_a_config_that_asks_for_clipping():
    assert make_scheduler("ddim", {**SD_CONFIG_WITHOUT_CLIP_SAMPLE, "clip_sample": True}).config.clip_sample is False


# The files of runwayml/stable-diffusion-v1-5 (the names; sizes in the comments).
SD15_LISTING = [
    "model_index.json", "v1-5-pruned.safetensors",  # 7.7 GB single-file checkpoint
    "v1-5-pruned-emaonly.safetensors", "v1-5-pruned.ckpt",
    "feature_extractor/preprocessor_config.json",
    "safety_checker/config.json", "safety_checker/model.safetensors", "safety_checker/model.fp16.safetensors",
    "scheduler/scheduler_config.json",
    "text_encoder/config.json", "text_encoder/model.safetensors", "text_encoder/model.fp16.safetensors",
    "text_encoder/pytorch_model.bin",
    "tokenizer/merges.txt", "tokenizer/special_tokens_map.json", "tokenizer/tokenizer_config.json", "tokenizer/vocab.json",
    "unet/config.json", "unet/diffusion_pytorch_model.safetensors", "unet/diffusion_pytorch_model.fp16.safetensors",
    "unet/diffusion_pytorch_model.non_ema.safetensors", "unet/diffusion_pytorch_model.bin",
    "vae/config.json", "vae/diffusion_pytorch_model.safetensors", "vae/diffusion_pytorch_model.fp16.safetensors",
]


def _fetched(patterns, listing):
    from huggingface_hub.utils import filter_repo_objects

    return sorted(filter_repo_objects(listing, allow_patterns=patterns))


def test_a_base_download_takes_the_loaded_subfolders_and_default_weights_only():
    got = _fetched(hub_patterns(BASE_REQUIRED), SD15_LISTING)
    assert got == sorted([
        "model_index.json", "scheduler/scheduler_config.json",
        "text_encoder/config.json", "text_encoder/model.safetensors",
        "tokenizer/merges.txt", "tokenizer/special_tokens_map.json", "tokenizer/tokenizer_config.json", "tokenizer/vocab.json",
        "unet/config.json", "unet/diffusion_pytorch_model.safetensors",
        "vae/config.json", "vae/diffusion_pytorch_model.safetensors",
    ])


def test_sharded_weights_and_a_bundled_image_encoder_are_fetched():
    listing = ["unet/config.json", "unet/diffusion_pytorch_model-00001-of-00002.safetensors",
               "unet/diffusion_pytorch_model-00002-of-00002.safetensors",
               "unet/diffusion_pytorch_model.safetensors.index.json",
               "image_encoder/config.json", "image_encoder/model.safetensors", "image_encoder/model.fp16.safetensors"]
    got = _fetched(hub_patterns(BASE_REQUIRED), listing)
    assert got == sorted(set(listing) - {"image_encoder/model.fp16.safetensors"})


def test_an_image_encoder_repo_gets_its_root_files_only():
    listing = ["config.json", "preprocessor_config.json", "model.safetensors", "pytorch_model.bin", "tf_model.h5",
               "flax_model.msgpack", "tokenizer.json", "vocab.json", "merges.txt"]
    got = _fetched(hub_patterns(("config.json",)), listing)
    assert "model.safetensors" in got and "config.json" in got and "preprocessor_config.json" in got
    assert not {"pytorch_model.bin", "tf_model.h5", "flax_model.msgpack"} & set(got)


def test_resolve_source_asks_the_hub_with_those_patterns(tmp_path, monkeypatch):
    """snapshot_download replaced by a fake hub that 'downloads' the filtered SD 1.5 listing."""
    import huggingface_hub

    calls = []

    def fake_snapshot_download(repo_id, allow_patterns=None, local_files_only=False, **kw):
        calls.append((repo_id, tuple(allow_patterns), local_files_only))
        folder = tmp_path / "snapshot"
        for name in _fetched(allow_patterns, SD15_LISTING):
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            (folder / name).write_text("{}")
        return str(folder)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    folder = resolve_source("runwayml/stable-diffusion-v1-5", "Base model", BASE_REQUIRED)
    assert calls[0][0] == "runwayml/stable-diffusion-v1-5" and calls[0][1] == tuple(hub_patterns(BASE_REQUIRED))
    files = {str(p.relative_to(folder)) for p in Path(folder).rglob("*") if p.is_file()}
    assert "unet/diffusion_pytorch_model.safetensors" in files
    assert not [f for f in files if fnmatch.fnmatch(f, "*fp16*") or f.startswith("v1-5") or f.endswith((".bin", ".ckpt"))]
