"""The MCDM's architecture conventions (docs/design-notes.md, "Conditions and the model")."""

import torch

from pedit.model.loading import base_unet, load_base
from pedit.model.conditions import EditConditions
from pedit.model.mcdm import MCDM, ImageProjector, widen_conv_in


def test_widened_unet_with_zero_c_s_and_without_c_im_reproduces_the_base(tiny_base):
    root, parts = load_base(tiny_base)
    base = base_unet(root)
    widened = widen_conv_in(base_unet(root))
    assert widened.config.in_channels == 8 and widened.conv_in.weight.shape[1] == 8
    assert torch.equal(widened.conv_in.weight[:, :4], base.conv_in.weight)
    assert torch.equal(widened.conv_in.bias, base.conv_in.bias)  # the bias is copied, not re-initialised
    assert torch.count_nonzero(widened.conv_in.weight[:, 4:]) == 0

    g = torch.Generator().manual_seed(0)
    z_t = torch.randn(2, 4, 4, 4, generator=g)
    c_p = parts.encode_prompts(["a person, royal costume", ""])
    t = torch.tensor([10, 700])
    with torch.no_grad():
        expected = base(z_t, t, encoder_hidden_states=c_p).sample
        got = widened(torch.cat([z_t, torch.zeros_like(z_t)], dim=1), t, encoder_hidden_states=c_p).sample
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)


def test_image_projector_maps_c_s_and_clip_tokens_to_k_text_width_tokens(tiny_base):
    _, parts = load_base(tiny_base)
    k = parts.num_image_tokens
    proj = ImageProjector(parts.image_encoder.config.hidden_size, parts.text_encoder.config.hidden_size, 4, k)
    x = torch.rand(3, 3, 32, 32) * 2 - 1
    c_s = parts.encode_latent(x)
    c_im = proj(c_s, parts.clip_tokens(x))
    assert c_im.shape == (3, k, parts.text_encoder.config.hidden_size)
    # Each token sees c_s: changing c_s alone changes c_im.
    assert not torch.allclose(proj(c_s + 1, parts.clip_tokens(x)), c_im)


def test_guidance_rows_hold_the_null_conditions_in_the_documented_order():
    b, k, d = 2, 5, 8
    c = EditConditions(torch.randn(b, 4, 2, 2), torch.randn(b, k, d), torch.randn(b, 77, d),
                       torch.randn(b, 77, d), torch.randn(b, 77, d))
    c_s_rows, ctx = c.guidance_rows()
    assert c_s_rows.shape == (5 * b, 4, 2, 2) and ctx.shape == (5 * b, 77 + k, d)
    s = c_s_rows.chunk(5)
    x = ctx.chunk(5)
    assert torch.count_nonzero(s[0]) == 0 and all(torch.equal(r, c.c_s) for r in s[1:])
    assert torch.equal(x[0], x[1]) and torch.count_nonzero(x[0][:, 77:]) == 0  # c_im null = zeros
    assert torch.equal(x[0][:, :77], c.c_p_null)
    assert torch.equal(x[2][:, 77:], c.c_im) and torch.equal(x[2][:, :77], c.c_p_null)
    assert torch.equal(x[3][:, :77], c.c_p_b) and torch.equal(x[4][:, :77], c.c_p_a)


def test_training_forward_equals_inference_forward_with_the_same_context(tiny_base):
    root, parts = load_base(tiny_base)
    proj = ImageProjector(parts.image_encoder.config.hidden_size, parts.text_encoder.config.hidden_size, 4,
                          parts.num_image_tokens)
    mcdm = MCDM(widen_conv_in(base_unet(root)), proj).eval()
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    c_s, clip = parts.encode_latent(x), parts.clip_tokens(x)
    c_p = parts.encode_prompts(["a", "b"])
    z_in = torch.randn(2, 8, 4, 4)
    t = torch.tensor([5, 500])
    keep = torch.tensor([1.0, 0.0]).view(2, 1, 1)
    with torch.no_grad():
        train_eps = mcdm(z_in, t, c_p, image_inputs=(c_s, clip, keep))
        c_im = proj(c_s, clip) * keep
        infer_eps = mcdm(z_in, t, torch.cat([c_p, c_im], dim=1))
    torch.testing.assert_close(train_eps, infer_eps)
