"""Guidance distillation (issue 18, item 3): the student's rows, its edits, `pedit distill`, and bad input.

The oracle for the distilled editing path is an *ideal student*: a denoiser that answers each row
with the teacher's own nested eps~ at the row's scale token (4 teacher rows). Edited through the
distilled path (2 rows a step, the mask from 2 rows a draw without the s_p factor, unit scales
outside the guidance interval), it must give the teacher's own 5-row edit.
"""

import json
import shutil
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

from pedit.cli.main import cli
from pedit.edit.editor import EditOptions, Editor
from pedit.edit.guidance import GuidanceScales, multi_cfg
from pedit.edit.mask import MaskConfig
from pedit.edit.rows import edit_rows
from pedit.errors import ConfigError, ModelError
from pedit.model.distilled import FEATURES, scale_features, scale_token, split_scale_token
from pedit.model.loading import load_model
from pedit.train.distill import DistillConfig, distill, make_student, parse_scale_range, teacher_eps
from pedit.model.sampling_settings import SamplingSettings

RANGE = {"s_s": [1.0, 2.5], "s_im": [1.0, 2.0], "s_p": [1.0, 7.5]}
DISTILLED = {"kind": "guidance", "rows_per_branch": 1, "scale_range": RANGE}


def _ideal_student(teacher_mcdm, null):
    """Each row (z_in, context ending in the scale token) → the teacher's eps~ at that row's scales."""

    @torch.no_grad()
    def denoise(z_in, t, context):
        context, scales = split_scale_token(context)
        n = z_in.shape[0]
        z_t, c_s = z_in[:, :4], z_in[:, 4:]
        c_p_null, c_im = null.expand(n, -1, -1), context[:, 77:]
        no_im = torch.zeros_like(c_im)
        rows_ctx = torch.cat([torch.cat([c_p_null, no_im], 1), torch.cat([c_p_null, no_im], 1),
                              torch.cat([c_p_null, c_im], 1), context])
        rows_z = torch.cat([torch.cat([z_t] * 4), torch.cat([torch.zeros_like(c_s), c_s, c_s, c_s])], 1)
        e = teacher_mcdm(rows_z, t.repeat(4), rows_ctx).chunk(4)  # t: one timestep a row
        return multi_cfg(*e, SimpleNamespace(**{k: scales[:, i].view(n, 1, 1, 1) for i, k in enumerate(("s_s", "s_im", "s_p"))}))

    return denoise


def _student_editor(teacher_editor, denoise):
    model = teacher_editor.model
    meta = {**model.meta, "distilled": DISTILLED}
    student = Editor(type(model)(model.mcdm, model.parts, meta, model.path), denoise)
    return student


def test_scale_token_round_trip_and_features():
    ctx = torch.randn(3, 77 + 5, 16)
    token = scale_token((1.5, 1.0, 4.0), 3, 16, ctx)
    assert token.shape == (3, 1, 16) and torch.all(token[:, 0, 3:] == 0)
    back, scales = split_scale_token(torch.cat([ctx, token], 1))
    assert torch.equal(back, ctx) and torch.equal(scales, torch.tensor([[1.5, 1.0, 4.0]] * 3))
    f = scale_features(scales)
    assert f.shape == (3, FEATURES)
    assert not torch.allclose(scale_features(torch.tensor([[1.5, 1.0, 4.1]])), f[:1])  # s_p moves the features


ROWS = torch.tensor([[1.5, 1.0, 4.0], [2.0, 1.5, 6.0], [1.0, 2.0, 7.5]])  # three rows, each at its own scales


def test_scale_features_follow_each_rows_own_scales():
    """A batch of rows at several scales (as distill trains and an edit at one scale never shows): each row's
    features are those of its own scales alone, and rows at other scales get other features."""
    f = scale_features(ROWS)
    for i, row in enumerate(ROWS):
        assert torch.equal(f[i], scale_features(row[None])[0])
    assert not torch.allclose(f[0], f[1]) and not torch.allclose(f[1], f[2])


def test_an_untrained_student_computes_the_teachers_fully_conditioned_row(random_model):
    teacher = load_model(random_model).mcdm
    student = make_student(teacher).eval()
    g = torch.Generator().manual_seed(0)
    z_in, ctx = torch.randn(3, 8, 4, 4, generator=g), torch.randn(3, teacher.context_length, 32, generator=g)
    token = scale_token((2.0, 1.5, 6.0), 3, ctx.shape[-1], ctx)
    with torch.no_grad():
        assert student.distilled and student.context_length == teacher.context_length + 1
        assert torch.equal(student(z_in, torch.tensor(500), torch.cat([ctx, token], 1)),
                           teacher(z_in, torch.tensor(500), ctx))


def test_teacher_eps_is_the_nested_cfg_of_the_five_row_layout(editor, portrait):
    from pedit.edit.editor import uint8_to_tensor
    from pedit.data.pairs import square_rgb

    mcdm = editor.model.mcdm
    cond = editor.conditions(uint8_to_tensor(square_rgb(portrait, 32)), editor.direction("laughing"))
    g = torch.Generator().manual_seed(1)
    z_t = torch.randn(1, 4, 4, 4, generator=g)
    scales = GuidanceScales(2.0, 1.5, 5.0)
    c_s_rows, context = cond.guidance_rows()
    with torch.no_grad():
        e = mcdm(torch.cat([z_t.repeat(5, 1, 1, 1), c_s_rows], 1), torch.tensor(400), context).chunk(5)
    want = multi_cfg(e[0], e[1], e[2], e[3], scales)
    clip = editor.model.parts.clip_tokens(uint8_to_tensor(square_rgb(portrait, 32)))
    got = teacher_eps(mcdm, z_t, torch.tensor([400]), cond.c_s, clip, cond.c_p_b, cond.c_p_null,
                      torch.tensor([[2.0, 1.5, 5.0]]))
    assert torch.allclose(got, want, atol=1e-5)


@pytest.mark.parametrize("interval", [None, (0.2, 0.8), (0.6, 1.0)])  # (0.6, 1): 3 of 4 steps unguided
def test_an_ideal_student_edits_like_its_teacher_in_two_rows_a_step(editor, portrait, interval):
    denoise = _ideal_student(editor.model.mcdm, editor._prompt(""))
    calls = []

    def counted(z_in, t, context):
        calls.append(z_in.shape[0])
        return denoise(z_in, t, context)

    student = _student_editor(editor, counted)
    options = EditOptions(steps=4, seed=3, guidance_interval=interval, scales=GuidanceScales(2.0, 1.5, 5.0),
                          mask=MaskConfig(n_noise=2))
    want = editor.edit(portrait, "laughing", options)
    got = student.edit(portrait, "laughing", options)
    assert torch.equal(got.mask_latent, want.mask_latent)  # the mask: same binary cells
    diff = np.abs(np.asarray(got.image, dtype=int) - np.asarray(want.image, dtype=int))
    assert diff.max() <= 2  # float rounding of another batch layout only
    assert sum(calls) == edit_rows(options, student.scheduler(options), distilled=True) == 2 * 2 + 2 * 4


def test_a_student_counts_two_rows_a_step_and_one_without_the_mask(editor):
    options = EditOptions(steps=10)
    sched = editor.scheduler(options)
    assert edit_rows(options, sched) == 2 * 10 + 5 * 10
    assert edit_rows(options, sched, distilled=True) == 2 * 10 + 2 * 10
    assert edit_rows(EditOptions(steps=10, use_mask=False), sched, distilled=True) == 10


def test_scales_outside_the_distilled_range_fail_before_any_work(editor, portrait):
    calls = []
    student = _student_editor(editor, lambda *a: calls.append(1))
    with pytest.raises(ConfigError, match="s_p = 9 is outside the range"):
        student.edit(portrait, "laughing", scales=GuidanceScales(1.5, 1.0, 9.0))
    with pytest.raises(ConfigError, match="s_s = 0.5"):
        student.edit(portrait, "laughing", scales=GuidanceScales(0.5, 1.0, 4.0))
    assert calls == []


def _distill_cfg(pairs, teacher, out, **kw):
    base = dict(data=str(pairs), output=str(out), teacher=str(teacher), batch_size=2, checkpoint_every=2,
                validate_every=0, ema_decay=0.9, learning_rate=1e-3, log_every=1, cache_dir=str(out.parent / "cache"))
    return DistillConfig(**{**base, **kw})


def test_distill_writes_a_student_that_edits_and_resumes_exactly(tiny_pairs, random_model, tmp_path, portrait):
    straight = distill(_distill_cfg(tiny_pairs, random_model, tmp_path / "straight", max_steps=4))
    split = tmp_path / "split"
    distill(_distill_cfg(tiny_pairs, random_model, split, max_steps=2))
    distill(_distill_cfg(tiny_pairs, random_model, split, max_steps=4, resume=True))
    a = load_file(str(straight / "unet" / "diffusion_pytorch_model.safetensors"))
    b = load_file(str(split / "unet" / "diffusion_pytorch_model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert a["class_embedding.linear_2.weight"].abs().sum() > 0  # the scale embedding trained
    meta = json.loads((straight / "pedit.json").read_text())
    assert meta["distilled"]["scale_range"] == RANGE and meta["distilled"]["steps_trained"] == 4
    student = Editor.from_pretrained(straight, device="cpu")
    assert student.distilled and student.model.mcdm.distilled
    out = student.edit(portrait, "laughing", steps=3, mask=MaskConfig(n_noise=2))
    assert out.image.size == (32, 32)


def test_distill_refuses_a_student_teacher_and_foreign_directions(tiny_pairs, random_model, tmp_path):
    student = distill(_distill_cfg(tiny_pairs, random_model, tmp_path / "s", max_steps=1))
    with pytest.raises(ConfigError, match="already a distilled student"):
        distill(_distill_cfg(tiny_pairs, student, tmp_path / "s2", max_steps=1))
    assert not (tmp_path / "s2").exists()
    pairs = shutil.copytree(tiny_pairs, tmp_path / "pairs")
    rows = [json.loads(line) for line in (pairs / "metadata.jsonl").read_text().splitlines()]
    rows[0]["direction"] = "zombie"
    (pairs / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(ConfigError, match="zombie"):
        distill(_distill_cfg(pairs, random_model, tmp_path / "s3", max_steps=1))
    assert not (tmp_path / "s3").exists()


def test_a_folder_whose_json_and_unet_disagree_is_refused(tiny_pairs, random_model, tmp_path):
    folder = shutil.copytree(random_model, tmp_path / "m")
    meta = json.loads((folder / "pedit.json").read_text())
    (folder / "pedit.json").write_text(json.dumps({**meta, "distilled": DISTILLED}))
    with pytest.raises(ModelError, match="says the model is distilled"):
        load_model(folder)
    (folder / "pedit.json").write_text(json.dumps({**meta, "distilled": {**DISTILLED, "scale_range": {"s_p": [1, 2]}}}))
    with pytest.raises(ModelError, match="scale_range"):
        load_model(folder)
    (folder / "pedit.json").write_text(json.dumps({**meta, "distilled": {**DISTILLED, "rows_per_step": 3}}))
    with pytest.raises(ModelError, match="rows_per_step 3"):
        load_model(folder)


def test_scale_range_parsing_and_checks():
    assert parse_scale_range("s_p=2:6") == ((1.0, 2.5), (1.0, 2.0), (2.0, 6.0))
    for bad in ("s_q=1:2", "s_p=2", "s_p=a:b"):
        with pytest.raises(ConfigError):
            parse_scale_range(bad)
    with pytest.raises(ConfigError, match="s_p high"):
        DistillConfig(data="d", output="o", scale_range=((1, 2), (1, 2), (5, 3)))
    with pytest.raises(ConfigError, match="from the teacher"):
        DistillConfig(data="d", output="o", base="x")


def test_cli_distill_bad_input_is_one_error_line(tiny_pairs, tmp_path):
    result = CliRunner().invoke(cli, ["distill", "--data", str(tiny_pairs), "-o", str(tmp_path / "s"),
                                      "--scale-range", "s_p=8:2"])
    assert result.exit_code == 1 and result.output.strip().startswith("Error:") and "Traceback" not in result.output
    result = CliRunner().invoke(cli, ["distill", "--data", str(tmp_path / "none"), "-o", str(tmp_path / "s")])
    assert result.exit_code == 1 and "Error:" in result.output and not (tmp_path / "s").exists()


# ---------------------------------------------------------------- a student on every backend, eval and bench


@pytest.fixture(scope="module")
def student_model(random_model, tmp_path_factory):
    """A tiny student whose scale embedding is not zero (so the scales change what it computes)."""
    from pedit.model.saving import save_model

    teacher = load_model(random_model)
    torch.manual_seed(1)
    student = make_student(teacher.mcdm)
    with torch.no_grad():
        for p in student.unet.class_embedding.parameters():
            p.normal_(0, 0.2)
    meta = {**teacher.meta, "distilled": DISTILLED}
    for key in ("format", "pedit_version", "conventions", "num_image_tokens", "frozen"):
        meta.pop(key, None)
    return save_model(tmp_path_factory.mktemp("student") / "student", student.eval(), teacher.parts, meta)


def test_the_scales_reach_a_trained_students_rows(student_model, portrait):
    student = Editor.from_pretrained(student_model, device="cpu")
    a = student.edit(portrait, "laughing", steps=3, use_mask=False, scales=GuidanceScales(1.5, 1.0, 4.0))
    b = student.edit(portrait, "laughing", steps=3, use_mask=False, scales=GuidanceScales(1.5, 1.0, 6.0))
    assert a.image.tobytes() != b.image.tobytes()


def test_a_student_exports_to_onnx_and_edits_like_torch(student_model, tmp_path, portrait):
    from pedit.export.backends import load_editor
    from pedit.export.pipeline import ExportConfig, export_model

    manifest = export_model(ExportConfig(model=str(student_model), output=str(tmp_path / "engines"),
                                         networks=("unet",)))
    entry = manifest["networks"]["unet"]["onnx"]
    assert entry["parity"]["max_abs"] < 1e-3
    eager = Editor.from_pretrained(student_model, device="cpu")
    onnx = load_editor(student_model, device="cpu", backend="onnx", engines=tmp_path / "engines")
    options = EditOptions(steps=3, mask=MaskConfig(n_noise=2))
    want, got = eager.edit(portrait, "laughing", options), onnx.edit(portrait, "laughing", options)
    assert torch.equal(want.mask_latent, got.mask_latent)
    assert np.abs(np.asarray(want.image, dtype=int) - np.asarray(got.image, dtype=int)).max() <= 2


def test_a_students_torchscript_cache_gives_the_eager_bytes(student_model, portrait):
    eager = Editor.from_pretrained(student_model, device="cpu")
    cached = Editor.from_pretrained(student_model, device="cpu", cache=True)
    again = Editor.from_pretrained(student_model, device="cpu", cache=True)
    assert "TorchScript cache" in again.cache_status and again.cache_status.startswith("loaded")
    options = EditOptions(steps=3, mask=MaskConfig(n_noise=2))
    want = eager.edit(portrait, "royal", options).image.tobytes()
    assert cached.edit(portrait, "royal", options).image.tobytes() == want
    assert again.edit(portrait, "royal", options).image.tobytes() == want


def test_eval_of_a_student_runs_its_two_methods_and_refuses_the_baselines(student_model, tiny_pairs):
    from pedit.eval.ground_truth import STUDENT_METHODS, EvalConfig, evaluate

    report = evaluate(EvalConfig(pairs=str(tiny_pairs), model=str(student_model), sampling=SamplingSettings(steps=2), limit=2, grid_pairs=0,
                                 imperfect_reference=False))
    assert tuple(report["methods"]) == STUDENT_METHODS
    with pytest.raises(ConfigError, match="distilled student.*diffedit"):
        evaluate(EvalConfig(pairs=str(tiny_pairs), model=str(student_model), methods=("ours", "diffedit")))


def test_bench_of_a_student_counts_two_rows_a_step(student_model):
    from pedit.export.bench import BenchConfig, run_bench

    report = run_bench(BenchConfig(model=str(student_model), sampling=SamplingSettings(steps=3, mask_noises=2), repeats=1, warmup=0,
                                   vs_ip2p=True))
    assert report["distilled"] and report["unet_rows_per_edit"] == 2 * 2 + 2 * 3
    assert report["ip2p"]["unet_rows_per_edit"] == 3 * 3


# ---------------------------------------------------------------- the review's findings, each pinned


def test_a_scale_range_without_the_defaults_validates_inside_it_and_drops_an_unreachable_interval(
        tiny_pairs, random_model, tmp_path):
    teacher = shutil.copytree(random_model, tmp_path / "teacher")
    meta = json.loads((teacher / "pedit.json").read_text())
    meta["sampling"] = {"scheduler": "ddim", "steps": 4, "guidance_interval": [0.2, 0.8], "chosen_by": "a test"}
    (teacher / "pedit.json").write_text(json.dumps(meta))
    out = distill(_distill_cfg(tiny_pairs, teacher, tmp_path / "s", max_steps=1, validate_every=1,
                               scale_range=((1.2, 2.0), (1.0, 2.0), (5.0, 7.0))))
    assert (out / "validation" / "step-000001.png").is_file()  # the grid edited at s_p 5, s_s 1.5: in range
    sampling = json.loads((out / "pedit.json").read_text())["sampling"]
    assert "guidance_interval" not in sampling and sampling["chosen_by"].startswith("the teacher's")
    Editor.from_pretrained(out, device="cpu").plan_many(["laughing"], scales=GuidanceScales(1.5, 1.0, 6.0))


def test_gradient_checkpointing_reaches_the_student(random_model):
    student = make_student(load_model(random_model).mcdm, gradient_checkpointing=True)
    assert student.unet.is_gradient_checkpointing


def test_scale_ranges_past_the_features_period_are_refused():
    with pytest.raises(ConfigError, match="s_p high"):
        DistillConfig(data="d", output="o", scale_range=((1, 2), (1, 2), (1, 20)))


def test_rows_of_the_wrong_length_fail_loudly(random_model):
    teacher = load_model(random_model).mcdm
    student = make_student(teacher).eval()
    z_in = torch.zeros(2, 8, 4, 4)
    with torch.no_grad(), pytest.raises(ValueError, match="scale token"):
        student(z_in, torch.tensor(10), torch.zeros(2, teacher.context_length, 32))  # a teacher's rows
    with torch.no_grad(), pytest.raises(ValueError, match="77 \\+ K"):
        teacher(z_in, torch.tensor(10), torch.zeros(2, student.context_length, 32))


def test_eval_refuses_a_students_out_of_range_scales_before_loading(student_model, tiny_pairs):
    from pedit.eval.ground_truth import EvalConfig, evaluate

    with pytest.raises(ConfigError, match="s_p = 9"):
        evaluate(EvalConfig(pairs=str(tiny_pairs), model=str(student_model), sampling=SamplingSettings(s_p=9.0)))


def test_resume_refuses_a_teacher_changed_in_place(tiny_pairs, random_model, tmp_path):
    teacher = shutil.copytree(random_model, tmp_path / "teacher")
    distill(_distill_cfg(tiny_pairs, teacher, tmp_path / "s", max_steps=1))
    weights = teacher / "image_projector" / "diffusion_pytorch_model.safetensors"
    tensors = load_file(str(weights))
    from safetensors.torch import save_file

    save_file({k: v + 1 for k, v in tensors.items()}, str(weights))
    with pytest.raises(ConfigError, match="not the one the run"):
        distill(_distill_cfg(tiny_pairs, teacher, tmp_path / "s", max_steps=2, resume=True))
