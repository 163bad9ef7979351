"""The `pedit` command line: one thin module per wing; `main.py` holds the group."""

from pedit.cli.main import cli, main

__all__ = ["cli", "main"]
