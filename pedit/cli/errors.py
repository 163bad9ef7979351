"""The command line's error table: a `PeditError` is `Error: <message>` and exit 1, in this one place.

Bad flags are click usage errors (exit 2); anything pedit did not foresee is still one line;
`PEDIT_DEBUG=1` shows the traceback instead.
"""

from __future__ import annotations

import os

import click

from pedit.errors import PeditError


class PeditGroup(click.Group):
    def invoke(self, ctx):
        try:
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
            raise click.ClickException(
                f"unexpected {type(e).__name__}: {e} (run again with PEDIT_DEBUG=1 for the traceback)"
            ) from None
