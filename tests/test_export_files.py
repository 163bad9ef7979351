"""The files of an engines folder (pedit.export.graph_files, pipeline.py): external data, fp16 graphs,
one export at a time, debris of killed exports, engines checked against the model they are used with,
and graphs that declare their shapes. onnx.checker is the oracle for graph validity."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from pedit.errors import ConfigError, OutputError
from pedit.export import graph_files
from pedit.export.onnx_stage import FP16_TOLERANCE, ExportError, ort_session
from pedit.export.pipeline import ExportConfig, export_model, read_manifest
from pedit.export.specs import dims_of, network_specs, random_inputs, torch_module
from pedit.files import temp_path
from pedit.model.loading import load_model


@pytest.fixture(scope="module")
def model(random_model):
    return load_model(random_model)


@pytest.fixture(scope="module")
def external(random_model, model, tmp_path_factory):
    """The U-Net and VAE decoder exported with external data forced (threshold 0), fp32 and fp16."""
    out = tmp_path_factory.mktemp("ext") / "engines"
    log = []
    manifest = export_model(ExportConfig(model=str(random_model), output=str(out), networks=("unet", "vae_decoder"),
                                         external_mb=0, fp16=True), log.append, model=model)
    return out, manifest, log


def test_large_graphs_keep_their_weights_in_one_data_file_hashed_in_the_manifest(external, model):
    out, manifest, log = external
    names = sorted(p.name for p in out.iterdir())
    assert names == [".export.lock", "manifest.json", "unet.fp16.onnx", "unet.fp16.onnx.data", "unet.onnx",
                     "unet.onnx.data", "vae_decoder.fp16.onnx", "vae_decoder.fp16.onnx.data", "vae_decoder.onnx",
                     "vae_decoder.onnx.data"]  # one data file per graph, nothing else left behind
    rec = manifest["networks"]["unet"]["onnx"]
    assert rec["data"]["file"] == "unet.onnx.data"
    assert rec["data"]["sha256"] == graph_files.file_sha256(out / "unet.onnx.data")
    assert (out / "unet.onnx").stat().st_size < (out / "unet.onnx.data").stat().st_size / 2  # the weights went
    for name in names[1:]:  # data files get the graphs' mode (the umask's), not onnx's 0600
        assert (out / name).stat().st_mode & 0o777 == (out / "manifest.json").stat().st_mode & 0o777, name
    onnx.checker.check_model(str(out / "unet.onnx"))  # the oracle: a valid graph with its external data
    # Large graphs are parity-checked at the smallest profile batch only (1 row for the U-Net: the
    # smallest call of its mask profile, which takes 2 rows a draw).
    assert rec["parity"]["batches"] == [1]
    assert any("weights in unet.onnx.data" in m for m in log)
    # ONNX Runtime loads the graph and its data and agrees with torch at another batch.
    d = dims_of(model)
    spec = network_specs(d)["unet"]
    x = random_inputs(spec, d, 10, seed=5)
    got = ort_session(out / "unet.onnx").run(None, {k: v.numpy() for k, v in x.items()})[0]
    with torch.no_grad():
        want = torch_module("unet", model)(*x.values()).numpy()
    assert np.abs(got - want).max() < 1e-4


def test_fp16_graphs_keep_fp32_io_and_match_torch_within_the_stated_tolerance(external, model):
    out, manifest, _ = external
    for name in ("unet", "vae_decoder"):
        rec = manifest["networks"][name]["onnx_fp16"]
        assert rec["precision"] == "fp16" and rec["parity"]["tolerance"] == FP16_TOLERANCE
        graph = onnx.load(str(out / rec["file"]), load_external_data=False)
        onnx.checker.check_model(str(out / rec["file"]))
        io_types = {v.type.tensor_type.elem_type for v in (*graph.graph.input, *graph.graph.output)}
        assert io_types == {onnx.TensorProto.FLOAT}  # float32 in and out
        weights = [i.data_type for i in graph.graph.initializer if i.data_type in (1, 10)]
        assert weights.count(onnx.TensorProto.FLOAT16) > 0.9 * len(weights)  # fp16 inside
    # ONNX Runtime on the CPU runs the fp16 U-Net: close to fp32 torch (within the tolerance), not equal.
    d = dims_of(model)
    spec = network_specs(d)["unet"]
    x = random_inputs(spec, d, 5, seed=11)
    got = ort_session(out / "unet.fp16.onnx").run(None, {k: v.numpy() for k, v in x.items()})[0]
    with torch.no_grad():
        want = torch_module("unet", model)(*x.values()).numpy()
    rel = np.abs(got - want).max() / np.abs(want).max()
    assert got.dtype == np.float32 and 0 < rel < FP16_TOLERANCE


def test_a_missing_or_altered_data_file_is_one_error_line(random_model, external, tmp_path):
    from pedit.export.backends import load_editor

    for damage in ("missing", "altered"):
        out = Path(shutil.copytree(external[0], tmp_path / damage))
        data = out / "unet.onnx.data"
        if damage == "missing":
            data.unlink()
        else:
            raw = bytearray(data.read_bytes())
            raw[len(raw) // 2] ^= 0xFF
            data.write_bytes(bytes(raw))
        with pytest.raises(ConfigError, match=f"is damaged: {data} (is missing|differs from the one exported)") as err:
            load_editor(random_model, device="cpu", backend="onnx", engines=out)
        assert "\n" not in str(err.value)
        if damage == "missing":  # ONNX Runtime's own failure on such a graph is one line too
            with pytest.raises(ExportError, match="ONNX Runtime cannot load") as err:
                ort_session(out / "unet.onnx")
            assert "\n" not in str(err.value)
        # `pedit export` there redoes the damaged graph instead.
        log = []
        export_model(ExportConfig(model=str(random_model), output=str(out), networks=("unet",), external_mb=0), log.append)
        assert log[0].startswith("unet: ONNX written")


def test_parity_failure_and_interrupts_leave_neither_graph_nor_data(random_model, model, tmp_path, monkeypatch):
    import pedit.export.onnx_stage as stage

    monkeypatch.setattr(stage, "parity", lambda *a, **k: {"max_abs": 0.5, "max_rel": 0.2, "batches": [1], "seed": 0})
    with pytest.raises(ExportError, match="disagrees with torch"):
        export_model(ExportConfig(model=str(random_model), output=str(tmp_path), networks=("vae_decoder",), external_mb=0),
                     model=model)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".export.lock"]

    def interrupt(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(stage, "parity", interrupt)  # Ctrl-C after the graph and its data were written
    with pytest.raises(KeyboardInterrupt):
        export_model(ExportConfig(model=str(random_model), output=str(tmp_path), networks=("vae_decoder",), external_mb=0),
                     model=model)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".export.lock"]


def test_a_killed_exports_temp_graph_and_data_are_removed_by_the_next_export(random_model, model, tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)
    staged = temp_path(tmp_path / "unet.onnx")
    staged = staged.with_name(staged.name.replace(f"-{__import__('os').getpid()}-", f"-{pid}-"))
    staged.mkdir()
    (staged / "unet.onnx").write_bytes(b"half a graph")
    (staged / "unet.onnx.data").write_bytes(b"\0" * 4096)
    (tmp_path / f".unet.onnx.{pid}.tmp").write_bytes(b"an older pedit's temp graph")
    live = temp_path(tmp_path / "photo.png")  # a live writer's temp (this process): `-o .` may share the folder
    live.write_bytes(b"being written")
    log = []
    export_model(ExportConfig(model=str(random_model), output=str(tmp_path), networks=("vae_encoder",)), log.append, model=model)
    assert not staged.exists() and not (tmp_path / f".unet.onnx.{pid}.tmp").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([".export.lock", "manifest.json", "vae_encoder.onnx", live.name])
    assert sum("left by an export that was killed" in m for m in log) == 2


def test_one_export_owns_a_folder_at_a_time(random_model, model, tmp_path):
    cfg = ExportConfig(model=str(random_model), output=str(tmp_path), networks=("vae_encoder",))
    with graph_files.exclusive(tmp_path):  # another export holds the folder
        with pytest.raises(OutputError, match=rf"Another pedit export \(pid \d+\) is writing into {tmp_path}"):
            export_model(cfg, model=model)
        assert not (tmp_path / "manifest.json").exists() and not (tmp_path / "vae_encoder.onnx").exists()
    export_model(cfg, model=model)  # released: the next export proceeds
    assert (tmp_path / "vae_encoder.onnx").is_file()


def test_the_lock_of_a_killed_export_is_released(random_model, model, tmp_path):
    code = ("import sys, os, signal; sys.path.insert(0, sys.argv[2])\n"
            "from pathlib import Path; from pedit.export.graph_files import exclusive\n"
            "with exclusive(Path(sys.argv[1])):\n    print('held', flush=True); os.kill(os.getpid(), signal.SIGKILL)\n")
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path), str(Path(__file__).resolve().parents[1])],
                          capture_output=True, text=True)
    assert done.stdout == "held\n" and done.returncode == -9
    export_model(ExportConfig(model=str(random_model), output=str(tmp_path), networks=("vae_encoder",)), model=model)


def test_engines_of_a_model_whose_weights_changed_are_refused(random_model, tmp_path):
    from pedit.export.backends import load_editor

    src = Path(shutil.copytree(random_model, tmp_path / "model"))
    out = tmp_path / "engines"
    export_model(ExportConfig(model=str(src), output=str(out), networks=("unet",)))
    before = (out / "unet.onnx").read_bytes()
    unet = load_model(src).mcdm.unet  # another model at the same path: new U-Net weights
    with torch.no_grad():
        unet.conv_out.bias.add_(1.0)
    unet.save_pretrained(src / "unet", safe_serialization=True)
    with pytest.raises(ConfigError, match="was exported from another model, or from this one before its U-Net weights changed"):
        load_editor(src, device="cpu", backend="onnx", engines=out)
    assert (out / "unet.onnx").read_bytes() == before  # refused, not exported over


def test_vae_encoder_graph_declares_its_output_shape(random_model, model, tmp_path):
    export_model(ExportConfig(model=str(random_model), output=str(tmp_path), networks=("vae_encoder",)), model=model)
    d = dims_of(model)
    inferred = onnx.shape_inference.infer_shapes(onnx.load(str(tmp_path / "vae_encoder.onnx")), strict_mode=True)
    (out,) = inferred.graph.output
    dims = [x.dim_param or x.dim_value for x in out.type.tensor_type.shape.dim]
    assert dims == ["B", d.latent_channels, d.latent, d.latent]
    assert json.loads((tmp_path / "manifest.json").read_text())["networks"]["vae_encoder"]["spec"]["outputs"]["c_s"][
        "shape"] == ["B", d.latent_channels, d.latent, d.latent]
    assert read_manifest(tmp_path)["networks"]["vae_encoder"]["onnx"]["parity"]["max_rel"] < 1e-4
