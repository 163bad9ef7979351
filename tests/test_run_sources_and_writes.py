"""A long run against sources that change under it, and writes that fail (issue 27, classes 2 and 5).

- A base or teacher folder changed while `train` / `distill` runs: the model folder holds the frozen parts
  the run trained against (read at the start), never the folder's new ones.
- A pair image changed during a run that reads images as it goes (--no-cache): the run fails clearly at
  the first changed file, never trains on a mix.
- A full disk at a checkpoint, at the model save, at an eval report or a sticker pack: one `Error:` line,
  and nothing half-written."""

from __future__ import annotations

import errno
import shutil
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from PIL import Image, ImageOps
from safetensors.torch import load_file, save_file

from pedit.cli import cli
from pedit.errors import OutputError, PairFolderError
from pedit.train.loop import TrainConfig, train

ENV = {"COLUMNS": "1000", "PEDIT_DEBUG": None}


@pytest.fixture
def fresh_accelerator_state():
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state()
    yield
    AcceleratorState._reset_state()


def _cfg(pairs, base, out, **kw):
    return TrainConfig(**{**dict(data=str(pairs), output=str(out), base=str(base), batch_size=2, max_steps=2,
                                 checkpoint_every=1, validate_every=0, cache_dir=str(out.parent / "cache")), **kw})


def _vae_weights(folder: Path) -> dict:
    return load_file(next((folder / "vae").glob("*.safetensors")))


def test_a_base_changed_during_a_mixed_precision_run_is_not_what_the_model_saves(tiny_pairs, tiny_base, tmp_path,
                                                                                   fresh_accelerator_state):
    """The run reads the base at its start; at step 1 the base's VAE is replaced (another model at that path).
    The saved model's VAE must be the one trained against (the old code reloaded it from the path at the end)."""
    base = Path(shutil.copytree(tiny_base, tmp_path / "base"))
    before = _vae_weights(base)
    weights = next((base / "vae").glob("*.safetensors"))

    def at_step(p):
        if p.event == "step" and p.step == 1:
            save_file({k: v * 2 + 1 for k, v in before.items()}, weights)

    out = train(_cfg(tiny_pairs, base, tmp_path / "run", mixed_precision="bf16"), progress=at_step)
    saved = _vae_weights(out)
    assert saved.keys() == before.keys()
    assert all(torch.equal(saved[k], before[k]) for k in before)


def test_a_pair_image_changed_during_a_no_cache_run_fails_clearly(tiny_pairs_copy, tiny_base, tmp_path):
    """--no-cache reads the images at every step: one changed after the run read the folder's fingerprint is
    an error naming it, not a run trained half on the old images and half on the new."""
    image = sorted((tiny_pairs_copy / "images").glob("*_x_B.png"))[0]

    def at_step(p):
        if p.event == "step" and p.step == 1:
            ImageOps.invert(Image.open(image).convert("RGB")).save(image)

    with pytest.raises(PairFolderError, match=f"{image.name} changed while the run was using"):
        train(_cfg(tiny_pairs_copy, tiny_base, tmp_path / "run", max_steps=8, cache=False), progress=at_step)


def _disk_full(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_a_full_disk_at_the_first_checkpoint_is_one_line_and_leaves_no_run(tiny_pairs, tiny_base, tmp_path,
                                                                            monkeypatch):
    from safetensors import SafetensorError

    import pedit.train.steps

    def failing_checkpoint(accelerator, out, step, keep):
        (out / "checkpoints" / f"step-{step:06d}.tmp").mkdir(parents=True)  # half written, as a real one would be
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(pedit.train.steps, "_checkpoint", failing_checkpoint)
    r = CliRunner().invoke(cli, ["train", "--data", str(tiny_pairs), "--base", str(tiny_base), "-o",
                                 str(tmp_path / "run"), "--max-steps", "2", "--batch-size", "2", "--checkpoint-every",
                                 "1", "--validate-every", "0", "--cache-dir", str(tmp_path / "cache"), "-q"], env=ENV)
    assert r.exit_code == 1 and r.stderr.strip().count("\n") == 0, r.output
    assert r.stderr.startswith("Error: Could not write into") and "No space left on device" in r.stderr
    assert "nothing of the run was kept" in r.stderr
    assert not (tmp_path / "run").exists()


def test_a_full_disk_at_the_model_save_keeps_the_checkpoint_and_no_half_model(tiny_pairs, tiny_base, tmp_path,
                                                                              monkeypatch):
    import pedit.model.saving

    real = pedit.model.saving.save_model

    def failing_save(out, *args, **kwargs):
        (Path(out) / ".model-tmp-1").mkdir()  # a half model folder
        _disk_full()

    monkeypatch.setattr(pedit.model.saving, "save_model", failing_save)
    with pytest.raises(OutputError, match="No space left on device; the run is kept up to step-000002: --resume"):
        train(_cfg(tiny_pairs, tiny_base, tmp_path / "run"))
    out = tmp_path / "run"
    assert not list(out.glob(".model-tmp-*")) and not (out / "unet").exists()
    assert (out / "checkpoints" / "step-000002").is_dir()
    monkeypatch.setattr(pedit.model.saving, "save_model", real)
    assert (train(_cfg(tiny_pairs, tiny_base, out, resume=True)) / "unet").is_dir()  # the room came back


def test_a_full_disk_at_the_report_grid_leaves_no_half_report(tiny_pairs, random_model, tmp_path, monkeypatch):
    import pedit.viz

    real = pedit.viz.image_grid

    class Unsaveable:
        def __init__(self, image):
            self.image = image

        def save(self, f, format=None):
            f.write(b"\x89PNG half")
            _disk_full()

    monkeypatch.setattr(pedit.viz, "image_grid", lambda *a, **kw: Unsaveable(real(*a, **kw)))
    out = tmp_path / "report"
    r = CliRunner().invoke(cli, ["eval", "--pairs", str(tiny_pairs), "-m", str(random_model), "-o", str(out),
                                 "--steps", "1", "--methods", "ours", "--limit", "2"], env=ENV)
    assert r.exit_code == 1 and "No space left on device" in r.stderr, r.output
    assert [l for l in r.stderr.splitlines() if l.startswith("Error: ")] == [r.stderr.strip().splitlines()[-1]]
    assert not out.exists() or list(out.iterdir()) == []  # no report.json or report.md without their grid


def test_a_full_disk_while_a_sticker_pack_is_written_leaves_nothing(tmp_path, random_model, portrait, monkeypatch):
    import pedit.stickers.pipeline

    class Unsaveable:
        def save(self, *a, **kw):
            _disk_full()

    monkeypatch.setattr(pedit.stickers.pipeline, "preview_sheet", lambda *a, **kw: Unsaveable())
    selfie = tmp_path / "me.png"
    portrait.save(selfie)
    r = CliRunner().invoke(cli, ["sticker-pack", str(selfie), "-m", str(random_model), "-o", str(tmp_path / "pack"),
                                 "--skip-cartoonize", "--steps", "1", "--device", "cpu", "-q"], env=ENV)
    assert r.exit_code == 1 and r.stderr.strip().count("\n") == 0, r.output
    assert "Could not write the sticker pack" in r.stderr and "No space left on device" in r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["me.png"]
