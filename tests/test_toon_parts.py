"""Base folders built from scratch: they load with the real from_pretrained classes, their parts
fit together, the tokenizer keeps known words whole, builds are reproducible and train_vae learns."""

import json

import pytest
import torch

from pedit.toon.parts import TINY, TOON, TOON_WORDS, BaseSpec, build_base, build_tokenizer, train_vae


def _tokenizer(folder):
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(folder, local_files_only=True)


def test_words_cover_every_builtin_prompt():
    from pedit.data.directions import BUILTIN

    for d in BUILTIN.values():
        for prompt in (d.p_a, d.p_b, d.p):
            for word in prompt.replace(",", " ").lower().split():
                assert word in TOON_WORDS
    assert {"photo", "portrait", "cartoon", "woman", "man"} <= set(TOON_WORDS)
    assert "pirate" not in TOON_WORDS


def test_known_words_are_one_token_and_unknown_words_fall_back_to_pieces(tiny_base):
    tok = _tokenizer(tiny_base / "tokenizer")
    assert tok.model_max_length == 77
    assert tok.pad_token_id == tok.eos_token_id == tok.unk_token_id != tok.bos_token_id

    ids = tok("a person, santa claus costume").input_ids
    pieces = tok.convert_ids_to_tokens(ids)
    assert pieces == ["<|startoftext|>", "a</w>", "person</w>", ",</w>", "santa</w>", "claus</w>", "costume</w>",
                      "<|endoftext|>"]  # fmt: skip
    padded = tok("a person, santa claus costume", padding="max_length", max_length=77).input_ids
    assert padded[: len(ids)] == ids and len(padded) == 77 and set(padded[len(ids) :]) == {tok.eos_token_id}

    for word in TOON_WORDS:
        assert len(tok(word).input_ids) == 3, word  # bos, the word, eos
    assert tok.decode(ids, skip_special_tokens=True) == "a person , santa claus costume"

    pirate = tok("pirate").input_ids[1:-1]
    assert len(pirate) > 1 and tok.eos_token_id not in pirate
    assert "".join(tok.convert_ids_to_tokens(pirate)) == "pirate</w>"
    # Non-ASCII is the only way to reach the unk token (é is two bytes, two unks).
    assert tok("café").input_ids[1:-1].count(tok.unk_token_id) == 2


def test_tokenizer_rejects_words_the_pre_tokenizer_would_split(tmp_path):
    with pytest.raises(ValueError, match="ASCII letters"):
        build_tokenizer(tmp_path, ["ok", "half-way"])


def test_tiny_base_loads_with_the_real_classes_and_the_parts_chain(tiny_base):
    from diffusers import AutoencoderKL, DDIMScheduler, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPVisionModel

    tok = _tokenizer(tiny_base / "tokenizer")
    text_encoder = CLIPTextModel.from_pretrained(tiny_base, subfolder="text_encoder", local_files_only=True)
    image_encoder = CLIPVisionModel.from_pretrained(tiny_base, subfolder="image_encoder", local_files_only=True)
    vae = AutoencoderKL.from_pretrained(tiny_base, subfolder="vae", local_files_only=True)
    unet = UNet2DConditionModel.from_pretrained(tiny_base, subfolder="unet", local_files_only=True)
    scheduler = DDPMScheduler.from_pretrained(tiny_base, subfolder="scheduler", local_files_only=True)

    cfg = text_encoder.config
    assert (cfg.vocab_size, cfg.max_position_embeddings) == (len(tok), 77)
    assert (cfg.bos_token_id, cfg.eos_token_id, cfg.pad_token_id) == (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id)
    assert vae.config.scaling_factor == 0.18215 and vae.config.latent_channels == 4  # SD's, not an identity
    assert unet.config.cross_attention_dim == TINY.text_width and unet.config.sample_size == 4
    assert unet.config.down_block_types == ["CrossAttnDownBlock2D", "DownBlock2D"]
    assert unet.config.up_block_types == ["UpBlock2D", "CrossAttnUpBlock2D"]
    s = scheduler.config
    assert (s.num_train_timesteps, s.beta_schedule, s.beta_start, s.beta_end) == (1000, "scaled_linear", 0.00085, 0.012)
    assert (s.prediction_type, s.steps_offset, s.clip_sample) == ("epsilon", 1, False)
    # The sampler's scheduler is built from this config: SD's set_alpha_to_one must carry over.
    assert DDIMScheduler.from_config(s).config.set_alpha_to_one is False
    index = json.loads((tiny_base / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionPipeline" and index["unet"] == ["diffusers", "UNet2DConditionModel"]
    pre = json.loads((tiny_base / "image_encoder" / "preprocessor_config.json").read_text())
    assert pre["image_mean"][0] == pytest.approx(0.48145466) and pre["image_std"][0] == pytest.approx(0.26862954)

    with torch.no_grad():
        x = torch.rand(1, 3, 32, 32) * 2 - 1
        z = vae.encode(x).latent_dist.mode()
        assert z.shape == (1, 4, 4, 4)
        assert vae.decode(z).sample.shape == (1, 3, 32, 32)
        ids = tok("a person, royal costume", padding="max_length", max_length=77, return_tensors="pt").input_ids
        c_p = text_encoder(ids).last_hidden_state
        assert c_p.shape == (1, 77, TINY.text_width)
        eps = unet(z, torch.tensor([999]), encoder_hidden_states=c_p).sample
        assert eps.shape == (1, 4, 4, 4) and torch.isfinite(eps).all()
        tokens = image_encoder(pixel_values=torch.rand(1, 3, 32, 32)).last_hidden_state
        assert tokens.shape == (1, 1 + (32 // 16) ** 2, TINY.vision_width)


def test_same_seed_same_bytes_other_seed_other_weights(tiny_base, tmp_path):
    again = build_base(tmp_path / "again", TINY, seed=0)
    other = build_base(tmp_path / "other", TINY, seed=1)
    for part in ("unet/diffusion_pytorch_model", "vae/diffusion_pytorch_model", "text_encoder/model",
                 "image_encoder/model"):  # fmt: skip
        name = part + ".safetensors"
        assert (again / name).read_bytes() == (tiny_base / name).read_bytes(), part
        assert (other / name).read_bytes() != (tiny_base / name).read_bytes(), part
    for name in ("tokenizer/vocab.json", "tokenizer/merges.txt", "model_index.json", "unet/config.json"):
        assert (again / name).read_bytes() == (tiny_base / name).read_bytes(), name


def test_spec_checks_its_sizes():
    assert (TINY.latent_factor, TINY.latent_size) == (8, 4)
    assert (TOON.latent_factor, TOON.latent_size) == (8, 16)
    with pytest.raises(ValueError, match="norm_groups"):
        BaseSpec(**{**TINY.__dict__, "norm_groups": 3})
    with pytest.raises(ValueError, match="attention_head_dim"):
        BaseSpec(**{**TINY.__dict__, "attention_head_dim": 5})
    with pytest.raises(ValueError, match="unet_heads"):
        BaseSpec(**{**TINY.__dict__, "unet_heads": 3})


def test_sd15_spec_has_stable_diffusion_15_sizes():
    """The base scripts/bench_train_sd15.py trains: SD 1.5's U-Net exactly (859,520,964 parameters, as
    in runwayml/stable-diffusion-v1-5's unet), built here on the meta device (no memory)."""
    from diffusers import UNet2DConditionModel

    from pedit.toon.parts import SD15, unet_config

    assert (SD15.resolution, SD15.latent_size) == (512, 64)
    config = unet_config(SD15)
    assert config["attention_head_dim"] == 8 and config["cross_attention_dim"] == 768
    with torch.device("meta"):
        unet = UNet2DConditionModel(**config)
    assert sum(p.numel() for p in unet.parameters()) == 859_520_964


def _rectangles(batch, generator, size=32):
    """Flat background plus three flat rectangles of random colours: (B, 3, size, size) in [-1, 1]."""
    x = (torch.rand(batch, 3, 1, 1, generator=generator) * 2 - 1).expand(batch, 3, size, size)
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    for _ in range(3):
        colour = torch.rand(batch, 3, 1, 1, generator=generator) * 2 - 1
        corner = torch.randint(0, size // 2, (2, batch, 1, 1), generator=generator)
        extent = torch.randint(size // 4, size // 2, (2, batch, 1, 1), generator=generator)
        inside = (xx >= corner[0]) & (xx < corner[0] + extent[0]) & (yy >= corner[1]) & (yy < corner[1] + extent[1])
        x = torch.where(inside[:, None], colour, x)
    return x


def test_train_vae_lowers_the_reconstruction_error_and_sets_the_scaling_factor(tiny_base, tmp_path):
    import torch.nn.functional as F
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(tiny_base, subfolder="vae", local_files_only=True)
    held_out = _rectangles(32, torch.Generator().manual_seed(123))

    def recon_error():
        with torch.no_grad():
            return F.mse_loss(vae.decode(vae.encode(held_out).latent_dist.mode()).sample, held_out).item()

    before = recon_error()
    seen = []
    # One thread: a second brings nothing on 32 px convolutions and, on a shared CPU, its
    # spin-waiting made this test 10x slower.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        final = train_vae(vae, _rectangles, steps=30, batch_size=16, lr=1e-2, callback=lambda s, loss: seen.append((s, loss)))
    finally:
        torch.set_num_threads(threads)
    after = recon_error()

    assert [s for s, _ in seen] == list(range(1, 31))
    assert after < 0.8 * before and final < 0.8 * before
    assert sum(loss for _, loss in seen[-5:]) < sum(loss for _, loss in seen[:5])
    assert not vae.training

    # scaling_factor = 1 / std of the posterior mode: scaled latents have about unit std.
    sf = vae.config.scaling_factor
    assert sf != 1.0
    with torch.no_grad():
        z = vae.encode(_rectangles(64, torch.Generator().manual_seed(7))).latent_dist.mode()
    assert (z * sf).std().item() == pytest.approx(1.0, rel=0.3)
    vae.save_pretrained(tmp_path / "vae")
    assert AutoencoderKL.from_pretrained(tmp_path / "vae").config.scaling_factor == pytest.approx(sf)
