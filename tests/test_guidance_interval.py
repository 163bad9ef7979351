"""Guidance on an interval of noise levels (issue 18, item 2): outside it every scale is 1, where
the nested CFG telescopes to the fully conditioned row, so those steps take rows 3-4 (row 3 without
the mask) instead of 5."""

from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from pedit.edit.editor import EditOptions
from pedit.edit.rows import edit_rows
from pedit.edit.guidance import GuidanceScales, guided_eps, unguided_eps
from pedit.edit.mask import MaskConfig
from pedit.errors import ConfigError
from pedit.model.sampling_settings import SamplingSettings


def _counting(editor):
    """The editor's denoise wrapped to record each call's (rows, timestep)."""
    calls, real = [], editor.denoise
    editor.denoise = lambda z, t, c: (calls.append((z.shape[0], int(t[0]))), real(z, t, c))[1]
    return calls, real


def test_unit_scales_from_the_prompt_rows_equal_the_guided_step():
    g = torch.Generator().manual_seed(0)
    rows = torch.randn(5 * 2, 4, 3, 3, generator=g)  # 5 blocks of B = 2
    mask = (torch.rand(2, 1, 3, 3, generator=g) > 0.5).float()
    unit = GuidanceScales(1.0, 1.0, 1.0)
    torch.testing.assert_close(unguided_eps(rows[6:], mask), guided_eps(rows, unit, mask), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(unguided_eps(rows[6:8]), guided_eps(rows, unit), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("use_mask, scheduler", [(True, "ddim"), (False, "ddim"), (True, "euler")])
def test_steps_outside_the_interval_take_fewer_rows_and_edit_rows_counts_them(editor, portrait, use_mask, scheduler):
    calls, real = _counting(editor)
    try:
        options = EditOptions(steps=10, seed=0, use_mask=use_mask, mask=MaskConfig(n_noise=2), scheduler=scheduler,
                              guidance_interval=[0.3, 0.7])  # a list (JSON, the Python API) becomes a tuple
        editor.edit(portrait, "royal", options)
    finally:
        editor.denoise = real
    assert options.guidance_interval == (0.3, 0.7) and hash(options)
    sampling = calls[1:] if use_mask else calls  # the mask's one call (2 draws x 2 rows) first
    plain = 2 if use_mask else 1
    scheduler_ = editor.scheduler(options)
    scheduler_.set_timesteps(10)
    total = int(scheduler_.config.num_train_timesteps)
    assert [n for n, _ in sampling] == [5 if 0.3 <= float(t) / total <= 0.7 else plain for t in scheduler_.timesteps]
    assert {n for n, _ in sampling} == {5, plain}  # both kinds of step occur
    assert sum(n for n, _ in calls) == edit_rows(options, editor.scheduler(options))


def test_the_whole_interval_is_todays_edit_and_unit_scales_match_without_guidance(editor, portrait):
    today = editor.edit(portrait, "royal", seed=1, steps=4)
    whole = editor.edit(portrait, "royal", seed=1, steps=4, guidance_interval=(0.0, 1.0))
    assert np.array_equal(np.asarray(today.image), np.asarray(whole.image))
    unit = GuidanceScales(1.0, 1.0, 1.0)
    guided = editor.edit(portrait, "royal", seed=1, steps=4, scales=unit)
    plain = editor.edit(portrait, "royal", seed=1, steps=4, scales=unit, guidance_interval=(0.0, 1e-6))
    # the same arithmetic up to float rounding (the sum telescopes): at most one level of 255 apart
    assert np.abs(np.asarray(guided.image, int) - np.asarray(plain.image, int)).max() <= 1


def test_edit_rows_of_todays_bundled_edit():
    from pedit.edit.sampler import make_scheduler
    from pedit.model.loading import bundled_model_path
    import json

    schedule = json.loads((bundled_model_path() / "scheduler" / "scheduler_config.json").read_text())
    assert edit_rows(EditOptions(mask=MaskConfig(n_noise=10)), make_scheduler("ddim", schedule)) == 120
    assert edit_rows(EditOptions(use_mask=False), make_scheduler("ddim", schedule)) == 100


@pytest.mark.parametrize("interval", [(0.8, 0.2), (-0.1, 0.5), (0.2, 1.5), (0.5, 0.5), (float("nan"), 1.0), (0.2,)])
def test_an_interval_that_cannot_work_is_refused(interval):
    with pytest.raises(ConfigError, match="guidance_interval"):
        EditOptions(guidance_interval=interval)


def test_the_cli_refuses_a_bad_interval_in_one_line(tmp_path):
    from pedit.cli import cli

    photo = tmp_path / "in.png"
    from PIL import Image
    from pedit.toon.world import render

    Image.fromarray(render(0, size=64)).save(photo)
    for value, needle in (("0.9,0.2", "0 <= lo < hi <= 1"), ("x", "is not two numbers")):
        result = CliRunner().invoke(cli, ["edit", str(photo), "-d", "royal", "--guidance-interval", value],
                                    env={"COLUMNS": "1000"})
        assert result.exit_code != 0 and needle in result.output and "Traceback" not in result.output
        assert not (tmp_path / "in_royal.png").exists()


def test_eval_takes_the_sampling_settings_of_ours(random_model, tmp_path):
    from pedit.data.gen_pairs import GenPairsConfig, generate_pairs
    from pedit.eval.ground_truth import EvalConfig, evaluate

    with pytest.raises(ConfigError, match="scheduler"):
        EvalConfig(pairs="p", sampling=SamplingSettings(scheduler="heun"))
    with pytest.raises(ConfigError, match="guidance_interval"):
        EvalConfig(pairs="p", sampling=SamplingSettings(guidance_interval=(0.5, 0.1)))
    pairs = generate_pairs(GenPairsConfig(str(tmp_path / "pairs"), n=2, resolution=32, exact=True))
    common = dict(pairs=str(pairs), model=str(random_model), methods=("ours",), grid_pairs=0,
                  imperfect_reference=False)
    base = evaluate(EvalConfig(**common, sampling=SamplingSettings(steps=4)))["methods"]["ours"]
    other = evaluate(EvalConfig(**common, sampling=SamplingSettings(steps=4, scheduler="dpm", guidance_interval=(0.3, 0.7),
                                                                    mask_noises=1)))["methods"]["ours"]
    assert base["psnr"] != other["psnr"]  # the settings reached the sampler


def test_eval_photos_takes_the_sampling_flags_and_refuses_the_pairs_only_ones(tmp_path, monkeypatch):
    from pedit.cli import cli
    from pedit.eval import photos

    seen = []

    def record(cfg, *args, **kwargs):  # stands in for the edits: what the command built is the question
        seen.append(cfg)
        raise SystemExit(0)

    monkeypatch.setattr(photos, "evaluate_photos", record)
    result = CliRunner().invoke(cli, ["eval", "--photos", str(tmp_path), "-d", "royal", "--guidance-interval", "0.2,0.8",
                                      "--s-p", "5"], env={"COLUMNS": "1000"})
    assert result.exit_code == 0, result.output  # the same sampling options as `pedit edit`, into the one settings object
    assert seen[0].sampling.guidance_interval == (0.2, 0.8) and seen[0].sampling.s_p == 5.0
    result = CliRunner().invoke(cli, ["eval", "--photos", str(tmp_path), "-d", "royal", "--batch-size", "4"],
                                env={"COLUMNS": "1000"})
    assert result.exit_code == 2 and "--batch-size goes with --pairs" in result.output


# ---------------------------------------------------------------- a model folder's "sampling" settings


@pytest.fixture(scope="module")
def fast_model(random_model, tmp_path_factory):
    """random_model with pedit.json "sampling": 4 DPM-Solver++ steps, guided on 0.3-0.9."""
    import json
    import shutil

    folder = tmp_path_factory.mktemp("fast") / "model"
    shutil.copytree(random_model, folder)
    meta = json.loads((folder / "pedit.json").read_text())
    meta["sampling"] = {"scheduler": "dpm", "steps": 4, "guidance_interval": [0.3, 0.9], "chosen_by": "a test"}
    (folder / "pedit.json").write_text(json.dumps(meta))
    return folder


def test_the_model_folders_sampling_settings_are_the_defaults_and_flags_win(fast_model, tmp_path, portrait):
    from pedit.cli import cli
    from pedit.edit.editor import Editor

    editor = Editor.from_pretrained(fast_model, device="cpu")
    options = editor.default_options("royal")
    assert (options.steps, options.scheduler, options.guidance_interval) == (4, "dpm", (0.3, 0.9))
    photo = tmp_path / "in.png"
    portrait.save(photo)
    runs = {}
    for name, flags in [("default", []), ("explicit", ["--steps", "4", "--scheduler", "dpm", "--guidance-interval",
                                                        "0.3,0.9"]), ("paper", ["--steps", "20", "--scheduler", "ddim",
                                                                                 "--guidance-interval", "0,1"])]:
        out = tmp_path / f"{name}.png"
        result = CliRunner().invoke(cli, ["edit", str(photo), "-d", "royal", "-m", str(fast_model), "-o", str(out),
                                          "--mask-noises", "2", "--device", "cpu", "-q", *flags])
        assert result.exit_code == 0, result.output
        runs[name] = out.read_bytes()
    assert runs["default"] == runs["explicit"] and runs["default"] != runs["paper"]


@pytest.mark.parametrize("sampling, needle", [({"steps": 0}, "steps"), ({"scheduler": "heun"}, "scheduler"),
                                              ({"guidance_interval": [0.9, 0.1]}, "guidance_interval"),
                                              ({"stepz": 8}, "may only set")])
def test_a_malformed_sampling_setting_is_one_error_line(random_model, tmp_path, portrait, sampling, needle):
    import json
    import shutil

    from pedit.cli import cli

    folder = Path(shutil.copytree(random_model, tmp_path / "model"))
    meta = json.loads((folder / "pedit.json").read_text())
    meta["sampling"] = sampling
    (folder / "pedit.json").write_text(json.dumps(meta))
    portrait.save(tmp_path / "in.png")
    result = CliRunner().invoke(cli, ["edit", str(tmp_path / "in.png"), "-d", "royal", "-m", str(folder)],
                                env={"COLUMNS": "1000"})
    assert result.exit_code == 1 and "Traceback" not in result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1 and '"sampling"' in errors[0] and needle in errors[0]
    assert not (tmp_path / "in_royal.png").exists()


def test_eval_and_bench_take_the_model_folders_sampling(fast_model, tmp_path):
    from pedit.data.gen_pairs import GenPairsConfig, generate_pairs
    from pedit.eval.ground_truth import EvalConfig, evaluate
    from pedit.export.bench import BenchConfig, with_sampling

    pairs = generate_pairs(GenPairsConfig(str(tmp_path / "pairs"), n=1, resolution=32, exact=True))
    report = evaluate(EvalConfig(pairs=str(pairs), model=str(fast_model), methods=("ours", "sdedit-0.5"), grid_pairs=0,
                                 imperfect_reference=False, sampling=SamplingSettings(mask_noises=1)))
    assert report["sampling"] == {"ours": {"scheduler": "dpm", "steps": 4, "guidance_interval": (0.3, 0.9),
                                           "s_s": 1.5, "s_im": 1.0, "s_p": 4.0},
                                  "baselines": {"scheduler": "ddim", "steps": 20}}
    cfg = with_sampling(BenchConfig(model=str(fast_model), vs_ip2p=True))
    s = cfg.sampling
    assert (s.steps, s.scheduler, s.guidance_interval, cfg.ip2p_steps) == (4, "dpm", (0.3, 0.9), 20)
    cfg = with_sampling(BenchConfig(model=str(fast_model),
                                    sampling=SamplingSettings(steps=6, scheduler="euler", guidance_interval=(0.0, 1.0))))
    s = cfg.sampling
    assert (s.steps, s.scheduler, s.guidance_interval, cfg.ip2p_steps) == (6, "euler", (0.0, 1.0), None)


def test_edit_eval_and_bench_share_one_declaration_of_the_sampling_options():
    """Every command that samples edits takes the SamplingSettings options from pedit.cli.choices, the same
    flags with the same help, and builds the one settings object from them."""
    from pedit.cli import cli
    from pedit.cli.choices import SAMPLING_FIELDS

    def options(name):
        return {p.name: (tuple(p.opts), p.help) for p in cli.commands[name].params if p.name in SAMPLING_FIELDS}

    edit, evaluate, bench = options("edit"), options("eval"), options("bench")
    assert set(edit) == set(bench) == set(SAMPLING_FIELDS)
    assert set(evaluate) == set(SAMPLING_FIELDS) - {"no_mask"}  # eval scores with and without the mask as methods
    for name in evaluate:  # the seed's help names what it seeds; the rest is word for word
        if name != "seed":
            assert edit[name] == evaluate[name] == bench[name], name
