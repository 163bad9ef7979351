"""The command line's error table: a `PeditError` is `Error: <message>` and exit 1, in this one place.

Bad flags are click usage errors (exit 2); anything pedit did not foresee is still one line;
`PEDIT_DEBUG=1` shows the traceback instead. SIGTERM (what `timeout`, systemd and container
runtimes send) stops a command the way Ctrl-C does, so the same all-or-none cleanup runs.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading

import click

from pedit.errors import PeditError

# What the `torch` extra brings (pyproject.toml): a command that imports one of them without it installed
# gets one line naming the extra.
TORCH_EXTRA = ("torch", "torchvision", "diffusers", "transformers", "accelerate", "safetensors", "huggingface_hub",
               "skimage")


def _terminated(signum, frame):
    raise KeyboardInterrupt  # every cleanup in pedit (temps, items, run folders) runs for it


@contextlib.contextmanager
def sigterm_as_ctrl_c():
    """SIGTERM raises KeyboardInterrupt for the length of a command (main thread only: signal rule).
    Its default would end the process at once, between two files of one item."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


class PeditGroup(click.Group):
    def invoke(self, ctx):
        try:
            with sigterm_as_ctrl_c():
                return super().invoke(ctx)
        except PeditError as e:
            if os.environ.get("PEDIT_DEBUG"):
                raise
            raise click.ClickException(str(e)) from None
        except (click.exceptions.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise
        except Exception as e:
            # Anything else is a failure pedit did not foresee: still one line, never a traceback.
            if os.environ.get("PEDIT_DEBUG"):
                raise
            if isinstance(e, ModuleNotFoundError) and (e.name or "").split(".")[0] in TORCH_EXTRA:
                # The base install is the torch-free runtime (docs/runtime.md): say which extra to add.
                raise click.ClickException(f"This needs {e.name}, which the base install (the deployment runtime) "
                                           "leaves out: pip install 'pedit[torch]'.") from None
            raise click.ClickException(
                f"unexpected {type(e).__name__}: {e} (run again with PEDIT_DEBUG=1 for the traceback)"
            ) from None
