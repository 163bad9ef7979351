"""One cache root (pedit.cache) for every cache pedit writes, and what keys the TorchScript cache."""

from pathlib import Path

import pytest

from pedit.cache import cache_root


def test_cache_root_honours_pedit_cache_then_xdg_then_home(monkeypatch, tmp_path):
    monkeypatch.delenv("PEDIT_CACHE", raising=False)
    monkeypatch.delenv("PEDIT_CACHE_DIR", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_root() == tmp_path / "home" / ".cache" / "pedit"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_root("engines") == tmp_path / "xdg" / "pedit" / "engines"
    monkeypatch.setenv("PEDIT_CACHE_DIR", str(tmp_path / "old"))  # the older name still works
    assert cache_root("traced") == tmp_path / "old" / "traced"
    monkeypatch.setenv("PEDIT_CACHE", str(tmp_path / "c"))  # and the documented one wins
    assert cache_root("traced") == tmp_path / "c" / "traced"


def test_every_cache_lives_under_the_one_root(monkeypatch, tmp_path, random_model):
    from pedit.export import backends
    from pedit.model import traced
    from pedit.model.loading import load_model
    from pedit.stickers.pipeline import default_cache_dir

    monkeypatch.delenv("PEDIT_CACHE", raising=False)
    monkeypatch.delenv("PEDIT_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))  # the engines cache used to ignore it
    root = tmp_path / "xdg" / "pedit"
    assert traced.cache_dir() == root / "traced" and default_cache_dir() == root
    folder, _ = backends.engines_for(load_model(random_model), None, trt=False, log=lambda m: None, rows=5)
    assert folder.parent == root / "engines" and (folder / "unet.onnx").is_file()


def test_torchscript_key_follows_the_diffusers_and_transformers_versions(monkeypatch, random_model):
    import importlib.metadata as md

    from pedit.model import traced

    before = traced.model_key(Path(random_model))
    real = md.version
    for pkg in ("diffusers", "transformers"):
        monkeypatch.setattr(md, "version", lambda name, pkg=pkg: "0.0.1" if name == pkg else real(name))
        assert traced.model_key(Path(random_model)) != before, pkg
    monkeypatch.setattr(md, "version", real)
    assert traced.model_key(Path(random_model)) == before
