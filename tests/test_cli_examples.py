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
