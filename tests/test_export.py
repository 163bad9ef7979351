"""Export (pedit.export): specs and profiles, ONNX graphs that match torch, the manifest, skipped and
forced stages, the buffer binding shared with TensorRT (exercised against ONNX Runtime), and the
TensorRT layer where it is installed."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from pedit.export import trt
from pedit.export.bindings import BindingError, OrtBoundRunner, choose_profile, plan_io
from pedit.export.onnx_stage import ExportError, ort_session
from pedit.export.pipeline import NETWORKS, ExportConfig, export_model, read_manifest
from pedit.export.specs import dims_of, network_specs, random_inputs, torch_module
from pedit.model.loading import load_model


@pytest.fixture(scope="module")
def model(random_model):
    return load_model(random_model)


@pytest.fixture(scope="module")
def exported(random_model, model, tmp_path_factory):
    """Every network of the tiny random model exported once; tests that change it copy it first."""
    out = tmp_path_factory.mktemp("engines") / "engines"
    messages = []
    manifest = export_model(ExportConfig(model=str(random_model), output=str(out)), messages.append, model=model)
    return out, manifest, messages


def test_unet_spec_has_the_five_row_sampler_and_the_mask_profile(model):
    d = dims_of(model)
    spec = network_specs(d, n_noise=10)["unet"]
    assert d.context_length == 77 + model.mcdm.num_image_tokens
    assert [t.concrete(5) for t in spec.inputs] == [(5, 8, d.latent, d.latent), (5,), (5, d.context_length, d.width)]
    # mask: from 1 row (2 rows a draw; N = 1 sends 2), opt the 2 x N-row mask call, up to 5 x N rows
    assert spec.profiles == {"sampler": (5, 5, 5), "mask": (1, 20, 50)}
    assert network_specs(d, n_noise=3)["unet"].profiles["mask"] == (1, 6, 15)
    assert trt.profile_shapes(spec)[1]["context"] == ((1, d.context_length, d.width), (20, d.context_length, d.width),
                                                      (50, d.context_length, d.width))
    assert trt.profile_shapes(spec)[0]["t"] == ((5,), (5,), (5,))  # one timestep a row: t follows the batch


def test_export_writes_every_network_with_parity_in_the_manifest(exported, model):
    out, manifest, messages = exported
    assert set(manifest["networks"]) == set(NETWORKS)
    assert json.loads((out / "manifest.json").read_text()) == manifest
    assert {"torch", "onnx", "onnxruntime", "pedit"} <= set(manifest["tools"])
    assert len(manifest["model_hash"]) == 64
    for name in NETWORKS:
        entry = manifest["networks"][name]["onnx"]
        assert (out / entry["file"]).is_file() and entry["precision"] == "fp32"
        assert entry["parity"]["max_rel"] < 1e-4 and entry["parity"]["max_abs"] < 1e-3
        assert any(m.startswith(f"{name}: ONNX written") for m in messages)
    # Independently of the parity the export ran: a graph agrees with torch on another batch and seed.
    d = dims_of(model)
    spec = network_specs(d)["vae_decoder"]
    x = random_inputs(spec, d, 3, seed=99)
    want = torch_module("vae_decoder", model)(*x.values()).numpy()
    got = ort_session(out / "vae_decoder.onnx").run(None, {k: v.numpy() for k, v in x.items()})[0]
    assert got.shape == (3, 3, 32, 32) and np.abs(got - want).max() < 1e-4


def test_unchanged_stages_are_skipped_changed_and_forced_ones_redone(random_model, exported, tmp_path):
    src_model = Path(shutil.copytree(random_model, tmp_path / "model"))
    out = Path(shutil.copytree(exported[0], tmp_path / "engines"))
    first = export_model(ExportConfig(model=str(src_model), output=str(out)))  # another folder: everything redone
    log = []
    again = export_model(ExportConfig(model=str(src_model), output=str(out)), log.append)
    assert log == [f"{n}: ONNX skipped (inputs unchanged)" for n in NETWORKS] + ["runtime files: skipped (unchanged)"]
    assert again["networks"] == first["networks"]

    # New projector weights: only the network made of them is exported again.
    proj = load_model(src_model).mcdm.image_projector
    with torch.no_grad():
        proj.norm.bias.add_(1.0)
    proj.save_pretrained(src_model / "image_projector", safe_serialization=True)
    log.clear()
    export_model(ExportConfig(model=str(src_model), output=str(out)), log.append)
    redone = [m.split(":")[0] for m in log if "written" in m]
    assert redone == ["image_projector"]

    # A damaged graph is redone even though its inputs did not change; --force redoes everything.
    (out / "unet.onnx").write_bytes(b"damaged")
    log.clear()
    export_model(ExportConfig(model=str(src_model), output=str(out), networks=("unet",)), log.append)
    assert log[0].startswith("unet: ONNX written")
    log.clear()
    export_model(ExportConfig(model=str(src_model), output=str(out), networks=("unet", "vae_encoder"), force=True), log.append)
    assert [m.split(":")[0] for m in log if "written" in m] == ["unet", "vae_encoder"]


def test_a_graph_that_disagrees_with_torch_is_not_kept(random_model, model, tmp_path, monkeypatch):
    import pedit.export.onnx_stage as stage

    monkeypatch.setattr(stage, "parity", lambda *a, **k: {"max_abs": 0.5, "max_rel": 0.2, "batches": [1], "seed": 0})
    with pytest.raises(ExportError, match=r"vae_decoder: the ONNX graph disagrees with torch \(max_rel 2.00e-01 > 0.001"):
        export_model(ExportConfig(model=str(random_model), output=str(tmp_path), networks=("vae_decoder",)), model=model)
    assert not (tmp_path / "vae_decoder.onnx").exists()
    assert "vae_decoder" not in read_manifest(tmp_path).get("networks", {})


def test_export_config_rejects_unknown_networks():
    from pedit.errors import ConfigError

    with pytest.raises(ConfigError, match="Unknown network"):
        ExportConfig(networks=("unet", "clip"))


# ---------------------------------------------------------------- binding (shared with TensorRT)


def test_profile_choice_covers_the_sampler_and_mask_batches(model):
    spec = network_specs(dims_of(model), n_noise=10)["unet"]
    assert choose_profile(spec, 5) == 0  # the sampler profile (opt 5), not the mask one
    assert choose_profile(spec, 50) == 1 and choose_profile(spec, 15) == 1 and choose_profile(spec, 2) == 1
    for bad in (51, 60):
        with pytest.raises(BindingError, match=f"batch {bad} fits no profile"):
            choose_profile(spec, bad)


def test_plan_io_checks_shapes_and_allocates_outputs(model):
    d = dims_of(model)
    spec = network_specs(d)["unet"]
    x = random_inputs(spec, d, 5, seed=0, dtype=torch.bfloat16)
    plan = plan_io(spec, x, torch.float32)
    assert plan.batch == 5 and plan.profile == 0
    assert all(v.dtype == torch.float32 and v.is_contiguous() for v in plan.inputs.values())
    assert plan.outputs["eps"].shape == (5, 4, d.latent, d.latent)
    with pytest.raises(BindingError, match="inputs disagree on the batch size"):
        plan_io(spec, {**x, "context": x["context"][:4]}, torch.float32)
    with pytest.raises(BindingError, match="expected inputs"):
        plan_io(spec, {"z_in": x["z_in"]}, torch.float32)


def test_io_bound_runner_matches_torch_at_both_profiles(exported, model):
    out, _, _ = exported
    d = dims_of(model)
    spec = network_specs(d)["unet"]
    runner = OrtBoundRunner(ort_session(out / "unet.onnx"), spec)
    module = torch_module("unet", model)
    for batch in (5, 50):
        x = random_inputs(spec, d, batch, seed=batch)
        got = runner(**x)["eps"]
        with torch.no_grad():
            want = module(*x.values())
        assert got.shape == want.shape and (got - want).abs().max() < 1e-4


def test_tensorrt_missing_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # import fails as where it is not installed
    with pytest.raises(trt.TensorRTError, match=r"pip install pedit\[trt\]"):
        trt.build_engine(Path("x.onnx"), Path("x.plan"), None, trt.BuildSettings())
    assert not trt.available()


@pytest.mark.skipif(not trt.available(), reason="tensorrt is not installed or no CUDA GPU (pip install pedit[trt] on an NVIDIA machine)")
def test_tensorrt_engine_matches_onnx_runtime(exported, model, tmp_path):
    out, manifest, _ = exported
    d = dims_of(model)
    spec = network_specs(d)["unet"]
    trt.build_engine(out / "unet.onnx", tmp_path / "unet.plan", spec, trt.BuildSettings(), tmp_path / "timing.cache")
    runner = trt.TrtRunner(tmp_path / "unet.plan", spec)
    ort_runner = OrtBoundRunner(ort_session(out / "unet.onnx", ["CPUExecutionProvider"]), spec)
    for batch in (5, 50):
        x = random_inputs(spec, d, batch, seed=batch)
        got = runner(**{k: v.cuda() for k, v in x.items()})["eps"].cpu()
        want = ort_runner(**x)["eps"]
        assert (got - want).abs().max() / want.abs().max() < 2e-2  # fp16 engine vs fp32 graph


def test_export_modules_import_no_cli_layer():
    code = ("import sys\nimport pedit.export.pipeline, pedit.export.backends, pedit.export.bench, pedit.export.trt\n"
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'click', 'rich', 'tensorrt', 'onnxruntime'}))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1])
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_a_same_size_rewrite_with_the_old_mtime_is_hashed_again(tmp_path, monkeypatch):
    """`cp -p` / `rsync -a` keep size and mtime: the memo must not serve the old bytes' hash."""
    import os
    import time

    import pedit.cache
    from pedit.cache import folder_hash

    monkeypatch.setattr(pedit.cache, "RACY_SECONDS", -1.0)  # record even a just-written file: the key must still catch it
    (tmp_path / "unet").mkdir()
    weights = tmp_path / "unet" / "w.safetensors"
    weights.write_bytes(b"a" * 64)
    known = {}
    first = folder_hash(tmp_path, ("unet",), known)
    st = weights.stat()
    time.sleep(0.02)  # past the filesystem clock's tick, as any real copy is
    with open(weights, "r+b") as f:  # same inode, same size, new bytes, old mtime restored
        f.write(b"b" * 64)
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert weights.stat().st_size == st.st_size and weights.stat().st_mtime_ns == st.st_mtime_ns
    second = folder_hash(tmp_path, ("unet",), known)
    assert second != first
    assert folder_hash(tmp_path, ("unet",), {}) == second  # what hashing the bytes afresh gives


@pytest.mark.parametrize("kwargs, field", [({"n_noise": 10**6}, "n_noise"), ({"n_noise": 2.5}, "n_noise"),
                                            ({"n_noise": True}, "n_noise"), ({"tolerance": float("nan")}, "tolerance")])
def test_export_config_validates_its_numbers(kwargs, field):
    from pedit.errors import ConfigError

    with pytest.raises(ConfigError, match=f"^{field} must be"):
        ExportConfig(**kwargs)
