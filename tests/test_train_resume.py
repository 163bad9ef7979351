"""--resume continues a run exactly: with gradient accumulation (a step is one optimizer step, so
every checkpoint falls between optimizer steps), after a run killed between checkpoints (loss.csv
keeps each step once), and a resume that cannot work is refused before anything loads."""

import shutil

import pytest
import torch
from safetensors.torch import load_file

from pedit.errors import ConfigError
from pedit.model.mcdm import MCDM
from pedit.train.loop import TrainConfig, train
from pedit.train.config import check_output_folder


def _cfg(pairs, base, out, **kw):
    base_kw = dict(data=str(pairs), output=str(out), base=str(base), batch_size=2, checkpoint_every=3,
                   validate_every=0, ema_decay=0.9, learning_rate=1e-3, log_every=1,
                   cache_dir=str(out.parent / "cache"))
    return TrainConfig(**{**base_kw, **kw})


def _unet(folder):
    return load_file(str(folder / "unet" / "diffusion_pytorch_model.safetensors"))


def _logged_steps(folder):
    return [row.split(",")[0] for row in (folder / "loss.csv").read_text().splitlines()[1:]]


def test_accumulation_two_six_steps_straight_equal_three_plus_resume_plus_three(tiny_pairs, tiny_base, tmp_path):
    # Counting micro-batches as steps, the step-3 checkpoint fell mid-cycle and lost the accumulated
    # gradient of micro-batch 3 (max |diff| 0.003); a step is now one optimizer step.
    acc = dict(gradient_accumulation=2)
    straight = train(_cfg(tiny_pairs, tiny_base, tmp_path / "straight", max_steps=6, **acc))
    split = tmp_path / "split"
    train(_cfg(tiny_pairs, tiny_base, split, max_steps=3, **acc))
    after_three = _unet(split)
    train(_cfg(tiny_pairs, tiny_base, split, max_steps=6, resume=True, **acc))
    a, b = _unet(straight), _unet(split)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], after_three[k]) for k in a)  # the resumed steps did train
    assert _logged_steps(split) == ["1", "2", "3", "4", "5", "6"]


def test_a_step_is_one_optimizer_step_over_the_accumulated_micro_batches(tiny_pairs, tiny_base, tmp_path, monkeypatch):
    rows = []
    real = MCDM.forward

    def forward(self, z_in, *args, **kwargs):
        rows.append(z_in.shape[0])
        return real(self, z_in, *args, **kwargs)

    monkeypatch.setattr(MCDM, "forward", forward)
    out = train(_cfg(tiny_pairs, tiny_base, tmp_path / "m", max_steps=3, gradient_accumulation=3))
    assert rows == [2] * 9  # 3 steps x 3 micro-batches of batch_size 2
    optimizer = torch.load(out / "checkpoints" / "step-000003" / "optimizer.bin", weights_only=True)
    assert {int(s["step"]) for s in optimizer["state"].values()} == {3}  # AdamW stepped 3 times, not 9
    assert _logged_steps(out) == ["1", "2", "3"]


def test_resume_after_a_kill_between_checkpoints_logs_each_step_once(tiny_pairs, tiny_base, tmp_path):
    out = tmp_path / "run"
    train(_cfg(tiny_pairs, tiny_base, out, max_steps=5, checkpoint_every=2))
    shutil.rmtree(out / "checkpoints" / "step-000005")  # as if killed after logging step 5, before its checkpoint
    assert _logged_steps(out) == ["1", "2", "3", "4", "5"]
    train(_cfg(tiny_pairs, tiny_base, out, max_steps=5, checkpoint_every=2, resume=True))
    assert _logged_steps(out) == ["1", "2", "3", "4", "5"]  # rows 5 of the killed run replaced, not appended
    assert (out / "loss.csv").read_text().startswith("step,loss,lr,seconds\n")
    assert not list(out.glob(".loss.csv*"))  # the atomic rewrite leaves no temp file


def test_resume_of_a_run_without_checkpoints_suggests_overwrite_before_loading(tiny_pairs, tiny_base, tmp_path,
                                                                               monkeypatch):
    out = train(_cfg(tiny_pairs, tiny_base, tmp_path / "run", max_steps=1))
    shutil.rmtree(out / "checkpoints")
    import pedit.model.loading

    def no_loading(*args, **kwargs):
        raise AssertionError("loaded the base before refusing the resume")

    monkeypatch.setattr(pedit.model.loading, "load_base", no_loading)
    with pytest.raises(ConfigError) as e:
        train(_cfg(tiny_pairs, tiny_base, out, max_steps=2, resume=True))
    assert str(e.value) == (
        f"--resume: the run in {out} has no checkpoint in {out / 'checkpoints'} to continue from. "
        "Use --overwrite to delete it and start again, or choose another -o.")
    # What that message suggests is accepted (no loop back to "already holds a training run").
    check_output_folder(_cfg(tiny_pairs, tiny_base, out, max_steps=2, overwrite=True))


def test_resume_into_an_empty_folder_says_there_is_nothing_to_resume(tiny_pairs, tiny_base, tmp_path):
    out = tmp_path / "new"
    with pytest.raises(ConfigError) as e:
        check_output_folder(_cfg(tiny_pairs, tiny_base, out, resume=True))
    assert str(e.value) == f"--resume: no checkpoint in {out / 'checkpoints'}; start without --resume."
    check_output_folder(_cfg(tiny_pairs, tiny_base, out))  # which is accepted


def test_a_time_stop_with_accumulation_resumes_exactly(tiny_pairs, tiny_base, tmp_path):
    # --max-minutes is checked at log intervals, which fall after whole optimizer steps.
    acc = dict(gradient_accumulation=2, checkpoint_every=10)
    straight = train(_cfg(tiny_pairs, tiny_base, tmp_path / "straight", max_steps=3, **acc))
    split = tmp_path / "split"
    train(_cfg(tiny_pairs, tiny_base, split, max_steps=3, max_minutes=1e-9, **acc))  # out of time after step 1
    assert sorted(p.name for p in (split / "checkpoints").iterdir()) == ["step-000001"]
    train(_cfg(tiny_pairs, tiny_base, split, max_steps=3, resume=True, **acc))
    a, b = _unet(straight), _unet(split)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert _logged_steps(split) == ["1", "2", "3"]


def test_no_cache_feeds_the_same_micro_batches_with_accumulation(tiny_pairs, tiny_base, tmp_path):
    # --no-cache decodes the micro-batches in a DataLoader driven by the same sampler: same pairs, same losses.
    acc = dict(gradient_accumulation=2, max_steps=2)
    cached = train(_cfg(tiny_pairs, tiny_base, tmp_path / "cached", **acc))
    plain = train(_cfg(tiny_pairs, tiny_base, tmp_path / "plain", cache=False, **acc))

    def losses(folder):
        return [float(r.split(",")[1]) for r in (folder / "loss.csv").read_text().splitlines()[1:]]

    assert len(losses(cached)) == 2
    assert losses(cached) == pytest.approx(losses(plain), abs=1e-5)
