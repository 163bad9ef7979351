"""Several directions of one photo in one call (`Editor.edit_many`, `pedit edit -d a,b,c`): the bytes
of K separate edits with the same seed, the mask call sharing the noised latent (K + 1 rows a draw
when the directions share p_a), and bad direction lists refused before any U-Net call."""

from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from pedit.edit.editor import EditOptions
from pedit.edit.mask import MaskConfig
from pedit.errors import PeditError
from conftest import counting_calls

EXPRESSIONS = ["angry", "shocked", "laughing", "crying"]  # one p_a ("... neutral expression")
ENV = {"COLUMNS": "1000", "PEDIT_DEBUG": None}


def test_edit_many_gives_the_bytes_of_separate_edits_and_shares_the_mask_rows(editor, portrait):
    options = EditOptions(steps=3, seed=5, mask=MaskConfig(n_noise=3))
    calls, inner = counting_calls(editor)
    try:
        separate = [editor.edit(portrait, d, options) for d in EXPRESSIONS]
        assert calls == [6, 5, 5, 5] * 4  # each: 2 rows x 3 draws, then 5 rows a step
        calls.clear()
        together = editor.edit_many(portrait, EXPRESSIONS, options)
        assert calls == [(4 + 1) * 3] + [5] * 3 * 4  # 4 p_b + the shared p_a a draw; then each direction's loop
        calls.clear()
        batched = editor.edit_many(portrait, EXPRESSIONS, options, batch_steps=True)
        assert calls == [(4 + 1) * 3, 20, 20, 20]  # the 4 loops as one: 5 rows x 4 latents a step
    finally:
        editor.denoise = inner
    for one, many in zip(separate, together):
        assert torch.equal(one.mask_latent, many.mask_latent)
        assert one.raw.tobytes() == many.raw.tobytes() and one.image.tobytes() == many.image.tobytes()
        assert one.mask.tobytes() == many.mask.tobytes()
    assert len({r.image.tobytes() for r in together}) == 4  # four different edits, not one four times
    for one, fast in zip(separate, batched):  # one 20-row call a step: equal up to the kernels' float rounding
        assert torch.equal(one.mask_latent, fast.mask_latent)
        raw_one, raw_fast = (np.asarray(r.raw, dtype=int) for r in (one, fast))
        assert np.abs(raw_one - raw_fast).max() <= 2


def test_directions_with_their_own_mask_settings_still_match_separate_edits(editor, portrait):
    per = [EditOptions(steps=2, seed=1, mask=MaskConfig(n_noise=n, strength=s))
           for n, s in ((2, 0.5), (3, 0.5), (2, 0.7))]
    names = ["royal", "santa", "flower"]  # one p_a ("... everyday clothes")
    separate = [editor.edit(portrait, d, o) for d, o in zip(names, per)]
    together = editor.edit_many(portrait, names, per)
    for one, many in zip(separate, together):
        assert one.image.tobytes() == many.image.tobytes() and torch.equal(one.mask_latent, many.mask_latent)


@pytest.mark.parametrize("names, message", [
    (["angry", "angry"], "angry given more than once"),
    (["angry", "nope"], "nope"),
    ([], "non-empty list"),
])
def test_bad_direction_lists_fail_before_any_unet_call(editor, portrait, names, message):
    calls, inner = counting_calls(editor)
    try:
        with pytest.raises(PeditError, match=message):
            editor.edit_many(portrait, names, EditOptions(steps=2))
    finally:
        editor.denoise = inner
    assert calls == []


def _cli(*args):
    from pedit.cli import cli

    return CliRunner().invoke(cli, ["edit", *map(str, args), "--steps", "2", "--mask-noises", "2", "--device", "cpu",
                                    "--no-identity-check"], env=ENV)


def test_cli_writes_one_output_per_direction_equal_to_separate_runs(random_model, portrait, tmp_path):
    src = tmp_path / "face.png"
    portrait.save(src)
    together = tmp_path / "together"
    result = _cli(src, "-d", "angry,shocked", "-m", random_model, "-o", together, "--save-mask")
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in together.iterdir()) == [
        "face_angry.png", "face_angry_mask.png", "face_angry_overlay.png",
        "face_shocked.png", "face_shocked_mask.png", "face_shocked_overlay.png"]
    assert str(together / "face_angry.png") in result.stdout and str(together / "face_shocked.png") in result.stdout
    for name in ("angry", "shocked"):
        alone = tmp_path / f"alone_{name}.png"
        assert _cli(src, "-d", name, "-m", random_model, "-o", alone).exit_code == 0
        assert np.array_equal(np.asarray(Image.open(alone)), np.asarray(Image.open(together / f"face_{name}.png")))


@pytest.mark.parametrize("directions, message", [
    ("angry,angry", "Direction(s) angry given more than once"),
    ("angry,,shocked", "has an empty name"),
    ("angry,nope", "nope"),
])
def test_cli_refuses_a_bad_direction_list_with_one_error_line(random_model, portrait, tmp_path, directions, message):
    src = tmp_path / "face.png"
    portrait.save(src)
    out = tmp_path / "out"
    result = _cli(src, "-d", directions, "-m", random_model, "-o", out)
    assert result.exit_code == 1, result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and message in errors[0], result.stderr
    assert "Traceback" not in result.stderr
    assert not out.exists() or list(Path(out).iterdir()) == []
