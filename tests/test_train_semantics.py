"""What training computes, observed from outside the loop (paper §3.3), so each of these one-line bugs
fails a test: identity samples trained toward x_B or with p_b; c_s dropped on the c_im bit of the
dropout subset; the training seed ignored by the per-step generator; the model folder saved with
the raw weights instead of the EMA ones."""

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from pedit.model.mcdm import MCDM
from pedit.train.loop import TrainConfig, train


def _cfg(pairs, base, out, **kw):
    base_kw = dict(data=str(pairs), output=str(out), base=str(base), batch_size=4, max_steps=1, checkpoint_every=100,
                   validate_every=0, ema_decay=0.9, learning_rate=1e-2, drop_prob=0.0)
    return TrainConfig(**{**base_kw, **kw})


def _weights(folder):
    return {**load_file(str(folder / "unet" / "diffusion_pytorch_model.safetensors")),
            **{"proj." + k: v for k, v in load_file(str(folder / "image_projector" / "diffusion_pytorch_model.safetensors")).items()}}


def _max_diff(a, b):
    return max((a[k] - b[k]).abs().max().item() for k in a)


def _rows(folder):
    return [json.loads(line) for line in (folder / "metadata.jsonl").read_text().splitlines()]


@pytest.fixture
def other_x_B(tiny_pairs, tmp_path):
    """The pair folder with every x_B replaced by its colour negative (x_A, prompts, seeds unchanged)."""
    folder = shutil.copytree(tiny_pairs, tmp_path / "other-x_B")
    for row in _rows(folder):
        path = folder / row["x_B"]
        Image.fromarray(255 - np.asarray(Image.open(path).convert("RGB"))).save(path)
    return folder


@pytest.fixture
def other_p_b(tiny_pairs, tmp_path):
    """The pair folder with every p_b replaced by another prompt (images unchanged)."""
    folder = shutil.copytree(tiny_pairs, tmp_path / "other-p_b")
    rows = _rows(folder)
    for row in rows:
        row["p_b"] = "a woman wearing a sheep costume" if "sheep" not in row["p_b"] else "an angry woman"
    (folder / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


def test_identity_samples_learn_x_A_from_p_a_so_x_B_and_p_b_do_not_matter(tiny_pairs, other_x_B, other_p_b,
                                                                          tiny_base, tmp_path):
    ident = dict(identity_prob=1.0)
    ref = _weights(train(_cfg(tiny_pairs, tiny_base, tmp_path / "ref", **ident)))
    assert _max_diff(ref, _weights(train(_cfg(other_x_B, tiny_base, tmp_path / "xb", **ident)))) < 1e-6
    assert _max_diff(ref, _weights(train(_cfg(other_p_b, tiny_base, tmp_path / "pb", **ident)))) < 1e-6
    # The same changes do matter to ordinary samples: the comparison above can fail.
    plain = _weights(train(_cfg(tiny_pairs, tiny_base, tmp_path / "plain", identity_prob=0.0)))
    assert _max_diff(plain, _weights(train(_cfg(other_x_B, tiny_base, tmp_path / "plain-xb", identity_prob=0.0)))) > 1e-4
    assert _max_diff(plain, _weights(train(_cfg(other_p_b, tiny_base, tmp_path / "plain-pb", identity_prob=0.0)))) > 1e-4


def _record_forward(monkeypatch):
    seen = []
    real = MCDM.forward

    def forward(self, z_in, t, context, image_inputs=None, scales=None):
        assert scales is None  # a teacher's training rows carry no guidance scales
        seen.append((z_in.detach().clone(), context.detach().clone(), image_inputs[2].detach().clone()))
        return real(self, z_in, t, context, image_inputs)

    monkeypatch.setattr(MCDM, "forward", forward)
    return seen


def _dropped_subsets(seen, null_c_p):
    """Per training row, the set of conditions the U-Net received as null."""
    subsets = []
    for z_in, context, keep_im in seen:
        for i in range(z_in.shape[0]):
            dropped = set()
            if torch.count_nonzero(z_in[i, 4:]) == 0:
                dropped.add("c_s")
            if keep_im[i].item() == 0:
                dropped.add("c_im")
            if torch.equal(context[i], null_c_p):
                dropped.add("c_p")
            subsets.append(frozenset(dropped))
    return subsets


def test_dropout_drops_each_condition_on_its_own_bit(tiny_pairs, tiny_base, tmp_path, monkeypatch):
    from pedit.model.loading import load_base

    null_c_p = load_base(tiny_base)[1].encode_prompts([""])[0].float()
    seen = _record_forward(monkeypatch)
    train(_cfg(tiny_pairs, tiny_base, tmp_path / "all", batch_size=8, max_steps=5, drop_prob=1.0))
    subsets = _dropped_subsets(seen, null_c_p)
    assert len(subsets) == 40 and all(subsets)  # p = 1: every row drops a non-empty subset
    conditions = ("c_s", "c_im", "c_p")
    every = {frozenset(c for j, c in enumerate(conditions) if bits >> j & 1) for bits in range(1, 8)}
    assert set(subsets) == every  # all 7 occur: c_s, c_im and c_p each follow their own bit

    seen.clear()
    train(_cfg(tiny_pairs, tiny_base, tmp_path / "none", batch_size=8, max_steps=2, drop_prob=0.0))
    assert not any(_dropped_subsets(seen, null_c_p))  # p = 0: nothing dropped


@pytest.fixture(scope="module")
def one_pair(tmp_path_factory):
    """A pair folder with a single pair: the data order is then the same for every seed."""
    from pedit.data.gen_pairs import GenPairsConfig, generate_pairs

    return generate_pairs(GenPairsConfig(str(tmp_path_factory.mktemp("one") / "pairs"), n=1, resolution=32))


def test_the_training_seed_drives_each_steps_noise(one_pair, random_model, tiny_base, tmp_path):
    # Starting from a model folder (init_from) and one pair, the seed can change nothing but the
    # per-step draws (noise, timesteps, dropout, identity samples).
    def run(name, seed):
        return _weights(train(_cfg(one_pair, tiny_base, tmp_path / name, init_from=str(random_model), seed=seed,
                                   max_steps=2, drop_prob=0.2)))

    a, again, other = run("a", 0), run("again", 0), run("other", 1)
    assert _max_diff(a, again) == 0
    assert _max_diff(a, other) > 1e-4


def test_the_model_folder_holds_the_ema_weights_not_the_raw_ones(tiny_pairs, tiny_base, tmp_path):
    from pedit.model.loading import load_model

    out = train(_cfg(tiny_pairs, tiny_base, tmp_path / "m", max_steps=3, checkpoint_every=3))
    ckpt = out / "checkpoints" / "step-000003"
    ema = torch.load(ckpt / "custom_checkpoint_0.pkl", weights_only=True)["shadow_params"]
    raw = load_file(str(ckpt / "model.safetensors"))
    saved = list(load_model(out).mcdm.named_parameters())
    assert len(saved) == len(ema)
    assert all(torch.equal(p, e) for (_, p), e in zip(saved, ema))
    assert any(not torch.equal(p, raw[name]) for name, p in saved)  # after 3 steps EMA and raw differ
