"""The settings an engines folder was exported with reach the backends (pedit.export.backends):
a folder whose profiles cover the caller's U-Net calls is used as it is, one that does not is widened
(the dynamic-batch ONNX graph kept, a TensorRT engine rebuilt), and every edit path says how many
rows it needs (pedit.edit.mask.unet_rows)."""

import dataclasses
import json
import shutil
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from pedit.cli import cli
from pedit.edit.mask import MaskConfig, unet_rows
from pedit.export import backends
from pedit.export.pipeline import ExportConfig, export_model, read_manifest
from pedit.export.specs import dims_of, network_specs, random_inputs
from pedit.model.loading import load_model
from pedit.model.sampling_settings import SamplingSettings


@pytest.fixture(scope="module")
def model(random_model):
    return load_model(random_model)


@pytest.fixture(scope="module")
def unet20(random_model, model, tmp_path_factory) -> Path:
    """`pedit export --networks unet --mask-noises 20`: read-only, copy before changing."""
    out = tmp_path_factory.mktemp("unet20") / "eng"
    export_model(ExportConfig(model=str(random_model), output=str(out), networks=("unet",), n_noise=20), model=model)
    return out


def _without_hash_cache(manifest) -> dict:
    data = json.loads(manifest.read_bytes() if isinstance(manifest, Path) else manifest)
    data.pop("file_hashes", None)
    return data


def _mask_profile(folder: Path) -> list:
    return read_manifest(folder)["networks"]["unet"]["spec"]["profiles"]["mask"]


def test_unet_rows_is_the_largest_call_an_edit_makes():
    assert unet_rows(MaskConfig(n_noise=20)) == 40  # 2 rows (3-4) x 20 draws in one call
    assert unet_rows(MaskConfig(n_noise=20, batch=4)) == 8  # split: 4 draws a call
    assert unet_rows(MaskConfig(n_noise=30, batch=40)) == 60  # a batch beyond N is N
    assert unet_rows(MaskConfig(n_noise=2)) == 5  # a mask call smaller than the 5-row sampling step
    assert unet_rows(MaskConfig(n_noise=10), images=4) == 80  # eval's batched pairs
    assert unet_rows(None) == 5  # no mask: the sampling step


def test_onnx_backend_uses_the_folder_as_exported(model, unet20, tmp_path):
    folder = Path(shutil.copytree(unet20, tmp_path / "eng"))
    onnx_bytes, manifest_bytes = (folder / "unet.onnx").read_bytes(), (folder / "manifest.json").read_bytes()
    log = []
    denoise = backends.make_denoise(model, "onnx", folder, log.append, rows=50)
    assert log == ["unet: ONNX skipped (inputs unchanged)"]
    # The manifest's records are unchanged; its cache of the model files' hashes may fill in once they are
    # older than pedit.cache.RACY_SECONDS (a file changed within that of its hash is hashed again).
    assert _without_hash_cache(folder / "manifest.json") == _without_hash_cache(manifest_bytes)
    assert (folder / "unet.onnx").read_bytes() == onnx_bytes
    # The runner takes the folder's profiles: a 100-row call (20 draws) fits, as exported.
    d = dims_of(model)
    x = random_inputs(network_specs(d)["unet"], d, 100, seed=0)
    eps = denoise(x["z_in"], torch.tensor(500), x["context"])
    want = backends.make_denoise(model, "torch")(x["z_in"], torch.tensor(500), x["context"])
    assert eps.shape == (100, 4, d.latent, d.latent) and (eps - want).abs().max() < 1e-4


def test_a_call_larger_than_the_profiles_widens_them_and_keeps_the_graph(model, unet20, tmp_path):
    folder = Path(shutil.copytree(unet20, tmp_path / "eng"))
    onnx_bytes = (folder / "unet.onnx").read_bytes()
    log = []
    denoise = backends.make_denoise(model, "onnx", folder, log.append, rows=150)
    assert log == ["unet: ONNX skipped (inputs unchanged)"] and (folder / "unet.onnx").read_bytes() == onnx_bytes
    assert _mask_profile(folder) == [1, 60, 150]
    d = dims_of(model)
    x = random_inputs(network_specs(d)["unet"], d, 150, seed=1)
    assert denoise(x["z_in"], torch.tensor(3), x["context"]).shape[0] == 150


def test_trt_engine_is_rebuilt_only_when_its_profiles_do_not_cover_the_call(model, unet20, tmp_path, monkeypatch):
    from pedit.export import trt

    built = []

    def fake_build(onnx_path, engine_path, spec, settings, timing_cache=None):  # TensorRT needs a GPU
        built.append(spec.profiles["mask"])
        engine_path.write_bytes(repr(spec.profiles).encode())
        return {"precision": "fp16", "io": {}}  # what trt.build_engine reports of the engine it built

    monkeypatch.setattr(trt, "build_engine", fake_build)
    folder = Path(shutil.copytree(unet20, tmp_path / "eng"))
    backends.engines_for(model, folder, trt=True, log=lambda m: None, rows=50)
    assert built == [(1, 40, 100)]  # the engine gets the export's profiles, not the default 10 draws
    log = []
    backends.engines_for(model, folder, trt=True, log=log.append, rows=100)
    assert built == [(1, 40, 100)] and log[-1] == "unet: TensorRT engine skipped (inputs unchanged)"
    log.clear()
    backends.engines_for(model, folder, trt=True, log=log.append, rows=5 * 30)
    assert built == [(1, 40, 100), (1, 60, 150)] and log[0] == "unet: ONNX skipped (inputs unchanged)"


def test_a_call_no_engine_can_take_asks_for_mask_batch(model, tmp_path):
    from pedit.errors import ConfigError

    with pytest.raises(ConfigError, match="split the editing mask's call with --mask-batch"):
        backends.engines_for(model, tmp_path / "eng", trt=False, log=lambda m: None, rows=5 * 1025)
    assert not (tmp_path / "eng").exists()


def test_edit_command_keeps_the_users_engines(random_model, unet20, tmp_path):
    from pedit.toon.world import render

    folder = Path(shutil.copytree(unet20, tmp_path / "eng"))
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    Image.fromarray(render(3, size=32)).save(tmp_path / "in.png")
    result = CliRunner().invoke(cli, ["edit", str(tmp_path / "in.png"), "-d", "royal", "-m", str(random_model),
                                      "--backend", "onnx", "--engines", str(folder), "--mask-noises", "20",
                                      "--steps", "1", "-o", str(tmp_path / "out.png")])
    assert result.exit_code == 0, result.output
    # The runtime (docs/runtime.md) adds the graphs and files it needs; what the user exported stays as it was.
    after = {p.name: p.read_bytes() for p in folder.iterdir()}
    assert {k: v for k, v in after.items() if k in before and k != "manifest.json"} == \
        {k: v for k, v in before.items() if k != "manifest.json"}
    assert {"vae_decoder.onnx", "tokenizer.json"} <= set(after)
    assert _mask_profile(folder) == [1, 40, 100]  # nothing re-exported, profiles kept


def test_eval_sizes_the_engine_for_its_batched_pairs(random_model, tiny_pairs, tmp_path):
    from pedit.eval.ground_truth import EvalConfig, evaluate

    cfg = EvalConfig(pairs=str(tiny_pairs), model=str(random_model), methods=("ours",), sampling=SamplingSettings(steps=1), limit=3, batch_size=3,
                     grid_pairs=0, imperfect_reference=False, backend="onnx", engines=str(tmp_path / "eng"))
    report = evaluate(cfg)  # the mask call of 3 pairs x 10 draws x 2 rows: 60 rows in one call (12 five-row units)
    assert report["methods"]["ours"]["pairs"] == 3 and _mask_profile(tmp_path / "eng") == [1, 24, 60]
    cfg2 = dataclasses.replace(cfg, sampling=SamplingSettings(steps=1, mask_batch=2))
    evaluate(cfg2)  # 3 pairs x 2 draws a call fit the folder as it is
    assert _mask_profile(tmp_path / "eng") == [1, 24, 60]


def test_onnx_graph_hash_leaves_profiles_out_and_the_spec_keeps_them(model, random_model, tmp_path):
    spec = network_specs(dims_of(model), n_noise=4)["unet"]
    assert "profiles" not in spec.describe(profiles=False) and spec.describe()["profiles"]["mask"] == [1, 8, 20]
    assert spec.with_profiles({"profiles": {"sampler": [5, 5, 5], "mask": [5, 40, 80]}}).profiles["mask"] == (5, 40, 80)
    for bad in ({}, {"profiles": {"mask": [5, 50]}}, {"profiles": {"mask": [50, 5, 5]}}, {"profiles": {"mask": "x"}}):
        with pytest.raises(ValueError):
            spec.with_profiles(bad)


def test_default_rows_cover_the_models_per_direction_mask_settings(random_model, tmp_path):
    """A model folder may give one direction more draws (pedit.json "mask_by_direction"): the engine
    must take that direction's mask call too."""
    import json

    folder = Path(shutil.copytree(random_model, tmp_path / "model"))
    meta = json.loads((folder / "pedit.json").read_text())
    meta["mask_by_direction"] = {"royal": {"n_noise": 30}}
    (folder / "pedit.json").write_text(json.dumps(meta))
    backends.load_editor(folder, device="cpu", backend="onnx", engines=tmp_path / "eng")
    assert _mask_profile(tmp_path / "eng") == [1, 24, 60]  # 30 draws x 2 rows = 60 rows
