"""`pedit --help` and every command's help end with one example line, whose flags are the command's own."""

import shlex

import click
import pytest
from click.testing import CliRunner

from pedit.cli import cli
from pedit.cli.examples import EXAMPLES

COMMANDS = cli.list_commands(click.Context(cli))


def _last_lines(*args) -> list[str]:
    result = CliRunner().invoke(cli, [*args, "--help"], prog_name="pedit", env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    return [line.strip() for line in result.stdout.rstrip("\n").splitlines()[-2:]]


@pytest.mark.parametrize("name", [None, *COMMANDS])
def test_help_ends_with_one_example_of_that_command(name):
    assert name in EXAMPLES, f"pedit {name}: add its example line to EXAMPLES in pedit/cli/examples.py"
    label, example = _last_lines(*([name] if name else []))
    assert label == "Example:" and example == EXAMPLES[name]  # one line, not rewrapped at 80 columns
    words = shlex.split(example)
    assert words[0] == "pedit" and (name is None or words[1] == name)


@pytest.mark.parametrize("name", [None, *COMMANDS])
def test_each_examples_flags_exist_and_parse(name):
    words = shlex.split(EXAMPLES[name])
    command = cli.get_command(click.Context(cli), words[1])
    known = {opt for p in command.params for opt in (*p.opts, *p.secondary_opts)}
    flags = [w for w in words[2:] if w.startswith("-")]
    assert flags and set(flags) <= known, f"{words[1]}: {set(flags) - known} are not its options"
    command.make_context(words[1], words[2:])  # required options there, values of the right type


def test_the_readmes_use_it_commands_parse():
    """Every `pedit ...` line of the README's "Use it" block names a command and flags that exist."""
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    block = readme.split("## Use it", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    lines = [line.split("  #", 1)[0].strip() for line in block.splitlines() if line.startswith("pedit ")]
    assert len(lines) >= 5
    for line in lines:
        words = shlex.split(line)
        command = cli.get_command(click.Context(cli), words[1])
        assert command is not None, f"README: no command {words[1]!r}"
        command.make_context(words[1], words[2:])  # unknown flags, missing values or bad types raise
