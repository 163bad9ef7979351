"""A model folder's sampler per task (pedit.json "sampling_by_task", laid over "sampling") and the edits
of several directions grouped by sampler (pedit.edit.job.jobs_by_sampler): a direction's task decides
its sampler wherever one is resolved, a caller's setting still wins, a malformed entry is one `Error:`
line, and each direction of a multi-direction edit gets the bytes it gets alone."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from conftest import counting_calls, same_edit

from pedit.data.pairs import square_rgb
from pedit.edit.editor import EditOptions, Editor
from pedit.edit.guidance import GuidanceScales
from pedit.edit.mask import MaskConfig
from pedit.errors import ConfigError
from pedit.model.sampling_settings import SamplingSettings

ENV = {"COLUMNS": "1000", "PEDIT_DEBUG": None}
BASE = {"scheduler": "ddim", "steps": 3, "chosen_by": "a test"}
EXPRESSION = {"steps": 2, "guidance_interval": [0.2, 0.8], "chosen_by": "a test, for expressions"}


def _folder(random_model, where: Path, **sections) -> Path:
    folder = Path(shutil.copytree(random_model, where))
    meta = json.loads((folder / "pedit.json").read_text())
    meta.update(sections)
    # 2 draws; no dilation or feathering: the mask leaves pixels of a 32-pixel photo as they were
    meta["mask"] = {**meta.get("mask", {}), "n_noise": 2, "dilate": 0.0, "feather": 0.0}
    (folder / "pedit.json").write_text(json.dumps(meta))
    return folder


@pytest.fixture(scope="module")
def by_task(random_model, tmp_path_factory):
    """random_model whose expressions sample 2 steps guided on 0.2-0.8, everything else 3 DDIM steps."""
    return _folder(random_model, tmp_path_factory.mktemp("by-task") / "model", sampling=BASE,
                   sampling_by_task={"expression": EXPRESSION})


@pytest.fixture(scope="module")
def task_editor(by_task):
    return Editor.from_pretrained(by_task, device="cpu")


def test_a_directions_task_decides_its_sampler_and_a_callers_setting_wins(task_editor):
    angry, royal = task_editor.default_options("angry"), task_editor.default_options("royal")
    assert (angry.steps, angry.scheduler, angry.guidance_interval) == (2, "ddim", (0.2, 0.8))
    assert (royal.steps, royal.scheduler, royal.guidance_interval) == (3, "ddim", None)
    assert task_editor.default_options().steps == 3  # no direction: "sampling" alone
    set_ = task_editor.options_for("angry", SamplingSettings(steps=5, guidance_interval=(0.0, 1.0)))
    assert (set_.steps, set_.guidance_interval) == (5, (0.0, 1.0))
    kept = task_editor.options_for("angry", SamplingSettings(steps=5))
    assert (kept.steps, kept.guidance_interval) == (5, (0.2, 0.8))  # only what is set wins


def test_directions_of_two_samplers_are_two_jobs_with_the_bytes_of_separate_edits(task_editor, portrait):
    names = ["angry", "royal", "shocked"]  # two expressions (one sampler) around a costume (another)
    calls, inner = counting_calls(task_editor)
    steps = []
    try:
        separate = [task_editor.edit(portrait, d, seed=4) for d in names]
        calls.clear()
        together = task_editor.edit_many(portrait, names, seed=4, callback=lambda i, n: steps.append((i, n)))
        # the expressions' job: one mask call of 2 p_b + their shared p_a a draw (2 draws), then each
        # direction's 2 steps, the first guided (5 rows; t/T 0.5), the last not (2 rows; t = 0);
        # then the costume's job alone: 2 rows x 2 draws, 3 steps of 5 rows (every step guided)
        assert calls == [(2 + 1) * 2] + [5, 2] * 2 + [2 * 2] + [5] * 3
        calls.clear()
        task_editor.edit_many(portrait, names, seed=4, batch_steps=True)
        assert calls == [6 + 4, 10 + 5, 4 + 5, 5]  # the two jobs ticked together
    finally:
        task_editor.denoise = inner
    assert steps[-1] == (2 * 2 + 3, 2 * 2 + 3)  # progress counts both jobs' steps
    # the expressions' mask call has 6 rows against 4 alone: eager torch promises their edit alone up to
    # rounding (docs/design-notes.md, "Bytes"); the costume, alone in its job, makes its lone calls: bytes
    square = square_rgb(portrait, task_editor.resolution)
    for i in (0, 2):
        same_edit(separate[i], together[i], square)
    assert separate[1].image.tobytes() == together[1].image.tobytes()
    assert separate[1].mask.tobytes() == together[1].mask.tobytes()
    assert torch.equal(separate[1].mask_latent, together[1].mask_latent)
    assert len({r.image.tobytes() for r in together}) == 3


@pytest.mark.parametrize("batch_steps", [False, True])
def test_progress_over_jobs_of_two_samplers_never_goes_back_and_ends_at_the_total(task_editor, portrait, batch_steps):
    """One count of steps done that every job adds to: in turn, or ticked together (batch_steps), where the
    costume's job (3 steps, listed first) outlasts the expressions' (2 steps for both with batch_steps)."""
    steps = []
    task_editor.edit_many(portrait, ["royal", "angry", "shocked"], seed=4, batch_steps=batch_steps,
                          callback=lambda i, n: steps.append((i, n)))
    total = 3 + 2 * (1 if batch_steps else 2)
    assert [i for i, _ in steps] == sorted(i for i, _ in steps) and {n for _, n in steps} == {total}
    assert steps[-1] == (total, total) and len(steps) == total


def test_an_edit_job_refuses_directions_of_two_samplers(task_editor, portrait):
    import numpy as np

    from pedit.edit.editor import uint8_to_tensor

    cond = task_editor.conditions(uint8_to_tensor(np.asarray(portrait)), task_editor.direction("angry"))
    with pytest.raises(ConfigError, match="share one sampler"):
        task_editor.job([cond, cond], [EditOptions(steps=2), EditOptions(steps=3)])
    # per-direction options of two samplers are two jobs in edit_many, as a folder's per-task ones are
    one, two = EditOptions(steps=2, mask=MaskConfig(n_noise=2)), EditOptions(steps=3, mask=MaskConfig(n_noise=2))
    many = task_editor.edit_many(portrait, ["angry", "royal"], [one, two])
    assert many[1].image.tobytes() == task_editor.edit(portrait, "royal", two).image.tobytes()


@pytest.mark.parametrize("by, needle", [
    ({"expresion": {"steps": 2}}, "names task 'expresion'"),
    ({"expression": {"steps": 0}}, "steps"),
    ({"costume": {"scheduler": "heun"}}, "scheduler"),
    ({"expression": {"guidance_interval": [0.9, 0.1]}}, "guidance_interval"),
    ({"expression": {"stepz": 2}}, "may only set"),
    ({"expression": None}, "may only set"),
    (None, "must be a JSON object"),
])
def test_a_malformed_sampling_by_task_is_one_error_line(random_model, tmp_path, portrait, by, needle):
    from pedit.cli import cli

    folder = _folder(random_model, tmp_path / "model", sampling_by_task=by)
    portrait.save(tmp_path / "in.png")
    result = CliRunner().invoke(cli, ["edit", str(tmp_path / "in.png"), "-d", "royal", "-m", str(folder)], env=ENV)
    assert result.exit_code == 1 and "Traceback" not in result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1 and "sampling_by_task" in errors[0] and needle in errors[0], result.stderr
    assert not (tmp_path / "in_royal.png").exists()


def test_the_cli_edits_each_direction_with_its_tasks_sampler_and_flags_win(by_task, random_model, tmp_path, portrait):
    """`pedit edit -d angry,royal` on the folder: each output is the edit alone; angry's is the one a folder
    whose "sampling" is the expression sampler gives; --steps wins over the folder's per-task choice."""
    from pedit.cli import cli

    plain = _folder(random_model, tmp_path / "plain", sampling={**BASE, **EXPRESSION})
    src = tmp_path / "face.png"
    portrait.save(src)

    def edit(model, out, *flags):
        result = CliRunner().invoke(cli, ["edit", str(src), "-m", str(model), "-o", str(out), "--device", "cpu",
                                          "--no-identity-check", "-q", *flags], env=ENV)
        assert result.exit_code == 0, result.output
        return out

    together = edit(by_task, tmp_path / "together", "-d", "angry,royal")
    for name in ("angry", "royal"):
        alone = edit(by_task, tmp_path / f"{name}.png", "-d", name)
        assert alone.read_bytes() == (together / f"face_{name}.png").read_bytes()
    assert edit(plain, tmp_path / "plain.png", "-d", "angry").read_bytes() == (together / "face_angry.png").read_bytes()
    flagged = edit(by_task, tmp_path / "flagged.png", "-d", "angry", "--steps", "3", "--guidance-interval", "0,1")
    royal_sampler = edit(plain, tmp_path / "steps3.png", "-d", "angry", "--steps", "3", "--guidance-interval", "0,1")
    assert flagged.read_bytes() == royal_sampler.read_bytes() != (together / "face_angry.png").read_bytes()


def test_eval_and_bench_take_each_directions_task_sampler(by_task, random_model, tmp_path):
    """Scored one pair a batch, an expression pair's scores with the folder's per-task sampler are those of
    a folder whose "sampling" is the expression sampler; a costume pair's those of the base sampler."""
    from pedit.data.gen_pairs import GenPairsConfig, generate_pairs
    from pedit.eval.ground_truth import EvalConfig, evaluate
    from pedit.export.bench import BenchConfig, with_sampling

    pairs = generate_pairs(GenPairsConfig(str(tmp_path / "pairs"), n=2, resolution=32, exact=True,
                                          directions=("angry", "royal")))
    plain = _folder(random_model, tmp_path / "plain", sampling={**BASE, **EXPRESSION})

    def scores(model):
        report = evaluate(EvalConfig(pairs=str(pairs), model=str(model), methods=("ours",), grid_pairs=0,
                                     batch_size=1, imperfect_reference=False))
        return report, report["per_direction"]["ours"]

    report, mixed = scores(by_task)
    base_report, base = scores(_folder(random_model, tmp_path / "base", sampling=BASE))
    assert mixed["angry"] == scores(plain)[1]["angry"] != base["angry"]
    assert mixed["royal"] == base["royal"]
    assert report["sampling"]["ours"]["steps"] == 3 and "ours_by_task" not in base_report["sampling"]
    assert report["sampling"]["ours_by_task"]["expression"]["guidance_interval"] == (0.2, 0.8)
    assert report["sampling"]["ours_by_task"]["costume"]["steps"] == 3
    assert with_sampling(BenchConfig(model=str(by_task), direction="angry")).sampling.steps == 2
    assert with_sampling(BenchConfig(model=str(by_task), direction="royal")).sampling.steps == 3
    assert with_sampling(BenchConfig(model=str(by_task), direction="angry",
                                     sampling=SamplingSettings(steps=4))).sampling.steps == 4


def test_evals_batch_of_two_samplers_gives_each_pair_its_samplers_run_in_the_batchs_order(task_editor, portrait):
    """pedit eval's batch of 4 pairs (batch_size 4) mixing costumes (3 steps) and expressions (2 steps,
    guided on 0.2-0.8): run_method_by_sampler runs each sampler's pairs as one run_method, seeded from
    the batch's start plus its first pair's index, and puts each pair's outputs back at its place (the
    order royal, angry, shocked, royal: the runs come back as 0, 3, 1, 2, not their own inverse)."""
    import dataclasses

    import numpy as np

    from pedit.edit.editor import uint8_to_tensor
    from pedit.eval.ground_truth import _rows, batch_seed, run_method, run_method_by_sampler
    from pedit.model.sampling_settings import sampling_for

    names = ["royal", "angry", "shocked", "royal"]
    photos = [square_rgb(portrait, task_editor.resolution)] * 3 + [square_rgb(portrait, 32)[:, ::-1].copy()]
    conds = [task_editor.conditions(uint8_to_tensor(p), task_editor.direction(d)) for p, d in zip(photos, names)]
    cond = type(conds[0])(*(torch.cat([getattr(c, f.name) for c in conds]) for f in dataclasses.fields(conds[0])))
    meta, tasks = task_editor.model.meta, [task_editor.direction(d).task for d in names]
    samplers = [sampling_for(meta, t) for t in tasks]
    masks = [task_editor.default_options(d).mask for d in names]
    assert samplers[0] == samplers[3] != samplers[1] == samplers[2]
    got = run_method_by_sampler(task_editor, "ours", cond, samplers, 7, 8, masks)
    for ix in ([0, 3], [1, 2]):
        s = samplers[ix[0]]
        want = run_method(task_editor, "ours", _rows(cond, ix), s.steps, GuidanceScales(s.s_s, s.s_im, s.s_p),
                          batch_seed(7, 8 + ix[0]), [masks[i] for i in ix], s.scheduler, s.guidance_interval,
                          with_diff=True)
        for k in range(3):  # decoded, latent mask, difference map
            assert torch.equal(got[k][ix], want[k])
    decoded = [np.asarray(got[0][i]).tobytes() for i in range(4)]
    assert len(set(decoded)) == 4  # every pair's output its own: a wrong place shows


def test_a_distilled_student_keeps_its_teachers_per_task_sampling_marked_as_the_teachers():
    from pedit.train.distill import DistillConfig, student_settings

    teacher = {"resolution": 32, "sampling": BASE, "sampling_by_task": {"expression": EXPRESSION}}
    kept, _ = student_settings(DistillConfig(data="d", output="o"), teacher)
    assert kept["sampling_by_task"]["expression"]["steps"] == 2
    assert kept["sampling_by_task"]["expression"]["chosen_by"] == "the teacher's: a test, for expressions"


@pytest.mark.cpu_only("the runtime runs ONNX Runtime on the CPU here")
def test_an_export_carries_the_per_task_sampling_to_the_runtime_and_the_server(by_task, tmp_path, portrait,
                                                                                monkeypatch):
    """`pedit export` keeps "sampling_by_task" (model.json holds the folder's pedit.json): the torch-free
    runtime editor resolves each direction's sampler by its task and edits several directions as one job
    per sampler, each with its bytes alone; the Triton `pedit` model's client meta carries the block."""
    from pedit.export.pipeline import ExportConfig, export_model
    from pedit.export.runtime_editor import load_runtime_editor
    from pedit.serve import repository

    out = tmp_path / "export"
    export_model(ExportConfig(model=str(by_task), output=str(out)))
    editor = load_runtime_editor(out)
    angry, royal = editor.default_options("angry"), editor.default_options("royal")
    assert (angry.steps, angry.guidance_interval, royal.steps, royal.guidance_interval) == (2, (0.2, 0.8), 3, None)
    names = ["angry", "royal", "shocked"]
    together = editor.edit_many(portrait, names, seed=4)
    for d, many in zip(names, together):
        assert editor.edit(portrait, d, seed=4).image.tobytes() == many.image.tobytes()
    params = {}
    monkeypatch.setattr(repository, "pedit_config", lambda batching, p: params.update(p) or "")
    repository._write_pedit_model(tmp_path / "repo", repository.RepositoryConfig(model=str(by_task)), by_task)
    assert json.loads(params["model_meta"])["sampling_by_task"] == {"expression": EXPRESSION}
    # a model.json whose costumes sample with dpm (an export made before `pedit export` checked it):
    # the runtime editor, the Triton pedit model's too, refuses it once when built, naming the entry
    from pedit.errors import ModelError
    from pedit.export.runtime_editor import RuntimeEditor

    runtime = editor.runtime
    runtime.meta = {**runtime.meta, "sampling_by_task": {**runtime.meta["sampling_by_task"],
                                                         "costume": {"scheduler": "dpm"}}}
    with pytest.raises(ModelError, match=r'model\.json: "sampling_by_task\.costume": scheduler \'dpm\' .* ddim only'):
        RuntimeEditor(runtime)


def _one_error_line(result, *needles) -> str:
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1 and all(n in errors[0] for n in needles), result.stderr
    return errors[0]


@pytest.mark.parametrize("sections, schedule, needles", [
    ({"sampling_by_task": {"costume": {"s_s": 1e300}}}, None, ('"sampling_by_task.costume"', "s_s", "100")),
    ({"sampling": {"s_p": -1e300}}, None, ('"sampling"', "s_p", "100")),
    ({"sampling_by_task": {"costume": {"steps": 60}}}, 50, ('"sampling_by_task.costume"', "steps", "50 timesteps")),
])
def test_a_folder_sampler_that_cannot_run_is_one_error_line_at_load_whatever_the_direction(
        random_model, tmp_path, portrait, sections, schedule, needles):
    """Every sampler the folder can resolve is checked when it loads: an expression's edit fails on a
    costume's bad sampler too, before any work, naming pedit.json, the entry and the field; scales are
    bounded (pedit.model.sampling_settings.MAX_FOLDER_SCALE), steps by the noise schedule."""
    from pedit.cli import cli

    folder = _folder(random_model, tmp_path / "model", **sections)
    if schedule is not None:
        config = folder / "scheduler" / "scheduler_config.json"
        config.write_text(json.dumps({**json.loads(config.read_text()), "num_train_timesteps": schedule}))
    portrait.save(tmp_path / "in.png")
    out = tmp_path / "out.png"
    result = CliRunner().invoke(cli, ["edit", str(tmp_path / "in.png"), "-d", "angry", "-m", str(folder),
                                      "-o", str(out)], env=ENV)
    _one_error_line(result, "pedit.json", *needles)
    assert not out.exists()


def test_export_refuses_a_sampler_the_runtime_cannot_run_before_writing(random_model, tmp_path):
    """`pedit export` of a folder whose costumes sample with dpm: the torch-free runtime it exports for
    (and its Triton model) samples with ddim only, so it stops with one line before writing anything;
    the torch Editor loads the same folder (dpm is one of its samplers)."""
    from pedit.cli import cli

    folder = _folder(random_model, tmp_path / "model", sampling_by_task={"costume": {"scheduler": "dpm"}})
    assert Editor.from_pretrained(folder, device="cpu").default_options("royal").scheduler == "dpm"
    out = tmp_path / "export"
    result = CliRunner().invoke(cli, ["export", "-m", str(folder), "-o", str(out)], env=ENV)
    _one_error_line(result, "pedit.json", '"sampling_by_task.costume"', "'dpm'", "ddim only")
    assert not out.exists()
