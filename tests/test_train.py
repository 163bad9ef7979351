"""The training loop (paper §3.3): seeded randomness, dropout frequencies, resume equivalence."""

import json
from collections import Counter

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from pedit.errors import PairFolderError
from pedit.train.loop import TrainConfig, train
from pedit.train.batches import batch_indices, sample_dropout, step_seed


def test_dropout_subsets_have_the_paper_frequencies():
    g = torch.Generator().manual_seed(0)
    n = 280_000
    counts = Counter(sample_dropout(n, 0.2, g).tolist())
    assert abs(counts[0] / n - 0.8) < 0.004  # 80 % keep every condition
    for subset in range(1, 8):  # each of the 7 non-empty subsets of {c_s, c_im, c_p}: 0.2 / 7
        assert abs(counts[subset] / n - 0.2 / 7) < 0.002
    assert set(counts) == set(range(8))


def test_dropout_draw_is_a_function_of_the_generator_seed():
    a = sample_dropout(64, 0.2, torch.Generator().manual_seed(3))
    b = sample_dropout(64, 0.2, torch.Generator().manual_seed(3))
    assert torch.equal(a, b)


def test_ranks_take_disjoint_slices_and_an_epoch_sees_every_pair_once():
    n, world, b = 24, 2, 3  # a global batch of 6: 4 steps per epoch
    seen = []
    for step in range(4):
        per_rank = [batch_indices(0, step, r, world, b, n) for r in range(world)]
        assert not set(per_rank[0]) & set(per_rank[1])
        seen += per_rank[0] + per_rank[1]
    assert sorted(seen) == list(range(n))
    assert batch_indices(0, 4, 0, world, b, n) != batch_indices(0, 0, 0, world, b, n)  # next epoch reshuffles


def test_step_seeds_differ_across_steps_and_ranks():
    seeds = {step_seed(0, s, r) for s in range(50) for r in range(4)}
    assert len(seeds) == 200 and all(0 <= s < 2**63 for s in seeds)


def _unet_weights(folder):
    return load_file(str(folder / "unet" / "diffusion_pytorch_model.safetensors"))


def _cfg(tiny_pairs, tiny_base, out, **kw):
    base = dict(data=str(tiny_pairs), output=str(out), base=str(tiny_base), batch_size=2, checkpoint_every=3,
                validate_every=0, ema_decay=0.9, learning_rate=1e-3, cache_dir=str(out.parent / "cache"))
    return TrainConfig(**{**base, **kw})


def test_six_steps_straight_equal_three_plus_resume_plus_three(tiny_pairs, tiny_base, tmp_path):
    straight = train(_cfg(tiny_pairs, tiny_base, tmp_path / "straight", max_steps=6))
    split = tmp_path / "split"
    train(_cfg(tiny_pairs, tiny_base, split, max_steps=3))
    after_three = _unet_weights(split)
    train(_cfg(tiny_pairs, tiny_base, split, max_steps=6, resume=True))
    a, b = _unet_weights(straight), _unet_weights(split)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], after_three[k]) for k in a)  # steps 4-6 did change the weights
    log = (split / "loss.csv").read_text().splitlines()
    assert log[0] == "step,loss,lr,seconds" and [r.split(",")[0] for r in log[1:]] == ["1", "2", "3", "4", "5", "6"]
    meta = json.loads((split / "pedit.json").read_text())
    assert meta["resolution"] == 32 and len(meta["directions"]) == 8
    assert json.loads((split / "config.json").read_text())["resume"] is True


def test_a_missing_image_is_reported_before_training_starts(tiny_pairs_copy, tiny_base, tmp_path):
    (tiny_pairs_copy / "images" / "000002_x_B.png").unlink()
    out = tmp_path / "model"
    with pytest.raises(PairFolderError) as e:
        train(_cfg(tiny_pairs_copy, tiny_base, out, max_steps=2))
    assert "row 3 (id '000002'): x_B 'images/000002_x_B.png' is missing" in str(e.value)
    assert not out.exists()


def test_validation_grids_follow_the_model_and_leave_training_untouched(tiny_pairs, tiny_base, tmp_path, monkeypatch):
    from PIL import Image

    import pedit.train.loop as train_module

    # What the grids show and what they leave behind, not their sampling quality: 2 steps, 2 mask draws.
    monkeypatch.setattr(train_module, "VALIDATION_STEPS", 2)
    monkeypatch.setattr(train_module, "VALIDATION_MASK_NOISES", 2)
    shown = train(_cfg(tiny_pairs, tiny_base, tmp_path / "v", max_steps=2, checkpoint_every=2, validate_every=1))
    plain = train(_cfg(tiny_pairs, tiny_base, tmp_path / "n", max_steps=2, checkpoint_every=2))
    # Editing with the EMA weights in between must restore the trained ones exactly (and draw no randomness).
    raw = [load_file(str(m / "checkpoints" / "step-000002" / "model.safetensors")) for m in (shown, plain)]
    assert all(torch.equal(raw[0][k], raw[1][k]) for k in raw[0])
    a, b = _unet_weights(shown), _unet_weights(plain)
    assert all(torch.equal(a[k], b[k]) for k in a)
    grids = [np.asarray(Image.open(shown / "validation" / f"step-00000{i}.png")) for i in (1, 2)]
    assert grids[0].shape == grids[1].shape and grids[0].shape[1] > grids[0].shape[0]  # input + 8 directions a row
    assert not np.array_equal(grids[0], grids[1])  # the edits come from the model being trained


def test_gradient_checkpointing_trains_to_the_same_weights(tiny_pairs, tiny_base, tmp_path):
    plain = train(_cfg(tiny_pairs, tiny_base, tmp_path / "plain", max_steps=2, checkpoint_every=2))
    ckpt = train(_cfg(tiny_pairs, tiny_base, tmp_path / "gc", max_steps=2, checkpoint_every=2,
                      gradient_checkpointing=True))
    a, b = _unet_weights(plain), _unet_weights(ckpt)
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


def test_accelerate_launch_with_two_cpu_processes(tiny_pairs, tiny_base, tmp_path):
    """`accelerate launch -m pedit train` (DDP over gloo): one report, one model, every step logged once."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    out = tmp_path / "ddp"
    launcher = Path(sys.executable).with_name("accelerate")
    done = subprocess.run(
        [str(launcher), "launch", "--num_processes", "2", "--cpu", "--num_machines", "1", "--mixed_precision", "no",
         "--dynamo_backend", "no", "-m", "pedit", "train", "--data", str(tiny_pairs), "-o", str(out),
         "--base", str(tiny_base), "--max-steps", "2", "--batch-size", "2", "--validate-every", "0"],
        capture_output=True, text=True, timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "200"},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stderr.count("TrainConfig(") == 1 and done.stderr.count("Model written to") == 1
    assert [r.split(",")[0] for r in (out / "loss.csv").read_text().splitlines()] == ["step", "1", "2"]
    assert json.loads((out / "pedit.json").read_text())["training"]["batch_size"] == 2


@pytest.fixture
def fresh_accelerator_state():
    """accelerate keeps one AcceleratorState per process and refuses a second mixed-precision setting;
    a real run is one process per training, so the test resets it around itself."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state()
    yield
    AcceleratorState._reset_state()


def test_bf16_mixed_precision_trains_and_saves_fp32_weights(tiny_pairs, tiny_base, tmp_path, fresh_accelerator_state):
    out = train(_cfg(tiny_pairs, tiny_base, tmp_path / "bf16", max_steps=2, mixed_precision="bf16"))
    weights = _unet_weights(out)
    assert all(w.dtype == torch.float32 and torch.isfinite(w).all() for w in weights.values())
    losses = [float(r.split(",")[1]) for r in (out / "loss.csv").read_text().splitlines()[1:]]
    assert len(losses) == 2 and all(np.isfinite(losses))
