"""What every command draws: a rich console on stderr (stdout stays machine-readable), bars, the config line."""

from __future__ import annotations

def make_console(quiet: bool = False):
    from rich.console import Console

    return Console(stderr=True, quiet=quiet, highlight=False)


def make_progress(console, transient: bool = False):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"), TimeRemainingColumn(), console=console, transient=transient,
    )


def show_config(console, cfg) -> None:
    from dataclasses import asdict

    from rich.markup import escape

    items = ", ".join(f"{k}={v}" for k, v in asdict(cfg).items())
    console.print(f"[dim]{type(cfg).__name__}({escape(items)})[/dim]")  # values may hold "[...]" (prompts, paths)
