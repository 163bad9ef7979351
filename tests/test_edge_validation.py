"""Validation at the edge: every config checks its own fields, non-finite numbers never become output,
and the command line answers every hostile case with one `Error:` line (traceback with PEDIT_DEBUG=1)."""

import json
import math
import shutil

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from pedit.cli import cli
from pedit.data.gen_pairs import GenPairsConfig
from pedit.edit.editor import EditOptions, Editor
from pedit.edit.guidance import GuidanceScales
from pedit.edit.mask import MaskConfig
from pedit.errors import ConfigError, NonFiniteError
from pedit.eval.ground_truth import EvalConfig
from pedit.model.sampling_settings import SamplingSettings
from pedit.photos.edit_files import EditFilesConfig
from pedit.train.loop import TrainConfig
from conftest import TEST_DEVICE  # PEDIT_TEST_DEVICE, default cpu

NAN, INF = float("nan"), float("inf")
ENV = {"COLUMNS": "1000", "PEDIT_DEBUG": None}


def run(*args, env=ENV):
    return CliRunner().invoke(cli, [str(a) for a in args], prog_name="pedit", env=env)


def one_error_line(result) -> str:
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1, result.stderr
    return errors[0]


# ---------------------------------------------------------------- every config validates itself


@pytest.mark.parametrize("make, message", [
    (lambda: MaskConfig(strength=0), "strength must be in (0, 1], got 0"),
    (lambda: MaskConfig(strength=NAN), "strength must be a finite number, got nan"),
    (lambda: MaskConfig(n_noise=0), "n_noise must be in [1, 1024], got 0"),
    (lambda: MaskConfig(ratio=-1.0), "ratio must be in (0, inf], got -1.0"),
    (lambda: MaskConfig(threshold=1.0), "threshold must be in [0, 1), got 1.0"),
    (lambda: MaskConfig(dilate=INF), "dilate must be a finite number, got inf"),
    (lambda: MaskConfig(feather="1"), "feather must be a number, got '1'"),
    (lambda: GuidanceScales(s_s=NAN), "s_s must be a finite number, got nan"),
    (lambda: GuidanceScales(s_p=-INF), "s_p must be a finite number, got -inf"),
    (lambda: EditOptions(seed=2**64), f"seed must be in [0, {2**64 - 1}], got {2**64}"),
    (lambda: EditOptions(seed=-1), f"seed must be in [0, {2**64 - 1}], got -1"),
    (lambda: EditOptions(steps=2.5), "steps must be an integer, got 2.5"),
    (lambda: EditOptions(scheduler="pndm"), "scheduler must be one of ddim, dpm, euler, got 'pndm'"),
    (lambda: EditFilesConfig(("a.png",), "royal", margin=NAN), "margin must be a finite number, got nan"),
    (lambda: EditFilesConfig(("a.png",), "royal", sampling=SamplingSettings(s_im=INF)), "s_im must be a finite number, got inf"),
    (lambda: EditFilesConfig((), "royal"), "inputs must be one or more file or folder names, got ()"),
    (lambda: TrainConfig("d", "o", learning_rate=NAN), "learning_rate must be a finite number, got nan"),
    (lambda: TrainConfig("d", "o", learning_rate=0.0), "learning_rate must be in (0, 1], got 0.0"),
    (lambda: TrainConfig("d", "o", seed=-1), f"seed must be in [0, {2**32 - 1}], got -1"),
    (lambda: TrainConfig("d", "o", ema_decay=1.5), "ema_decay must be in [0, 1], got 1.5"),
    (lambda: TrainConfig("d", "o", max_minutes=NAN), "max_minutes must be a finite number, got nan"),
    (lambda: TrainConfig("d", "o", resume=True, overwrite=True), "resume and overwrite contradict each other"),
    (lambda: EvalConfig("p", sampling=SamplingSettings(seed=-3)), f"seed must be in [0, {2**64 - 1}], got -3"),
    (lambda: EvalConfig("p", sampling=SamplingSettings(s_s=NAN)), "s_s must be a finite number, got nan"),
    (lambda: GenPairsConfig("o", 4, seed=-1), f"seed must be in [0, {2**63 - 4}], got -1"),  # pair 3 records seed + 3 < 2**63
    (lambda: GenPairsConfig("o", 4, max_face_width=NAN), "max_face_width must be a finite number, got nan"),
])
def test_configs_refuse_nonsense_when_made(make, message):
    with pytest.raises(ConfigError) as e:
        make()
    assert str(e.value).startswith(message)


def test_sensible_values_still_pass():
    MaskConfig(strength=1.0, threshold=0.0, dilate=0, feather=0)
    GuidanceScales(-1.0, 0.0, 7.5)
    EditOptions(seed=2**64 - 1)
    TrainConfig("d", "o", seed=2**32 - 1, max_minutes=0.5, learning_rate=1)


# ---------------------------------------------------------------- non-finite numbers never become output


class _Scheduler:
    """Enough of a diffusers scheduler for the sampler: 10 training timesteps, z ← z − eps."""

    class config:
        num_train_timesteps = 10

    init_noise_sigma = 1.0

    def set_timesteps(self, n, device=None):
        self.timesteps = torch.arange(n - 1, -1, -1)

    def scale_model_input(self, z, t):
        return z

    def step(self, eps, t, z):
        return type("Out", (), {"prev_sample": z - eps})


def test_a_non_finite_latent_stops_the_sampler():
    from pedit.edit.sampler import sample

    def denoise(z_in, t, context):  # (5B, 8, h, w) → (5B, 4, h, w); NaN at one step only
        return torch.full_like(z_in[:, :4], NAN if int(t[0]) == 3 else 0.1)

    z = torch.zeros(1, 4, 2, 2)
    rows = (torch.zeros(5, 4, 2, 2), torch.zeros(5, 3, 8))
    with pytest.raises(NonFiniteError, match="Sampling produced NaN or infinite values"):
        sample(denoise, _Scheduler(), z, *rows, lambda e: e[:1], 5)
    out = sample(lambda z_in, t, c: torch.full_like(z_in[:, :4], 0.1), _Scheduler(), z, *rows, lambda e: e[:1], 5)
    assert torch.allclose(out, torch.full_like(z, -0.5))  # the finite run is untouched by the check


def test_steps_beyond_the_schedule_are_a_config_error():
    from pedit.edit.sampler import sample

    with pytest.raises(ConfigError, match="steps must be between 1 and 10"):
        sample(lambda *a: None, _Scheduler(), torch.zeros(1, 4, 2, 2), None, None, lambda e: e, 11)



@pytest.mark.parametrize("use_mask", [True, False])
def test_a_model_that_predicts_nan_fails_instead_of_returning_the_input_or_black(editor, use_mask):
    from pedit.toon.world import render

    inner = editor.denoise
    editor.denoise = lambda z_in, t, context: inner(z_in, t, context) * NAN
    try:
        with pytest.raises(NonFiniteError):
            editor.edit(Image.fromarray(render(2, size=32)), "royal", EditOptions(steps=2, use_mask=use_mask))
    finally:
        editor.denoise = inner


@pytest.mark.parametrize("device, message", [
    ("meta", "Device 'meta' cannot run an edit; use cpu, cuda or cuda:N."),
    ("tpu9", "Unknown device 'tpu9'; use cpu, cuda or cuda:N."),
])
def test_devices_that_cannot_edit(random_model, device, message):
    with pytest.raises(ConfigError) as e:
        Editor.from_pretrained(random_model, device=device)
    assert str(e.value) == message


# ---------------------------------------------------------------- the command line


@pytest.fixture(scope="module")
def small_photo(tmp_path_factory):
    path = tmp_path_factory.mktemp("photo") / "p.png"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(path)
    return path


FAST = ["--steps", "2", "--mask-noises", "2", "--device", TEST_DEVICE]


@pytest.mark.parametrize("args, needle", [
    (["--s-s", "nan"], "s_s must be a finite number, got nan"),
    (["--s-p", "inf"], "s_p must be a finite number, got inf"),
    (["--margin", "nan"], "margin must be a finite number, got nan"),
    (["--seed", str(2**64)], f"seed must be in [0, {2**64 - 1}], got {2**64}"),
    (["--steps", "5000"], "steps must be between 1 and 1000 (this model's noise schedule has 1000 timesteps), got 5000"),
    (["--device", "meta"], "Device 'meta' cannot run an edit"),
])
def test_edit_refuses_hostile_numbers_with_one_error_line_and_no_output(random_model, small_photo, tmp_path, args, needle):
    out = tmp_path / "out.png"
    result = run("edit", small_photo, "-d", "royal", "-m", random_model, "-o", out, *FAST, "-q", *args)
    assert needle in one_error_line(result)
    assert not out.exists()


def test_two_inputs_of_one_name_into_one_folder_keep_both_or_say_so(random_model, small_photo, tmp_path):
    for sub in ("a", "b"):
        (tmp_path / sub).mkdir()
        shutil.copy(small_photo, tmp_path / sub / "x.png")
    out = tmp_path / "out"
    result = run("edit", tmp_path / "a" / "x.png", tmp_path / "b" / "x.png", "-d", "royal", "-m", random_model,
                 "-o", out, "--overwrite", *FAST)
    assert one_error_line(result) == "Error: 1 of 2 inputs failed (see above)."
    assert f"{out / 'x_royal.png'} is also the output of {tmp_path / 'a' / 'x.png'} in this batch" in result.stderr
    assert sorted(p.name for p in out.iterdir()) == ["x_royal.png"]
    assert result.stdout.splitlines() == [str(out / "x_royal.png")]  # one edit reported, one file kept


def test_a_decoder_failure_fails_that_file_and_the_batch_goes_on(random_model, small_photo, tmp_path):
    from PIL import PngImagePlugin

    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(small_photo, folder / "a.png")
    info = PngImagePlugin.PngInfo()
    info.add_text("comment", "x" * (PngImagePlugin.MAX_TEXT_CHUNK + 10), zip=True)
    Image.open(small_photo).save(folder / "b.png", pnginfo=info)
    shutil.copy(small_photo, folder / "c.png")
    result = run("edit", folder, "-d", "royal", "-m", random_model, "-o", tmp_path / "out", *FAST)
    assert one_error_line(result) == "Error: 1 of 3 inputs failed (see above)."
    assert "2 edited, 1 failed" in result.stderr and "Decompressed data too large" in result.stderr
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a_royal.png", "c_royal.png"]
    # PEDIT_DEBUG=1: the traceback of the failed file, and the batch still goes on.
    debug = run("edit", folder, "-d", "royal", "-m", random_model, "-o", tmp_path / "debug", *FAST,
                env={**ENV, "PEDIT_DEBUG": "1"})
    assert "Traceback (most recent call last)" in debug.stderr and "ValueError: Decompressed data" in debug.stderr
    assert sorted(p.name for p in (tmp_path / "debug").iterdir()) == ["a_royal.png", "c_royal.png"]


def test_any_leftover_exception_is_one_error_line_and_pedit_debug_shows_it(monkeypatch, tmp_path):
    import pedit.data.directions as directions

    def broken(*args, **kwargs):
        raise RuntimeError("something nobody foresaw")

    monkeypatch.setattr(directions, "all_directions", broken)
    assert one_error_line(run("directions")) == (
        "Error: unexpected RuntimeError: something nobody foresaw (run again with PEDIT_DEBUG=1 for the traceback)")
    debug = run("directions", env={"PEDIT_DEBUG": "1"})
    assert isinstance(debug.exception, RuntimeError)


def test_train_with_nan_lr_or_negative_seed_fails_before_any_folder_appears(tiny_pairs, tiny_base, tmp_path):
    out = tmp_path / "model"
    for args, needle in ((["--lr", "nan"], "learning_rate must be a finite number"),
                         (["--seed", "-1"], "seed must be in [0, 4294967295], got -1")):
        result = run("train", "--data", tiny_pairs, "-o", out, "--base", tiny_base, "-q", *args)
        assert needle in one_error_line(result)
        assert not out.exists()


def test_eval_on_a_pair_with_a_negative_seed_is_an_error_line(random_model, tiny_pairs_copy):
    rows = [json.loads(line) for line in (tiny_pairs_copy / "metadata.jsonl").read_text().splitlines()]
    rows[0]["seed"] = -5
    (tiny_pairs_copy / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = run("eval", "-m", random_model, "--pairs", tiny_pairs_copy, "-q")
    assert "row 1 (id '000000'): seed must be from 0 to 2**63 - 1, got -5" in result.stderr
    assert result.exit_code == 1 and "Traceback" not in result.output


def test_eval_never_replaces_an_earlier_report_without_overwrite(random_model, tiny_pairs, tmp_path, monkeypatch):
    import pedit.eval.ground_truth as evaluate

    report = tmp_path / "report"
    report.mkdir()
    (report / "report.md").write_text("earlier")
    calls = []
    monkeypatch.setattr(evaluate, "run_method", lambda *a, **k: calls.append(1))  # must not be reached
    fast = ["--methods", "ours", "--limit", "1", "--steps", "1", "--grid", "0", "-q"]
    result = run("eval", "-m", random_model, "--pairs", tiny_pairs, "-o", report, *fast)
    assert one_error_line(result) == (f"Error: {report / 'report.md'} already exists. Pass --overwrite to replace it, "
                                      "or choose another -o.")
    assert not calls and (report / "report.md").read_text() == "earlier"
    monkeypatch.undo()
    result = run("eval", "-m", random_model, "--pairs", tiny_pairs, "-o", report, *fast, "--overwrite")
    assert result.exit_code == 0, result.output
    assert (report / "report.md").read_text().startswith("1 pairs") and json.loads((report / "report.json").read_text())
    assert math.isfinite(json.loads((report / "report.json").read_text())["methods"]["ours"]["ssim"])
