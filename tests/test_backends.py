"""Backends (pedit.export.backends), reduced precision, the split mask call, the VAE fallback and
`pedit bench`: each backend gives the sampler what eager torch gives it."""

import math
import sys

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from pedit.cli import cli
from pedit.edit.editor import EditOptions, Editor
from pedit.export.backends import load_editor
from pedit.edit.mask import MaskConfig
from pedit.export.backends import make_denoise
from pedit.export.specs import dims_of, network_specs, random_inputs
from pedit.model.loading import load_model
from pedit.model.sampling_settings import SamplingSettings
from conftest import TEST_DEVICE, with_settings  # PEDIT_TEST_DEVICE, default cpu


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    # Backends export into PEDIT_CACHE when no engines folder is given: never the user's home in tests.
    monkeypatch.setenv("PEDIT_CACHE", str(tmp_path_factory.getbasetemp() / "pedit-cache"))



def _unet_inputs(model, batch=5, seed=0):
    d = dims_of(model)
    x = random_inputs(network_specs(d)["unet"], d, batch, seed)
    return x["z_in"], x["context"]


def test_onnx_denoise_matches_torch_for_every_timestep_type(random_model):
    model = load_model(random_model)
    eager, onnx = make_denoise(model, "torch"), make_denoise(model, "onnx")
    z_in, context = _unet_inputs(model)
    for t in (torch.tensor(981), torch.tensor(250.5), 7):  # DDIM's int64 0-d, Euler's float, a plain int
        want, got = eager(z_in, t, context), onnx(z_in, t, context)
        assert got.dtype == want.dtype and (got - want).abs().max() < 1e-4
    other = eager(z_in, torch.tensor(10), context)
    assert (other - eager(z_in, torch.tensor(981), context)).abs().max() > 1e-3  # t reaches the network
    # Reduced-precision callers get their dtype back from the fp32 graph.
    assert onnx(z_in.bfloat16(), torch.tensor(5), context.bfloat16()).dtype == torch.bfloat16


def test_compile_backend_caches_in_one_folder_and_matches_torch(random_model, monkeypatch, tmp_path):
    import pedit.export.backends as backends

    compiled = []
    monkeypatch.setattr(torch, "compile", lambda module, **kw: compiled.append(kw) or module)  # inductor takes minutes here
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", "/tmp/torchinductor_default")  # what importing diffusers leaves there
    model = load_model(random_model)
    denoise = backends.compile_backend(model, cache_dir=tmp_path / "compile")
    import os

    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "compile") and (tmp_path / "compile").is_dir()
    assert compiled == [{"mode": None, "dynamic": False, "fullgraph": False}]  # CUDA graphs only on a GPU
    z_in, context = _unet_inputs(model)
    assert torch.equal(denoise(z_in, torch.tensor(500), context), make_denoise(model, "torch")(z_in, torch.tensor(500), context))


def test_onnx_edit_of_the_bundled_model_matches_torch():
    """The tolerance the docs state: the same editing mask and every pixel within 2/255."""
    image = Image.open("examples/toon.png")
    torch_edit = Editor.from_pretrained(None, device="cpu").edit(image, "laughing", steps=10, seed=0)
    onnx_edit = load_editor(None, device="cpu", backend="onnx").edit(image, "laughing", steps=10, seed=0)
    assert torch.equal(onnx_edit.mask_latent, torch_edit.mask_latent) and onnx_edit.mask_latent.sum() > 0
    a, b = np.asarray(torch_edit.image, dtype=int), np.asarray(onnx_edit.image, dtype=int)
    assert np.abs(a - b).max() <= 2
    assert (a != np.asarray(image.convert("RGB").resize(a.shape[:2]), dtype=int)).any()  # it did edit


def test_split_mask_call_gives_the_same_mask(random_model, portrait):
    editor = Editor.from_pretrained(random_model, device=TEST_DEVICE)
    calls = []
    inner = editor.denoise
    editor.denoise = lambda z, t, c: calls.append(z.shape[0]) or inner(z, t, c)
    whole = editor.edit(portrait, "royal", EditOptions(steps=1, mask=MaskConfig(n_noise=7)))
    assert calls == [14, 5]  # mask: 2 rows (3-4) x 7 draws in one call; then the sampling step
    calls.clear()
    split = editor.edit(portrait, "royal", EditOptions(steps=1, mask=MaskConfig(n_noise=7, batch=3)))
    assert calls == [6, 6, 2, 5]  # draws 3 + 3 + 1 at 2 rows each, then the sampling step
    assert torch.equal(split.mask_latent, whole.mask_latent) and 0 < whole.mask_latent.mean() < 1
    assert split.image.tobytes() == whole.image.tobytes()


def test_mask_config_rejects_a_negative_batch():
    from pedit.errors import ConfigError

    with pytest.raises(ConfigError, match=r"batch must be in \[0, 1024\], got -1"):
        MaskConfig(batch=-1)


def test_bf16_edit_runs_in_bf16_and_stays_close_to_fp32(random_model, portrait):
    fp32 = Editor.from_pretrained(random_model, device=TEST_DEVICE).edit(portrait, "santa", steps=3, seed=2)
    bf16_editor = Editor.from_pretrained(random_model, device=TEST_DEVICE, precision="bf16")
    assert bf16_editor.model.mcdm.unet.dtype == torch.bfloat16
    seen = []
    inner = bf16_editor.denoise
    bf16_editor.denoise = lambda z, t, c: seen.append((z.dtype, c.dtype)) or inner(z, t, c)
    bf16 = bf16_editor.edit(portrait, "santa", steps=3, seed=2)
    assert set(seen) == {(torch.bfloat16, torch.bfloat16)}  # the float32 mask no longer promotes the latent
    diff = np.abs(np.asarray(bf16.raw, dtype=int) - np.asarray(fp32.raw, dtype=int))
    assert diff.mean() < 8  # bf16 keeps ~3 significant digits: same picture, not the same bytes


def test_eval_runs_every_masked_method_in_bf16(random_model, tiny_pairs):
    from pedit.eval.ground_truth import EvalConfig, evaluate

    cfg = EvalConfig(pairs=str(tiny_pairs), model=str(random_model), methods=("ours", "no-c_s", "diffedit"),
                     sampling=SamplingSettings(steps=2), limit=2, grid_pairs=0, precision="bf16", imperfect_reference=False)
    report = evaluate(cfg)
    for m in cfg.methods:
        s = report["methods"][m]
        assert s["pairs"] == 2 and math.isfinite(s["ssim"]) and 0 <= s["mask_iou"] <= 1


def test_fp16_vae_overflow_falls_back_to_fp32(random_model):
    model = load_model(random_model, dtype=torch.float16)
    parts = model.parts
    with torch.no_grad():
        parts.vae.decoder.conv_out.weight.mul_(1e5)  # pushes fp16 activations past 65504
    z = torch.randn(1, 4, 4, 4, generator=torch.Generator().manual_seed(0))
    naive = parts.vae.decode(z.half() / parts.scaling_factor).sample
    assert not torch.isfinite(naive).all()
    x = parts.decode(z)
    want = parts.vae_fp32().decode(z / parts.scaling_factor).sample.clamp(-1, 1)
    assert x.dtype == torch.float16 and torch.isfinite(x).all()
    assert (x.float() - want).abs().max() < 1e-2 and (want.abs() == 1).any()


def test_bench_reports_each_stage_flops_and_the_ip2p_ratio(random_model):
    from pedit.export.bench import BenchConfig, run_bench, unet_flops

    report = run_bench(BenchConfig(model=str(random_model), backends=("torch", "onnx"), repeats=2,
                                   sampling=SamplingSettings(steps=2, mask_noises=2), vs_ip2p=True))
    assert set(report["backends"]) == {"torch", "onnx"}
    for row in report["backends"].values():
        assert all(row[f"{s}_ms"] > 0 for s in ("encode", "mask", "steps", "decode", "edit"))
        assert row["step_ms"] == pytest.approx(row["steps_ms"] / 2, rel=1e-3)
        assert row["edit_ms"] >= row["steps_ms"] + row["mask_ms"]
        assert row["speedup_vs_ip2p"] == pytest.approx(report["ip2p"]["edit_ms"] / row["edit_ms"], rel=1e-2)
    # FLOPs of the 5-row step: five times one row's (the counter sees the batch, not one image).
    editor = Editor.from_pretrained(random_model, device=TEST_DEVICE)
    one_row = unet_flops(editor) // 5
    assert report["unet_flops_per_step"] == 5 * one_row > 0
    # Rows and FLOPs per edit: 2 rows a mask draw + 5 a step; InstructPix2Pix 3 a step, no mask.
    assert report["unet_rows_per_edit"] == 2 * 2 + 5 * 2 and report["ip2p"]["unet_rows_per_edit"] == 3 * 2
    assert report["unet_flops_per_edit"] == pytest.approx(14 * one_row, rel=1e-6)
    assert report["ip2p"]["unet_flops_per_edit"] == pytest.approx(6 * one_row, rel=1e-6)
    from pedit.export.bench import TABLE_HEAD, table_rows

    rows = table_rows(report)
    assert all(len(r) == len(TABLE_HEAD) for r in rows) and [r[7] for r in rows] == ["14", "14", "6"]


def test_bench_counts_the_rows_of_fewer_steps_and_a_guidance_interval(random_model):
    from pedit.edit.editor import EditOptions
    from pedit.edit.rows import edit_rows
    from pedit.edit.mask import MaskConfig
    from pedit.export.bench import BenchConfig, run_bench

    cfg = BenchConfig(model=str(random_model), repeats=1, warmup=0, vs_ip2p=True, ip2p_steps=5,
                      sampling=SamplingSettings(steps=4, mask_noises=1, scheduler="dpm", guidance_interval=(0.5, 1.0)))
    report = run_bench(cfg)
    editor = Editor.from_pretrained(random_model, device=TEST_DEVICE)
    options = EditOptions(steps=4, scheduler="dpm", mask=MaskConfig(n_noise=1), guidance_interval=(0.5, 1.0))
    rows = edit_rows(options, editor.scheduler(options))
    assert 2 + 4 * 2 < rows < 2 + 4 * 5  # some steps guided (5 rows), some not (2)
    assert report["unet_rows_per_edit"] == rows
    assert report["ip2p"]["steps"] == 5 and report["ip2p"]["unet_rows_per_edit"] == 15


# ---------------------------------------------------------------- the command line


def _run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], prog_name="pedit")


def test_edit_with_trt_where_tensorrt_is_missing_explains(random_model, tmp_path, monkeypatch, portrait):
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    portrait.save(tmp_path / "in.png")
    result = _run("edit", tmp_path / "in.png", "-d", "royal", "-m", random_model, "--backend", "trt", "-o", tmp_path / "out.png")
    assert result.exit_code == 1 and "Traceback" not in result.output
    # `pedit edit` runs the torch-free runtime (docs/runtime.md): its trt is ONNX Runtime's TensorRT provider
    assert result.stderr.startswith("Error: --backend trt runs the exported graphs through ONNX Runtime's TensorRT "
                                    "provider, which this onnxruntime does not have")
    assert not (tmp_path / "out.png").exists()


def test_edit_with_onnx_and_mask_batch_writes_the_edit(random_model, tmp_path, portrait):
    portrait.save(tmp_path / "in.png")
    result = _run("edit", tmp_path / "in.png", "-d", "royal", "-m", random_model, "--backend", "onnx",
                  "--mask-batch", "4", "--steps", "2", "-o", tmp_path / "out.png", "-q")
    assert result.exit_code == 0, result.output
    assert result.stdout == f"{tmp_path / 'out.png'}\n" and Image.open(tmp_path / "out.png").size == (32, 32)


def test_export_and_bench_usage_errors(random_model, tmp_path):
    (tmp_path / "file").write_text("x")
    result = _run("export", "-m", random_model, "-o", tmp_path / "file")
    assert result.exit_code == 1 and result.stderr.endswith(f"Error: {tmp_path / 'file'} is a file; -o takes a folder for the engines.\n")
    result = _run("bench", "-m", random_model, "--arch", "sd15")
    assert result.exit_code == 1 and result.stderr.endswith("Error: Give either -m MODEL or --arch sd15, not both.\n")
    result = _run("bench", "--backend", "tensorflow")
    assert result.exit_code == 1 and "Unknown backend(s) tensorflow" in result.stderr


def test_export_command_prints_the_manifest_path_and_skips_the_second_time(random_model, tmp_path):
    out = tmp_path / "eng"
    first = _run("export", "-m", random_model, "-o", out, "--networks", "vae_decoder")
    assert first.exit_code == 0, first.output
    assert first.stdout == f"{out / 'manifest.json'}\n" and "vae_decoder: ONNX written" in first.stderr
    second = _run("export", "-m", random_model, "-o", out, "--networks", "vae_decoder")
    assert "vae_decoder: ONNX skipped (inputs unchanged)" in second.stderr


def test_sd15_arch_has_stable_diffusion_15_sizes():
    """Built on the meta device (no memory, no arithmetic): parameter counts and FLOPs, not latency."""
    from pedit.export.bench import unet_flops
    from pedit.export.specs import dims_of
    from pedit.export.sd15 import build_sd15

    model = build_sd15(512, device="meta")
    count = lambda module: sum(p.numel() for p in module.parameters())  # noqa: E731
    # SD1.5's U-Net has 859,520,964 parameters; conv_in widened to 8 channels adds 4 x 320 x 3 x 3.
    assert count(model.mcdm.unet) == 859_520_964 + 4 * 320 * 9
    assert count(model.parts.vae) == 83_653_863  # the SD VAE
    assert count(model.parts.text_encoder) == 123_060_480  # CLIP ViT-L/14 text tower
    assert count(model.parts.image_encoder) == 303_179_776  # CLIP ViT-L/14 vision tower
    assert dims_of(model).context_length == 334 and dims_of(model).latent == 64
    # The figure for a 5-row step of this U-Net at 512 px: 4.13 TFLOP.
    assert unet_flops(Editor(model)) == pytest.approx(4.125e12, rel=1e-3)


def test_engines_of_another_model_are_refused_not_overwritten(random_model, tmp_path):
    from pedit.errors import ConfigError
    from pedit.export.pipeline import ExportConfig, export_model

    export_model(ExportConfig(model=str(random_model), output=str(tmp_path), networks=("unet",)))
    before = (tmp_path / "unet.onnx").read_bytes()
    with pytest.raises(ConfigError, match="was exported from another model"):
        load_editor(None, device="cpu", backend="onnx", engines=tmp_path)
    assert (tmp_path / "unet.onnx").read_bytes() == before
    # The same model's folder is used as it is: nothing exported again.
    log = []
    load_editor(random_model, device="cpu", backend="onnx", engines=tmp_path, log=log.append)
    assert log == ["unet: ONNX skipped (inputs unchanged)"]


# ---------------------------------------------------------------- config gates and bench -o


@pytest.mark.parametrize("kwargs, field", [({"seed": -1}, "seed"), ({"steps": 1.5}, "steps"),
                                            ({"mask_noises": 10**6}, "mask_noises"), ({"mask_batch": -1}, "mask_batch"),
                                            ({"device": "meta"}, "Device .meta. cannot run an edit"), ({"precision": "fp8"}, "precision"),
                                            ({"scheduler": "heun"}, "scheduler"), ({"guidance_interval": (1, 0)}, "guidance_interval"),
                                            ({"ip2p_steps": 0}, "ip2p_steps"), ({"ip2p_steps": 5}, "goes with --vs ip2p")])
def test_bench_config_validates_its_fields(kwargs, field):
    from pedit.errors import ConfigError
    from pedit.export.bench import BenchConfig

    with pytest.raises(ConfigError, match=field):  # the sampling fields: the settings object checks them, once
        BenchConfig(**with_settings(kwargs))


@pytest.mark.parametrize("kwargs, field", [({"backend": "tensorflow"}, "backend"), ({"precision": "fp8"}, "precision"),
                                            ({"mask_batch": -3}, "mask_batch"), ({"mask_noises": 10**6}, "mask_noises"),
                                            ({"device": "meta"}, "Device .meta. cannot run an edit")])
def test_edit_files_config_validates_backend_precision_and_mask(kwargs, field):
    from pedit.errors import ConfigError
    from pedit.model.sampling_settings import SamplingSettings
    from pedit.photos.edit_files import EditFilesConfig

    with pytest.raises(ConfigError, match=field):  # the sampling fields: the settings object checks them, once
        EditFilesConfig(inputs=("a.png",), direction="royal", **with_settings(kwargs))


@pytest.mark.parametrize("kwargs, field", [({"backend": "tensorflow"}, "backend"), ({"device": "meta"}, "Device .meta. cannot run an edit"),
                                            ({"precision": None}, "precision"), ({"mask_batch": 2000}, "mask_batch")])
def test_eval_config_validates_backend_and_device(kwargs, field):
    from pedit.errors import ConfigError
    from pedit.eval.ground_truth import EvalConfig

    with pytest.raises(ConfigError, match=field):
        EvalConfig(pairs="p", **with_settings(kwargs))


def test_bench_direction_is_checked_before_any_model_loads(random_model, monkeypatch):
    import pedit.export.bench as bench
    from pedit.errors import DirectionError

    monkeypatch.setattr(bench, "bench_backend", lambda *a: pytest.fail("benched before checking the direction"))
    with pytest.raises(DirectionError, match="Unknown direction 'nope'"):
        bench.run_bench(bench.BenchConfig(model=str(random_model), direction="nope"))


def test_bench_output_is_checked_first_and_replaced_only_with_overwrite(random_model, tmp_path, monkeypatch):
    import pedit.export.bench as bench

    report = tmp_path / "bench.json"
    report.write_text("earlier")
    calls = []
    real = bench.bench_backend
    monkeypatch.setattr(bench, "bench_backend", lambda *a: calls.append(a) or real(*a))
    args = ("bench", "-m", random_model, "--steps", "1", "--repeats", "1", "--warmup", "0", "--no-mask", "-o", report)
    result = _run(*args)
    assert result.exit_code == 1 and result.stderr.endswith(
        f"Error: {report} already exists. Pass --overwrite to replace it, or choose another -o.\n")
    assert report.read_text() == "earlier" and calls == []  # refused before any work
    result = _run("bench", "-m", random_model, "-o", tmp_path / "no" / "such" / "r.json")
    assert result.exit_code == 1 and "does not exist" in result.stderr and calls == []
    result = _run(*args, "--overwrite")
    assert result.exit_code == 0, result.output
    import json

    assert json.loads(report.read_text()) == json.loads(result.stdout) and len(calls) == 1
    assert [p.name for p in tmp_path.iterdir()] == ["bench.json"]  # no temp file left
