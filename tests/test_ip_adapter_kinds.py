"""IP-Adapter's three projection types through gen-pairs (issue 17, item 4): full-face (an MLP over
the CLIP hidden states), plus-face (a Resampler over them) and plain (ImageProjection over the
image embedding). Each gets a tiny adapter state of its own in the original IP-Adapter file
format, loaded by diffusers' own `load_ip_adapter` as gen-pairs loads it, and runs one step.
The identity embeddings must have diffusers' (batch, num_images, ...) shape: the oracle is
diffusers' `prepare_ip_adapter_image_embeds`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from test_sd_pairs import _cfg, _rows, _run, identity_dir, tiny_controlnet  # noqa: F401 (fixtures)

D_IMG = 32  # the tiny CLIP vision tower: hidden size and projection size


def _resampler_state(C: int) -> dict:
    """A diffusers IPAdapterPlusImageProjection, written back in the original IP-Adapter key names
    (layers.i.0 = attention with to_kv, layers.i.1 = feed-forward), which load_ip_adapter converts."""
    from diffusers.models.embeddings import IPAdapterPlusImageProjection

    torch.manual_seed(1)
    # heads = to_q rows // 64 in diffusers' converter: hidden 64 → one head of 64
    proj = IPAdapterPlusImageProjection(embed_dims=D_IMG, output_dims=C, hidden_dims=64, depth=4, dim_head=64,
                                        heads=1, num_queries=4)
    state, out = proj.state_dict(), {}
    for k, v in state.items():
        if ".attn.to_v." in k:
            continue
        name = (k.replace(".ln0.", ".0.norm1.").replace(".ln1.", ".0.norm2.").replace(".attn.to_out.0.", ".0.to_out.")
                .replace(".attn.to_q.", ".0.to_q.").replace(".ff.0.", ".1.0.").replace(".ff.1.net.0.proj.", ".1.1.")
                .replace(".ff.1.net.2.", ".1.3."))
        if ".attn.to_k." in k:
            name, v = k.replace(".attn.to_k.", ".0.to_kv."), torch.cat([v, state[k.replace("to_k", "to_v")]])
        out[f"image_proj.{name}"] = v * 2 if "latents" in name else v
    return out


def _projection_state(kind: str, C: int) -> dict:
    g = torch.Generator().manual_seed(0)
    if kind == "full-face":  # IPAdapterFullImageProjection: Linear → GELU → Linear → LayerNorm, per token
        return {"image_proj.proj.0.weight": torch.randn(D_IMG, D_IMG, generator=g) * 0.2,
                "image_proj.proj.0.bias": torch.zeros(D_IMG),
                "image_proj.proj.2.weight": torch.randn(C, D_IMG, generator=g) * 0.2,
                "image_proj.proj.2.bias": torch.zeros(C),
                "image_proj.proj.3.weight": torch.ones(C), "image_proj.proj.3.bias": torch.zeros(C)}
    if kind == "plain":  # ImageProjection: the pooled image embedding → 4 tokens
        return {"image_proj.proj.weight": torch.randn(4 * C, D_IMG, generator=g) * 0.2,
                "image_proj.proj.bias": torch.zeros(4 * C),
                "image_proj.norm.weight": torch.ones(C), "image_proj.norm.bias": torch.zeros(C)}
    return _resampler_state(C)


def _adapter(tiny_base, root: Path, kind: str) -> tuple[str, str, str, str]:
    from diffusers import UNet2DConditionModel
    from safetensors.torch import save_file
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(0)
    CLIPVisionModelWithProjection(CLIPVisionConfig(
        hidden_size=D_IMG, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, image_size=32,
        patch_size=2, projection_dim=D_IMG)).save_pretrained(root / "models" / "image_encoder")
    unet = UNet2DConditionModel.from_pretrained(tiny_base, subfolder="unet")
    C, widths = unet.config.cross_attention_dim, unet.config.block_out_channels
    state = _projection_state(kind, C)
    g = torch.Generator().manual_seed(2)
    key = 1
    for name in unet.attn_processors:
        if name.endswith("attn2.processor"):
            block = name.split(".")[0]
            idx = int(name.split(".")[1]) if block != "mid_block" else -1
            hidden = widths[-1] if block == "mid_block" else (widths[idx] if block == "down_blocks" else widths[::-1][idx])
            state[f"ip_adapter.{key}.to_k_ip.weight"] = torch.randn(hidden, C, generator=g) * 0.2
            state[f"ip_adapter.{key}.to_v_ip.weight"] = torch.randn(hidden, C, generator=g) * 0.2
            key += 2
    save_file(state, str(root / "models" / f"ip-{kind}.safetensors"))
    return str(root), "models", f"ip-{kind}.safetensors", "image_encoder"


@pytest.mark.parametrize("kind, layer", [("full-face", "IPAdapterFullImageProjection"),
                                          ("plus-face", "IPAdapterPlusImageProjection"),
                                          ("plain", "ImageProjection")])
def test_each_projection_type_runs_a_gen_pairs_step(tiny_base, tiny_controlnet, identity_dir, tmp_path, monkeypatch,
                                                    kind, layer):
    from diffusers.models.embeddings import MultiIPAdapterImageProjection

    from pedit.data.sd_models import IPAdapterIdentity, load_sd_parts

    ip = _adapter(tiny_base, tmp_path / "ip", kind)
    parts = load_sd_parts(str(tiny_base), None, ip, 0.6, "cpu", torch.float32)
    assert type(parts.unet.encoder_hid_proj.image_projection_layers[0]).__name__ == layer
    face = np.asarray(Image.open(next(identity_dir.glob("*.png"))).convert("RGB").resize((64, 64)))
    terms = IPAdapterIdentity(parts.pipe).encode(face)
    hidden = layer != "ImageProjection"
    (expected,) = parts.pipe.prepare_ip_adapter_image_embeds(  # diffusers' own (batch, num_images, ...)
        Image.fromarray(face), None, "cpu", 1, False)
    assert terms.image_embeds.shape == expected.shape and terms.image_embeds.dim() == (4 if hidden else 3)
    torch.testing.assert_close(terms.image_embeds, expected)

    seen = []
    original = MultiIPAdapterImageProjection.forward

    def spy(self, image_embeds):
        out = original(self, image_embeds)
        seen.append((tuple(image_embeds[0].shape), tuple(out[0].shape)))
        return out

    monkeypatch.setattr(MultiIPAdapterImageProjection, "forward", spy)
    out = _run(_cfg(tmp_path / "pairs", tiny_base, tiny_controlnet, n=1, steps=1, identity_dir=str(identity_dir),
                    ip_adapter=ip))
    (row,) = _rows(out)
    assert row["identity"]["adapter"] == f"{ip[0]}/models/ip-{kind}.safetensors"
    # The first projection is the load-time fit check (one grey image); then the one sampling step.
    assert len(seen) == 2 and seen[0][0][:2] == (1, 1)
    rows_in, rows_out = seen[1]
    assert rows_in[:2] == (4, 1) and rows_out[:2] == (4, 1)  # 4 rows of Eq. 2, one image each
    assert rows_out[-1] == parts.unet.config.cross_attention_dim


# ---------------------------------------------------------------------------------------------
# Bad input at SD scale (issue 17): parts that do not fit the base → one Error line, no traceback


def _one_error(args, text):
    from click.testing import CliRunner

    from pedit.cli import cli

    result = CliRunner().invoke(cli, [str(a) for a in args], env={"COLUMNS": "1000", "PEDIT_DEBUG": None})
    assert result.exit_code == 1, result.output
    lines = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(lines) == 1 and text in lines[0] and "unexpected" not in lines[0], result.stderr
    assert "Traceback" not in result.stderr


def _gen_pairs(tiny_base, out, identity_dir, weight):
    return ["gen-pairs", "--source", "sd", "--base", tiny_base, "-o", out, "-n", 1, "--resolution", 32, "--steps", 1,
            "--no-pose", "-q", "--identity-dir", identity_dir, "--ip-adapter", weight]


def test_an_ip_adapter_for_another_cross_attention_width_is_one_error(tiny_base, identity_dir, tmp_path):
    from safetensors.torch import load_file, save_file

    root, sub, name, _ = _adapter(tiny_base, tmp_path / "ip", "plus-face")
    path = Path(root) / sub / name
    state = {k: torch.zeros(v.shape[0], 48) if "_ip." in k else v for k, v in load_file(path).items()}  # an SDXL-like 48
    save_file(state, str(path))
    _one_error(_gen_pairs(tiny_base, tmp_path / "p", identity_dir, path), "Could not load the IP-Adapter")
    assert not (tmp_path / "p" / "metadata.jsonl").exists()


def test_an_ip_adapter_with_an_image_encoder_of_another_width_is_one_error(tiny_base, identity_dir, tmp_path):
    import shutil

    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    root, sub, name, enc = _adapter(tiny_base, tmp_path / "ip", "plus-face")
    shutil.rmtree(Path(root) / sub / enc)
    CLIPVisionModelWithProjection(CLIPVisionConfig(
        hidden_size=48, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, image_size=32, patch_size=2,
        projection_dim=48)).save_pretrained(Path(root) / sub / enc)
    _one_error(_gen_pairs(tiny_base, tmp_path / "p", identity_dir, Path(root) / sub / name),
               "does not fit its image encoder (hidden size 48")
    assert not (tmp_path / "p" / "metadata.jsonl").exists()


@pytest.mark.parametrize("part", ["vae", "text_encoder", "unet"])
def test_a_base_missing_a_part_is_one_error_in_gen_pairs_and_train(tiny_base, tiny_pairs, tmp_path, part):
    import shutil

    base = Path(shutil.copytree(tiny_base, tmp_path / "base"))
    shutil.rmtree(base / part)
    _one_error(["gen-pairs", "--source", "sd", "--base", base, "-o", tmp_path / "p", "-n", 1, "--resolution", 32,
                "--no-pose", "-q"], f"{part} missing")
    _one_error(["train", "--data", tiny_pairs, "--base", base, "-o", tmp_path / "m", "--max-steps", 1, "-q"],
               f"is missing {part}")
    assert not (tmp_path / "m" / "pedit.json").exists()
