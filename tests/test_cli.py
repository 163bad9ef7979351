"""The command line (pedit.cli) through click's CliRunner: help for every command, exact error texts on
stderr with exit codes 1 (a failure the message explains) and 2 (bad usage), no tracebacks, stdout
kept machine-readable, and imports that keep `pedit --help` fast and the library free of click/rich."""

import json
import subprocess
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from pedit import __version__
from pedit.cli import cli
from pedit.data.directions import BUILTIN
from pedit.errors import PeditError

COMMANDS = cli.list_commands(click.Context(cli))
BUILTIN_LINES = [f"{d.name}\t{d.task}\t{d.p_a}\t{d.p_b}" for d in BUILTIN.values()]


def run(*args, env=None):
    # click >= 8.2 keeps stderr apart: result.stdout, result.stderr, and result.output (both, as a user sees them).
    # A wide console: rich wraps stderr at 80 columns otherwise, splitting long temp paths.
    return CliRunner().invoke(cli, [str(a) for a in args], prog_name="pedit", env={"COLUMNS": "1000", **(env or {})})


def assert_error(result, message: str, code: int = 1):
    """Exit `code`, `Error: message` alone on stderr, nothing on stdout, no traceback."""
    assert result.exit_code == code, result.output
    assert result.stderr == f"Error: {message}\n"
    assert result.stdout == ""
    assert "Traceback" not in result.output


# ---------------------------------------------------------------- help


def test_group_help_lists_every_command():
    result = run("--help")
    assert result.exit_code == 0 and result.stderr == ""
    assert result.stdout.startswith("Usage: pedit [OPTIONS] COMMAND [ARGS]...\n")
    for name in COMMANDS:
        assert f"\n  {name} " in result.stdout
    assert run("-h").stdout == result.stdout


def test_version():
    result = run("--version")
    assert result.exit_code == 0 and result.stdout == f"pedit, version {__version__}\n"


def test_the_commands_of_the_design_are_there():
    assert {"directions", "gen-pairs", "train", "edit"} <= set(COMMANDS)


@pytest.mark.parametrize("name", COMMANDS)
def test_every_subcommand_help_shows_its_options(name):
    command = cli.get_command(click.Context(cli), name)
    result = run(name, "--help")
    assert result.exit_code == 0, result.output
    assert result.stderr == ""
    assert result.stdout.startswith(f"Usage: pedit {name} ")
    for param in command.params:
        if isinstance(param, click.Option):
            for opt in param.opts + param.secondary_opts:
                assert opt in result.stdout, f"{name} --help does not show {opt}"
    assert "-h, --help" in result.stdout


# ---------------------------------------------------------------- directions


def test_directions_lists_the_eight_builtins_tab_separated():
    result = run("directions")
    assert result.exit_code == 0 and result.stderr == ""
    assert result.stdout.splitlines() == BUILTIN_LINES
    assert result.stdout.splitlines()[0] == "flower\tcostume\ta person, everyday clothes\ta person, flower costume"
    assert [line.split("\t")[0] for line in result.stdout.splitlines()] == [
        "flower", "sheep", "santa", "royal", "angry", "shocked", "laughing", "crying"]


def test_directions_file_adds_a_custom_direction(tmp_path):
    f = tmp_path / "mine.toml"
    f.write_text('[pirate]\ntask = "costume"\np_a = "a person, everyday clothes"\np_b = "a person, pirate costume"\n')
    result = run("directions", "--file", f)
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == BUILTIN_LINES + ["pirate\tcostume\ta person, everyday clothes\ta person, pirate costume"]


def test_directions_file_without_task_is_custom_and_can_override_a_builtin(tmp_path):
    f = tmp_path / "mine.toml"
    f.write_text('[royal]\np_a = "a"\np_b = "b"\n')
    lines = run("directions", "--file", f).stdout.splitlines()
    assert lines[3] == "royal\tcustom\ta\tb" and len(lines) == 8


def test_a_malformed_directions_file_is_an_error(tmp_path):
    f = tmp_path / "bad.toml"
    f.write_text("[pirate\ntask = costume\n")
    result = run("directions", "--file", f)
    assert_error(result, f"Directions file {f} is not valid TOML: Expected ']' at the end of a table declaration (at line 1, column 8)")


def test_a_directions_file_with_an_unknown_key(tmp_path):
    f = tmp_path / "bad.toml"
    f.write_text('[pirate]\np_a = "a"\np_b = "b"\ncolour = "red"\n')
    assert_error(run("directions", "--file", f), f"Directions file {f}: [pirate] has unknown keys ['colour'].")


def test_a_missing_directions_file(tmp_path):
    assert_error(run("directions", "--file", tmp_path / "nope.toml"), f"Directions file {tmp_path / 'nope.toml'} does not exist.")


def test_directions_of_a_folder_that_is_not_a_model(tmp_path):
    assert_error(run("directions", "-m", tmp_path), f"{tmp_path} is not a model folder (no pedit.json).")


def test_directions_of_a_model_with_a_corrupt_pedit_json(tmp_path):
    (tmp_path / "pedit.json").write_text("{bad")
    assert_error(run("directions", "-m", tmp_path), f"{tmp_path / 'pedit.json'} is not valid JSON "
                 "(Expecting property name enclosed in double quotes: line 1 column 2 (char 1)).")
    (tmp_path / "pedit.json").write_text('{"resolution": 32}')
    assert_error(run("directions", "-m", tmp_path), f"{tmp_path / 'pedit.json'} does not list the model's directions.")
    (tmp_path / "pedit.json").write_text('{"directions": [{"name": "x", "colour": "red"}]}')
    assert_error(run("directions", "-m", tmp_path), f"{tmp_path / 'pedit.json'} does not list the model's directions "
                 "properly (TypeError: Direction.__init__() got an unexpected keyword argument 'colour').")


def test_pedit_debug_raises_instead_of_printing_error(tmp_path):
    result = run("directions", "-m", tmp_path, env={"PEDIT_DEBUG": "1"})
    assert result.exit_code == 1
    assert isinstance(result.exception, PeditError) and not isinstance(result.exception, SystemExit)
    assert str(result.exception) == f"{tmp_path} is not a model folder (no pedit.json)."
    assert "Error:" not in result.stderr


# ---------------------------------------------------------------- gen-pairs


def test_gen_pairs_writes_n_rows(tmp_path):
    out = tmp_path / "pairs"
    result = run("gen-pairs", "-o", out, "-n", 3, "--resolution", 32, "--directions", "santa,angry", "--seed", 5)
    assert result.exit_code == 0, result.output
    assert result.stdout == ""  # progress and messages go to stderr
    assert result.stderr.startswith("GenPairsConfig(output=") and f"Wrote pairs to {out}\n" in result.stderr
    rows = [json.loads(line) for line in (out / "metadata.jsonl").read_text().splitlines()]
    assert [(r["id"], r["direction"], r["seed"]) for r in rows] == [
        ("000000", "santa", 5), ("000001", "angry", 6), ("000002", "santa", 7)]
    assert json.loads((out / "config.json").read_text())["directions"] == ["santa", "angry"]


def test_gen_pairs_quiet_prints_nothing(tmp_path):
    result = run("gen-pairs", "-o", tmp_path / "p", "-n", 1, "--resolution", 32, "--exact", "-q")
    assert result.exit_code == 0 and result.stdout == "" and result.stderr == ""


def test_gen_pairs_shard_out_of_range_is_an_error(tmp_path):
    # The I/N form is a usage error (2); an index outside 0..N-1 fails the config check (1).
    result = run("gen-pairs", "-o", tmp_path / "p", "-n", 2, "--shard", "5/2", "-q")
    assert_error(result, "shard must be I/N with 0 <= I < N, got 5/2")
    assert not (tmp_path / "p").exists()


def test_gen_pairs_shard_that_is_not_i_over_n_is_bad_usage(tmp_path):
    result = run("gen-pairs", "-o", tmp_path / "p", "-n", 2, "--shard", "half")
    assert result.exit_code == 2
    assert result.stderr.endswith("Error: Invalid value for --shard: expected I/N, e.g. 0/4\n")
    assert not (tmp_path / "p").exists()


def test_gen_pairs_unknown_direction(tmp_path):
    result = run("gen-pairs", "-o", tmp_path / "p", "-n", 2, "--directions", "santa,pirate", "-q")
    assert_error(result, f"Unknown direction(s) pirate; available: {', '.join(BUILTIN)}.")
    assert not (tmp_path / "p").exists()


@pytest.mark.parametrize("args, hint", [
    (["-n", "0"], "'-n'"), (["-n", "2", "--resolution", "16"], "'--resolution'"), (["-n", "2", "--source", "dalle"], "'--source'"),
])
def test_gen_pairs_bad_flags_are_usage_errors(tmp_path, args, hint):
    result = run("gen-pairs", "-o", tmp_path / "p", *args)
    assert result.exit_code == 2 and f"Invalid value for {hint}" in result.stderr
    assert "Traceback" not in result.output


# ---------------------------------------------------------------- train


def test_train_on_a_folder_with_a_missing_image_fails_before_writing(tiny_pairs_copy, tiny_base, tmp_path):
    (tiny_pairs_copy / "images" / "000002_x_B.png").unlink()
    out = tmp_path / "model"
    result = run("train", "--data", tiny_pairs_copy, "-o", out, "--base", tiny_base, "--max-steps", 1, "-q")
    assert_error(result, f"Pair folder {tiny_pairs_copy} has 1 problem(s): "
                         "row 3 (id '000002'): x_B 'images/000002_x_B.png' is missing. Fix or remove those rows.")
    assert result.stderr.startswith("Error: Pair folder")
    assert not out.exists()


def test_train_on_a_missing_pair_folder(tmp_path):
    result = run("train", "--data", tmp_path / "nope", "-o", tmp_path / "model", "-q")
    assert_error(result, f"Pair folder {tmp_path / 'nope'} does not exist (make one with `pedit gen-pairs -o {tmp_path / 'nope'}`).")


def test_train_resume_without_a_checkpoint(tiny_pairs, tiny_base, tmp_path):
    out = tmp_path / "model"
    result = run("train", "--data", tiny_pairs, "-o", out, "--base", tiny_base, "--resume", "-q")
    assert_error(result, f"--resume: no checkpoint in {out / 'checkpoints'}; start without --resume.")
    assert not out.exists()


def test_train_with_a_base_that_is_not_a_folder(tiny_pairs, tmp_path):
    ckpt = tmp_path / "sd.ckpt"
    ckpt.write_bytes(b"x")
    result = run("train", "--data", tiny_pairs, "-o", tmp_path / "model", "--base", ckpt, "-q")
    assert_error(result, f"Base model {ckpt} is a single checkpoint file; pedit needs a diffusers folder "
                         "(vae, text_encoder, tokenizer, unet, scheduler). Convert it with diffusers' conversion scripts first.")


def test_train_bad_flags_are_usage_errors(tmp_path):
    result = run("train", "--data", tmp_path, "-o", tmp_path / "m", "--mixed-precision", "fp8")
    assert result.exit_code == 2 and "Invalid value for '--mixed-precision'" in result.stderr
    result = run("train", "-o", tmp_path / "m")
    assert result.exit_code == 2 and "Missing option '--data'" in result.stderr


def test_train_one_step_writes_a_model_that_directions_lists(tiny_pairs, tiny_base, tmp_path):
    out = tmp_path / "model"
    result = run("train", "--data", tiny_pairs, "-o", out, "--base", tiny_base, "--max-steps", 1, "--batch-size", 2,
                 "--validate-every", 0, "-q")
    assert result.exit_code == 0, result.output
    assert result.stdout == "" and result.stderr == ""
    assert (out / "pedit.json").is_file() and (out / "unet").is_dir()
    assert json.loads((out / "config.json").read_text())["max_steps"] == 1
    listed = run("directions", "-m", out)
    assert listed.exit_code == 0, listed.output
    assert listed.stdout.splitlines() == sorted(BUILTIN_LINES)  # pedit.json stores them sorted by name


# ---------------------------------------------------------------- imports


def _python(code: str) -> str:
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).resolve().parents[1])
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()[-1]


def test_cli_help_does_not_import_torch():
    code = (
        "import sys\n"
        "from pedit.cli import cli\n"
        "for args in (['--help'], *[[name, '--help'] for name in cli.list_commands(None)]):\n"
        "    cli.main(args, prog_name='pedit', standalone_mode=False)\n"
        "print(sorted(m for m in ('torch', 'diffusers', 'transformers', 'accelerate') if m in sys.modules))\n"
    )
    assert _python(code) == "[]"


# The library never imports the CLI layer (imports go one way: front ends → library), and the light modules stay light.
IMPORT_RULES = [
    ("pedit.edit.editor pedit.train.loop pedit.train.steps pedit.model.loading pedit.photos.edit_files pedit.eval.ground_truth pedit.data.gen_pairs", ("click", "rich")),
    ("pedit.photos.photo pedit.photos.portrait pedit.viz", ("click", "rich", "torch", "cv2")),
    ("pedit.toon.world", ("click", "rich", "torch")),
    ("pedit.toon.parts", ("click", "rich", "torch", "diffusers", "transformers")),
]


@pytest.mark.parametrize("modules, forbidden", IMPORT_RULES)
def test_library_modules_import_only_their_layer(modules, forbidden):
    code = (
        "import sys\n"
        f"import {', '.join(modules.split())}\n"
        f"print(sorted({{m.split('.')[0] for m in sys.modules}} & {set(forbidden)!r}))\n"
    )
    assert _python(code) == "[]"


def test_train_on_the_bundled_base_without_init_scratch_says_how(tiny_pairs, tmp_path):
    result = CliRunner().invoke(cli, ["train", "--data", str(tiny_pairs), "-o", str(tmp_path / "m"), "--max-steps", "1"])
    assert result.exit_code == 1
    assert "has a config but no weights. Train from scratch with --init scratch" in result.stderr
    assert not (tmp_path / "m").exists()


# ---------------------------------------------------------------- edit: device and model metadata


def test_edit_with_an_unknown_or_missing_device_is_an_error(random_model):
    assert_error(run("edit", "examples/toon.png", "-d", "royal", "-m", random_model, "--device", "bogus"),
                 "Unknown device 'bogus'; use cpu, cuda or cuda:N.")
    import torch

    if not torch.cuda.is_available():
        assert_error(run("edit", "examples/toon.png", "-d", "royal", "-m", random_model, "--device", "cuda"),
                     "Device 'cuda' asked for, but this torch sees no CUDA GPU; use --device cpu.")


@pytest.mark.parametrize("change, message", [
    ({"directions": [{"name": "x", "colour": "red"}]},
     "does not list the model's directions properly (TypeError: Direction.__init__() got an unexpected keyword "
     "argument 'colour')."),
    ({"mask": {"strenght": 0.7}}, "\"mask\" has no setting 'strenght' (did you mean 'strength'?); the valid names are "
                                  "n_noise, strength, ratio, threshold, dilate, feather, keep_below, refine, prior_threshold, "
                                  "prior_band, change_below, change_from, edge_feather, guide_radius, refiner, refiner_threshold, refiner_band, "
                                  "refiner_change_below, refiner_feather."),
])
def test_edit_with_a_hand_edited_pedit_json_is_an_error(random_model, tmp_path, change, message):
    import shutil

    model = Path(shutil.copytree(random_model, tmp_path / "model"))
    meta = json.loads((model / "pedit.json").read_text())
    (model / "pedit.json").write_text(json.dumps({**meta, **change}))
    assert_error(run("edit", "examples/toon.png", "-d", "royal", "-m", model, "-o", tmp_path / "out.png"),
                 f"{model / 'pedit.json'}{':' if 'mask' in change else ''} {message}")
    assert not (tmp_path / "out.png").exists()
