"""Mask-guided editing (paper §3.4): call counts, determinism, exact preservation outside the mask."""

import numpy as np
import pytest

from pedit.edit.editor import EditOptions
from pedit.errors import DirectionError
from pedit.edit.mask import MaskConfig




def _count_calls(editor):
    calls = []
    inner = editor.denoise

    def counting(z_in, t, context):
        calls.append((z_in.shape[0], context.shape[0]))
        return inner(z_in, t, context)

    editor.denoise = counting
    return calls, inner


def test_one_unet_call_per_step_on_five_rows_and_one_batched_two_row_mask_call(editor, portrait):
    calls, inner = _count_calls(editor)
    try:
        editor.edit(portrait, "royal", EditOptions(steps=4, mask=MaskConfig(n_noise=3)))
        assert calls == [(6, 6)] + [(5, 5)] * 4  # mask: rows 3-4 x 3 draws in one call; then 5 rows a step
        calls.clear()
        editor.edit(portrait, "royal", EditOptions(steps=3, use_mask=False))
        assert calls == [(5, 5)] * 3
    finally:
        editor.denoise = inner


def test_same_seed_same_bytes_other_seed_other_bytes(editor, portrait):
    a = editor.edit(portrait, "angry", EditOptions(steps=3, seed=7, use_mask=False))
    b = editor.edit(portrait, "angry", EditOptions(steps=3, seed=7, use_mask=False))
    c = editor.edit(portrait, "angry", EditOptions(steps=3, seed=8, use_mask=False))
    assert a.image.tobytes() == b.image.tobytes()
    assert a.image.tobytes() != c.image.tobytes()


def test_pixels_outside_the_mask_are_the_input_exactly(editor, portrait):
    r = editor.edit(portrait, "santa", EditOptions(steps=3, seed=1, mask=MaskConfig(n_noise=4, dilate=0, feather=0)))
    weight = np.asarray(r.mask)
    src, out, raw = np.asarray(portrait), np.asarray(r.image), np.asarray(r.raw)
    assert (weight == 0).any() and (weight == 255).any()  # this seed gives a partial mask
    assert np.array_equal(out[weight == 0], src[weight == 0])
    assert np.array_equal(out[weight == 255], raw[weight == 255])
    # The mask is the upsampled latent mask: 8x8 blocks on a 32 px image with a factor-8 VAE.
    latent = r.mask_latent[0, 0].numpy()
    assert np.array_equal(weight, np.kron(latent, np.ones((8, 8))).astype(np.uint8) * 255)


def test_mask_is_deterministic_for_a_seed(editor, portrait):
    # Undilated, unfeathered: on a 4x4 latent the default dilation alone would fill the whole square.
    options = EditOptions(steps=1, seed=5, mask=MaskConfig(dilate=0, feather=0))
    a = editor.edit(portrait, "shocked", options)
    b = editor.edit(portrait, "shocked", options)
    assert a.mask.tobytes() == b.mask.tobytes()
    weight = np.asarray(a.mask)
    assert (weight == 0).any() and (weight == 255).any()  # a real mask: an empty or full one proves nothing


def test_no_mask_returns_the_raw_sample(editor, portrait):
    r = editor.edit(portrait, "crying", EditOptions(steps=2, use_mask=False))
    assert r.mask_latent is None and r.image.tobytes() == r.raw.tobytes()


def test_unknown_direction_lists_the_available_ones(editor, portrait):
    with pytest.raises(DirectionError) as e:
        editor.edit(portrait, "pirate")
    assert str(e.value) == (
        "Unknown direction 'pirate'. Available: angry, crying, flower, laughing, royal, santa, sheep, shocked."
    )


def test_keyword_overrides_are_the_options_they_name_and_change_the_result(editor, portrait):
    ddim = editor.edit(portrait, "flower", steps=2, use_mask=False)
    for name in ("dpm", "euler"):
        by_keyword = editor.edit(portrait, "flower", steps=2, scheduler=name, use_mask=False)
        by_options = editor.edit(portrait, "flower", EditOptions(steps=2, scheduler=name, use_mask=False))
        assert by_keyword.image.tobytes() == by_options.image.tobytes()
        assert by_keyword.raw.tobytes() != ddim.raw.tobytes()  # the scheduler was really switched
    assert editor.edit(portrait, "flower", steps=3, use_mask=False).raw.tobytes() != ddim.raw.tobytes()
