"""The latent cache read as untrusted input, and a failing cache leaves no run (issue 19, items 2, 4).

pedit wrote the cache, but anyone may truncate or swap its files since: a changed tensor would train
silently. A cache that cannot be built or read says so in one line, and the run folder it would
have gone into is left as it was found (here: absent)."""

import errno
import os
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file
from safetensors import safe_open

from pedit.errors import OutputError, PairFolderError
from pedit.train.loop import TrainConfig, train


def _cfg(pairs, out, base, cache, **kw):
    return TrainConfig(**{**dict(data=str(pairs), output=str(out), base=str(base), batch_size=2, max_steps=1,
                                 validate_every=0, checkpoint_every=1, cache_dir=str(cache)), **kw})


@pytest.fixture
def built(tiny_pairs, tiny_base, tmp_path):
    """A latent cache built by one run; returns (cache root, its first shard)."""
    cache = tmp_path / "cache"
    train(_cfg(tiny_pairs, tmp_path / "first", tiny_base, cache))
    (shard,) = cache.glob("*/pairs-00000.safetensors")
    return cache, shard


def _rewrite(shard, change):
    with safe_open(str(shard), "pt") as f:
        meta = f.metadata()
    tensors = load_file(str(shard))
    change(tensors)
    save_file(tensors, str(shard), metadata=meta)  # the key stays: only a read-time check can tell


@pytest.mark.parametrize("change, needle", [
    (lambda t: t["mean_A"].view(-1)[0].fill_(float("nan")), "mean_A holds NaN or infinite values"),
    (lambda t: t.update(std_B=t["std_B"][:, :, :2].contiguous()), "std_B has shape"),
    (lambda t: t.update(clip_A=t["clip_A"].double()), "clip_A is torch.float64"),
])
def test_a_cache_whose_tensors_were_changed_is_refused_and_no_run_appears(built, tiny_pairs, tiny_base, tmp_path,
                                                                          change, needle):
    cache, shard = built
    _rewrite(shard, change)
    with pytest.raises(OutputError, match=f"Latent cache .* is damaged \\({needle}"):
        train(_cfg(tiny_pairs, tmp_path / "second", tiny_base, cache))
    assert not (tmp_path / "second").exists()


def test_a_truncated_shard_or_a_link_inside_the_cache_is_refused(built, tiny_pairs, tiny_base, tmp_path):
    cache, shard = built
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 2])
    with pytest.raises(OutputError, match="is damaged \\(SafetensorError"):
        train(_cfg(tiny_pairs, tmp_path / "second", tiny_base, cache))
    elsewhere = tmp_path / "elsewhere.safetensors"
    elsewhere.write_bytes(data)
    shard.unlink()
    shard.symlink_to(elsewhere)
    with pytest.raises(OutputError, match="pairs-00000.safetensors is a link"):
        train(_cfg(tiny_pairs, tmp_path / "second", tiny_base, cache))
    assert not (tmp_path / "second").exists()


def test_a_pedit_cache_that_links_out_of_the_pair_folder_is_refused(tiny_pairs, tiny_base, tmp_path):
    pairs = shutil.copytree(tiny_pairs, tmp_path / "pairs", ignore=shutil.ignore_patterns(".pedit-cache"))
    (tmp_path / "outside").mkdir()
    (pairs / ".pedit-cache").symlink_to(tmp_path / "outside")
    cfg = TrainConfig(data=str(pairs), output=str(tmp_path / "run"), base=str(tiny_base), batch_size=2, max_steps=1,
                      validate_every=0)
    with pytest.raises(PairFolderError, match=r"\.pedit-cache is a link"):
        train(cfg)
    assert os.listdir(tmp_path / "outside") == [] and not (tmp_path / "run").exists()


def test_a_cache_build_that_fails_says_so_and_leaves_no_run_folder(tiny_pairs, tiny_base, tmp_path, monkeypatch):
    import safetensors.torch

    def disk_full(*a, **kw):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(safetensors.torch, "save_file", disk_full)
    with pytest.raises(OutputError, match="The latent cache could not be written to .*No space left on device"):
        train(_cfg(tiny_pairs, tmp_path / "run", tiny_base, tmp_path / "cache"))
    assert not (tmp_path / "run").exists()  # a rerun is not refused as "already holds a training run"


def test_a_well_formed_shard_of_other_pairs_swapped_in_is_refused(built, tiny_pairs, tiny_base, tmp_path):
    """Issue 27, class 1: the other cache's shard has the right shapes, dtypes, finite values and even its
    own key in its metadata; only the content hash the manifest recorded tells it is not this cache's."""
    cache, shard = built
    other = shutil.copytree(tiny_pairs, tmp_path / "other-pairs", ignore=shutil.ignore_patterns(".pedit-cache"))
    from PIL import Image, ImageOps

    first = sorted((other / "images").glob("*_x_B.png"))[0]  # an image the cache encodes (a mask is not)
    ImageOps.invert(Image.open(first).convert("RGB")).save(first)
    train(_cfg(other, tmp_path / "other-run", tiny_base, tmp_path / "other-cache"))
    (other_shard,) = (tmp_path / "other-cache").glob("*/pairs-00000.safetensors")
    assert other_shard.read_bytes() != shard.read_bytes()  # really another cache's tensors
    with safe_open(str(shard), "pt") as f:
        meta = f.metadata()
    save_file(load_file(str(other_shard)), str(shard), metadata=meta)  # its key kept: looks like this cache's
    with pytest.raises(OutputError, match="is damaged \\(its files are not the ones it was written with"):
        train(_cfg(tiny_pairs, tmp_path / "second", tiny_base, cache))
    assert not (tmp_path / "second").exists()
