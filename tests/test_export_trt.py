"""The TensorRT layer (pedit.export.trt) against a stand-in for TensorRT 10.x and 11.x (tests/fake_tensorrt.py:
TensorRT itself cannot be installed here), and a type check of trt.py against the published
tensorrt-stubs (10.13). What a real TensorRT does on a GPU is tested in test_export.py where it is installed."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

import fake_tensorrt
from pedit.export import trt
from pedit.export.onnx_stage import FP16_TOLERANCE
from pedit.export.pipeline import ExportConfig, export_model
from pedit.export.specs import NetworkSpec, TensorSpec, dims_of, network_specs, random_inputs, torch_module
from pedit.model.loading import load_model

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def model(random_model):
    return load_model(random_model)


def _use(monkeypatch, variant):
    """Install the stand-in as `tensorrt`; TensorRT's GPU check is skipped (the runner binds host memory)."""
    fake = fake_tensorrt.make(variant)
    monkeypatch.setitem(sys.modules, "tensorrt", fake)
    monkeypatch.setattr(trt, "require", trt._tensorrt)
    return fake


@pytest.mark.parametrize("variant", ["10", "11"])
def test_one_code_path_builds_strongly_typed_engines_on_10_and_11(variant, random_model, model, tmp_path, monkeypatch):
    fake = _use(monkeypatch, variant)
    out = tmp_path / "engines"
    manifest = export_model(ExportConfig(model=str(random_model), output=str(out), trt=True,
                                         networks=("unet", "text_encoder")), model=model)
    unet, text = manifest["networks"]["unet"], manifest["networks"]["text_encoder"]
    # The U-Net's engine comes from its fp16 graph; the text encoder has none (onnx_stage.FP16_NETWORKS).
    assert unet["trt"]["graph"] == "unet.fp16.onnx" and unet["trt"]["precision"] == "fp16"
    assert text["trt"]["graph"] == "text_encoder.onnx" and text["trt"]["precision"] == "fp32"
    assert "onnx_fp16" not in text
    assert fake.calls["built"] == [str(out / "unet.fp16.onnx"), str(out / "text_encoder.onnx")]
    # Binding dtypes as the engine reports them: fp32 I/O around the fp16 graph, int64 token ids.
    assert unet["trt"]["io"] == {"z_in": "float32", "t": "float32", "context": "float32", "eps": "float32"}
    assert text["trt"]["io"] == {"input_ids": "int64", "c_p": "float32"}
    assert unet["trt"]["tensorrt"] == fake.__version__
    assert (out / "timing.cache").read_bytes() == b"fake-timing-cache"

    # The engine runs (through the stand-in, ONNX Runtime on the fp16 graph) and matches fp32 torch.
    d = dims_of(model)
    spec = network_specs(d)["unet"]
    runner = trt.TrtRunner(out / "unet.plan", spec, device="cpu")
    x = random_inputs(spec, d, 5, seed=7)
    got = runner(**x)["eps"]
    with torch.no_grad():
        want = torch_module("unet", model)(*x.values())
    assert got.dtype == torch.float32 and got.shape == want.shape
    assert 0 < (got - want).abs().max() / want.abs().max() < FP16_TOLERANCE  # fp16 inside: close, not equal


def test_binding_dtypes_are_read_from_the_engine_not_assumed(tmp_path, monkeypatch):
    """A graph with fp16 inputs and outputs: buffers must be fp16, or the engine reads garbage."""
    import onnx
    from onnx import TensorProto, helper

    _use(monkeypatch, "11")
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT16, ["B", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT16, ["B", 4])
    graph = helper.make_graph([helper.make_node("Add", ["x", "x"], ["y"])], "double", [x], [y])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "half.onnx")
    spec = NetworkSpec("half", inputs=(TensorSpec("x", ("B", 4)),), outputs=(TensorSpec("y", ("B", 4)),),
                       profiles={"p": (1, 2, 4)})
    built = trt.build_engine(tmp_path / "half.onnx", tmp_path / "half.plan", spec, trt.BuildSettings())
    assert built["io"] == {"x": "float16", "y": "float16"}
    runner = trt.TrtRunner(tmp_path / "half.plan", spec, device="cpu")
    inp = torch.tensor([[0.5, -1.0, 2.0, 3.25], [1.0, 2.0, 4.0, 8.0]])  # float32 in: cast to the engine's fp16
    out = runner(x=inp)["y"]
    assert out.dtype == torch.float16 and torch.equal(out, (2 * inp).half())


def test_tensorrt_failures_are_one_error_line(random_model, model, tmp_path, monkeypatch):
    d = dims_of(model)
    spec = network_specs(d)["vae_decoder"]
    _use(monkeypatch, "10")
    out = tmp_path / "engines"
    export_model(ExportConfig(model=str(random_model), output=str(out), trt=True, networks=("vae_decoder",),
                              external_mb=0), model=model)
    # A plan built by another TensorRT version (or for another GPU: TensorRT returns None for both).
    _use(monkeypatch, "11")
    with pytest.raises(trt.TensorRTError, match=r"not an engine for this GPU and TensorRT version .* --trt --force"):
        trt.TrtRunner(out / "vae_decoder.plan", spec, device="cpu")
    # A damaged plan, a plan of another network.
    (tmp_path / "junk.plan").write_bytes(b"\x00junk")
    with pytest.raises(trt.TensorRTError, match="not an engine"):
        trt.TrtRunner(tmp_path / "junk.plan", spec, device="cpu")
    # A graph whose external data is gone: TensorRT cannot parse it.
    (out / "vae_decoder.fp16.onnx.data").unlink()
    with pytest.raises(trt.TensorRTError, match="TensorRT could not parse") as err:
        trt.build_engine(out / "vae_decoder.fp16.onnx", tmp_path / "x.plan", spec, trt.BuildSettings())
    assert "\n" not in str(err.value)
    # An exception from inside TensorRT's bindings becomes a TensorRTError too.
    monkeypatch.setattr(sys.modules["tensorrt"], "Builder", lambda logger: 1 / 0)
    with pytest.raises(trt.TensorRTError, match="TensorRT failed to build an engine for vae_decoder: ZeroDivisionError"):
        trt.build_engine(out / "vae_decoder.onnx", tmp_path / "x.plan", spec, trt.BuildSettings())


def test_a_broken_or_stub_only_tensorrt_says_so(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    with pytest.raises(trt.TensorRTError, match=r"TensorRT is not installed"):
        trt._tensorrt()
    import types

    monkeypatch.setitem(sys.modules, "tensorrt", types.ModuleType("tensorrt"))  # tensorrt-stubs alone: no Builder
    with pytest.raises(trt.TensorRTError, match=r"TensorRT is not installed"):
        trt._tensorrt()
    (tmp_path / "tensorrt.py").write_text("raise OSError('libnvinfer.so.10: cannot open shared object file')\n")
    monkeypatch.delitem(sys.modules, "tensorrt")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(trt.TensorRTError, match="installed but does not load .OSError: libnvinfer"):
        trt._tensorrt()


def test_weak_typing_and_fp16_flag_are_never_used(tmp_path, monkeypatch):
    """10.x: a network without STRONGLY_TYPED or a config with FP16 fails to build in the stand-in."""
    fake = _use(monkeypatch, "10")
    assert trt.network_flags(fake) == 1 << 1
    fake11 = fake_tensorrt.make("11")
    del fake11.NetworkDefinitionCreationFlag.STRONGLY_TYPED
    assert trt.network_flags(fake11) == 0  # 11 without the flag: every network is strongly typed
    old = fake_tensorrt.make("10")
    old.__version__ = "8.6.1"
    del old.NetworkDefinitionCreationFlag.STRONGLY_TYPED
    with pytest.raises(trt.TensorRTError, match="needs TensorRT 10 or 11"):
        trt.network_flags(old)
    source = (ROOT / "pedit/export/trt.py").read_text()
    assert "BuilderFlag.FP16" not in source.replace("`BuilderFlag.FP16`", "")
    assert "platform_has_fast_fp16" not in source.replace("`platform_has_fast_fp16`", "")


# ---------------------------------------------------------------- type check against tensorrt-stubs


STUBS = Path(os.environ.get("PEDIT_TRT_STUBS", Path(sys.prefix) / "typing" / "tensorrt-stubs"))
MYPY_CONFIG = """
[mypy]
follow_imports = skip
ignore_missing_imports = True
check_untyped_defs = True
[mypy-tensorrt,tensorrt.*,tensorrt_bindings,tensorrt_bindings.*]
follow_imports = silent
"""


def _repaired_stubs(tmp_path) -> Path:
    """tensorrt-stubs 10.13 as published has lines that are not Python (pybind11-stubgen output:
    parameters named `in`, a required parameter after defaulted ones), which stop mypy: a copy with
    those renamed. Errors inside the stubs are not counted (only the checked file's)."""
    import re
    import shutil

    copy = Path(shutil.copytree(STUBS, tmp_path / "stubs"))
    pyi = copy / "tensorrt_bindings" / "tensorrt.pyi"
    text = re.sub(r"([(,] ?)in: ", r"\1in_: ", pyi.read_text())
    pyi.write_text(text.replace("power: Weights = None, channel_axis: int)", "power: Weights = None, channel_axis: int = ...)"))
    return copy


def _mypy_errors(tmp_path, stubs: Path, target: Path) -> list[str]:
    (tmp_path / "mypy.ini").write_text(MYPY_CONFIG)
    done = subprocess.run([sys.executable, "-m", "mypy", "--config-file", str(tmp_path / "mypy.ini"),
                           "--cache-dir", str(tmp_path / "cache"), str(target)],
                          capture_output=True, text=True, env={**os.environ, "MYPYPATH": str(stubs)}, cwd=ROOT, timeout=600)
    assert "errors prevented further checking" not in done.stdout, done.stdout[-2000:]
    return [line for line in done.stdout.splitlines() if line.startswith(str(target)) and ": error:" in line]


@pytest.mark.skipif(not (STUBS / "tensorrt").is_dir(), reason=f"tensorrt-stubs not found in {STUBS} (install: pip install "
                    f"--no-deps --target {STUBS} tensorrt-stubs==10.13.0.35.1; or set PEDIT_TRT_STUBS)")
def test_trt_module_type_checks_against_tensorrt_stubs(tmp_path):
    pytest.importorskip("mypy", reason="mypy is not installed (pip install mypy)")
    stubs = _repaired_stubs(tmp_path)
    bad = tmp_path / "bad_trt.py"  # the check is live: attributes TensorRT 10.13 lacks are errors
    bad.write_text(textwrap.dedent("""
        import tensorrt as trt
        def f() -> None:
            trt.Builder(trt.Logger(trt.Logger.WARNING)).create_network(0).no_such_call()
            trt.BuilderFlag.NO_SUCH_FLAG
    """))
    errors = _mypy_errors(tmp_path, stubs, bad)
    assert len(errors) == 2 and "no_such_call" in errors[0] and "NO_SUCH_FLAG" in errors[1], errors
    target = Path("pedit") / "export" / "trt.py"
    assert _mypy_errors(tmp_path, stubs, target) == []


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA: the runner's own stream")
def test_runner_enqueues_on_its_own_stream_without_a_host_sync(tmp_path, monkeypatch):
    """On CUDA the stand-in cannot read device memory: its enqueue records the stream and writes nothing."""
    import onnx
    from onnx import TensorProto, helper

    fake = _use(monkeypatch, "11")
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", 4])
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "relu", [x], [y])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "relu.onnx")
    spec = NetworkSpec("relu", inputs=(TensorSpec("x", ("B", 4)),), outputs=(TensorSpec("y", ("B", 4)),),
                       profiles={"p": (1, 2, 4)})
    trt.build_engine(tmp_path / "relu.onnx", tmp_path / "relu.plan", spec, trt.BuildSettings())
    runner = trt.TrtRunner(tmp_path / "relu.plan", spec)
    runner.context.execute_async_v3 = lambda handle: fake.calls["streams"].append(int(handle)) or True
    inp = torch.randn(2, 4, device="cuda")
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        out = runner(x=inp)["y"]
    finally:
        torch.cuda.set_sync_debug_mode("default")
    (handle,) = fake.calls["streams"]
    assert handle == runner.stream.cuda_stream
    assert handle not in (0, 1, 2, torch.cuda.default_stream().cuda_stream)  # 0: legacy default; 1, 2: per-thread
    assert out.device.type == "cuda" and out.dtype == torch.float32
