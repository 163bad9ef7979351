"""A training folder belongs to one run: another run is refused unless --resume (same settings) or
--overwrite (the old run deleted first). Before this rule, a second run into one folder replaced the
model and some checkpoints, kept others, and a later --resume continued the old run."""

import pytest
from click.testing import CliRunner

from pedit.cli import cli
from pedit.errors import ConfigError
from pedit.train.loop import TrainConfig, train


def _cfg(pairs, base, out, **kw):
    base_kw = dict(data=str(pairs), output=str(out), base=str(base), batch_size=2, max_steps=2, checkpoint_every=1,
                   validate_every=0, learning_rate=1e-3)
    return TrainConfig(**{**base_kw, **kw})


def _snapshot(folder):
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _logged_steps(folder):
    return [row.split(",")[0] for row in (folder / "loss.csv").read_text().splitlines()[1:]]


@pytest.fixture
def trained(tiny_pairs, tiny_base, tmp_path):
    out = train(_cfg(tiny_pairs, tiny_base, tmp_path / "run"))
    (out / "notes.txt").write_text("mine")  # a file of the user's, not of the run
    return out


def test_a_second_run_into_the_folder_is_refused_and_changes_nothing(trained, tiny_pairs, tiny_base):
    before = _snapshot(trained)
    with pytest.raises(ConfigError) as e:
        train(_cfg(tiny_pairs, tiny_base, trained, learning_rate=5e-4, max_steps=1))
    assert str(e.value) == (
        f"{trained} already holds a training run (config.json, loss.csv, pedit.json, checkpoints, unet, "
        "image_projector, vae, text_encoder, tokenizer, image_encoder, scheduler). Pass --resume to continue it "
        "with the same settings, --overwrite to delete it and start again, or choose another -o.")
    assert _snapshot(trained) == before


def test_overwrite_deletes_the_old_run_first(trained, tiny_pairs, tiny_base):
    train(_cfg(tiny_pairs, tiny_base, trained, max_steps=1, overwrite=True))
    assert sorted(p.name for p in (trained / "checkpoints").iterdir()) == ["step-000001"]  # no step-2 of the old run
    assert _logged_steps(trained) == ["1"]
    assert (trained / "notes.txt").read_text() == "mine"


def test_resume_with_other_settings_is_refused_with_the_same_continues(trained, tiny_pairs, tiny_base):
    before = _snapshot(trained)
    with pytest.raises(ConfigError) as e:
        train(_cfg(tiny_pairs, tiny_base, trained, learning_rate=5e-4, seed=3, max_steps=3, resume=True))
    assert str(e.value) == (
        f"--resume: the run in {trained} was started with other settings (learning_rate: 0.001 then, 0.0005 now, "
        "seed: 0 then, 3 now). Resume with the same settings, or use --overwrite (or another -o) to train anew.")
    assert _snapshot(trained) == before
    train(_cfg(tiny_pairs, tiny_base, trained, max_steps=3, resume=True))  # more steps: the same run
    assert _logged_steps(trained) == ["1", "2", "3"]


def test_the_cli_says_how_to_continue_or_restart(trained, tiny_pairs, tiny_base):
    result = CliRunner().invoke(cli, ["train", "--data", str(tiny_pairs), "-o", str(trained), "--base", str(tiny_base),
                                      "--max-steps", "1", "-q"], env={"COLUMNS": "1000", "PEDIT_DEBUG": None})
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert result.stderr.startswith(f"Error: {trained} already holds a training run (")
    assert "--resume" in result.stderr and "--overwrite" in result.stderr


def test_leftovers_of_a_killed_run_are_removed_when_it_is_resumed(trained, tiny_pairs, tiny_base):
    import subprocess
    import sys

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    half_checkpoint = trained / "checkpoints" / "step-000007.tmp"
    half_model = trained / f".model-tmp-{dead.pid}"
    for folder in (half_checkpoint, half_model):
        folder.mkdir()
        (folder / "model.safetensors").write_bytes(b"half")
    train(_cfg(tiny_pairs, tiny_base, trained, max_steps=3, resume=True))
    assert not half_checkpoint.exists() and not half_model.exists()
    assert sorted(p.name for p in (trained / "checkpoints").iterdir()) == ["step-000002", "step-000003"]
