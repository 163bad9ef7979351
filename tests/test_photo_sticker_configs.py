"""The photo-evaluation, sticker-pack and DreamBooth configs check their fields through pedit.validate:
a bool is not an integer, a string is not a number, and every refusal is a ConfigError (one `Error:`
line on the command line), never a TypeError or ValueError from a comparison. And `pedit eval` uses
every flag it is given in the mode it runs, or refuses it."""

from pathlib import Path

import pytest
from click.testing import CliRunner

from pedit.cli import cli
from pedit.errors import ConfigError
from pedit.eval.photos import PhotoEvalConfig
from pedit.stickers.dreambooth import DreamBoothConfig
from pedit.stickers.pipeline import StickerConfig

from conftest import with_settings

NAN = float("nan")
ASTRONAUT = Path(__file__).resolve().parents[1] / "examples" / "astronaut.png"
ENV = {"COLUMNS": "1000", "PEDIT_DEBUG": None}


def photo_eval(**kw):
    """A PhotoEvalConfig; its sampling fields go into the SamplingSettings it embeds."""
    return PhotoEvalConfig(photos=("a.jpg",), directions=("royal",), **with_settings(kw))


def sticker(**kw):
    return StickerConfig(selfie="me.jpg", output="out", **kw)


@pytest.mark.parametrize("make, message", [
    (lambda: photo_eval(steps=True), "steps must be an integer"),
    (lambda: photo_eval(mask_noises=True), "mask_noises must be an integer"),
    (lambda: photo_eval(max_pixels=2.5), "max_pixels must be an integer"),
    (lambda: photo_eval(s_s="2"), "s_s"),
    (lambda: photo_eval(margin="1"), "margin must be a number"),
    (lambda: photo_eval(margin=NAN), "margin must be a finite number"),
    (lambda: photo_eval(backend="tensorflow"), "Unknown backend"),
    (lambda: photo_eval(precision="fp8"), "Unknown precision"),
    (lambda: sticker(steps=True), "steps must be an integer"),
    (lambda: sticker(views="16"), "views must be an integer"),
    (lambda: sticker(pick=True), "pick must be an integer"),
    (lambda: sticker(margin="1"), "margin must be a number"),
    (lambda: sticker(margin=NAN), "margin must be a finite number"),
    (lambda: sticker(detector="eyes"), "Unknown face detector"),
    (lambda: DreamBoothConfig(steps=0), "steps must be in"),
    (lambda: DreamBoothConfig(rank=True), "rank must be an integer"),
    (lambda: DreamBoothConfig(learning_rate=0.0), "learning_rate must be in"),
    (lambda: DreamBoothConfig(learning_rate=NAN), "learning_rate must be a finite number"),
    (lambda: DreamBoothConfig(prior_weight=-1.0), "prior_weight must be in"),
    (lambda: DreamBoothConfig(seed=-1), "seed must be in"),
    (lambda: DreamBoothConfig(token=" "), "token must be a non-empty word"),
])
def test_configs_refuse_nonsense_with_a_config_error(make, message):
    with pytest.raises(ConfigError, match=message):
        make()


def test_sensible_values_still_pass():
    photo_eval(steps=2, mask_noises=3, margin=0.5, backend="onnx", precision="fp16")
    photo_eval()  # mask_noises None: the model's own setting
    sticker(steps=2, pick=1, candidates=2, margin=0, detector="haar")
    DreamBoothConfig(steps=1, rank=1, learning_rate=1e-2, prior_weight=0.0)


# --- `pedit eval`: every flag is used by the mode it is given to, or refused ----------------------------

def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], env=ENV)


@pytest.mark.parametrize("flag", [["--methods", "ours"], ["--batch-size", "4"], ["--limit", "3"], ["--grid", "2"]])
def test_eval_photos_refuses_flags_of_pairs(flag):
    result = run("eval", "--photos", ASTRONAUT, "-d", "royal", *flag)
    assert result.exit_code == 2 and f"{flag[0]} goes with --pairs" in result.output, result.output


def test_eval_pairs_refuses_the_detector_flag(tmp_path):
    result = run("eval", "--pairs", tmp_path, "--detector", "hog")
    assert result.exit_code == 2 and "--detector goes with --photos" in result.output, result.output


def test_eval_photos_passes_backend_and_precision_to_the_editor(monkeypatch, tmp_path):
    from pedit.errors import PeditError
    from pedit.export import backends

    seen = {}

    def fake_from_pretrained(path=None, **kwargs):
        seen.update(kwargs)
        raise PeditError("stopped after loading (test)")

    monkeypatch.setattr(backends, "load_editor", fake_from_pretrained)  # eval --photos is handed its backend
    result = run("eval", "--photos", ASTRONAUT, "-d", "royal", "--backend", "onnx", "--precision", "bf16",
                 "-o", tmp_path / "report")
    assert result.exit_code == 1 and "stopped after loading" in result.stderr, result.output
    assert seen["backend"] == "onnx" and seen["precision"] == "bf16"
