"""The errors pedit raises for problems a user can fix.

Every message says what was expected, what was found and what to do. The CLI maps any
`PeditError` to `Error: <message>` on stderr and exit code 1 in one place (`pedit.cli.main`);
`PEDIT_DEBUG=1` shows the traceback instead. Programming errors are not `PeditError`s.
"""

from __future__ import annotations


class PeditError(Exception):
    """Base class: a failure whose message tells the user what to do."""


class InputImageError(PeditError):
    """A photo that cannot be used: missing, unreadable, truncated, too small or too large."""


class OutputError(PeditError):
    """An output that cannot be written: exists without --overwrite, unwritable folder."""


class ModelError(PeditError):
    """A model or base folder that is missing, incomplete, or has mismatched shapes."""


class UnsafeModelError(ModelError):
    """A pickle checkpoint (.bin, .pt, .ckpt) found where only safetensors are loaded by default."""


class PairFolderError(PeditError):
    """A pair folder whose metadata.jsonl or images are missing, malformed or unsafe."""


class DirectionError(PeditError):
    """An unknown editing direction, or a malformed directions file."""


class ConfigError(PeditError):
    """A configuration whose values contradict each other or are out of range."""


class NonFiniteError(PeditError):
    """A model computation that produced NaN or infinite values (never written out as a result)."""


class FaceModelMissing(ModelError):
    """dlib or its face model files are not installed (`pip install 'pedit[faces]'`)."""


class PoseError(PeditError):
    """A pose source for gen-pairs that cannot be used: malformed keypoints JSON, missing detector."""


class MissingPackageError(PeditError):
    """An optional package (one of pedit's extras) that a command needs is not installed; says which extra."""


class NothingEditedError(PeditError):
    """An edit that changed no pixel (an empty mask): written out, it would pass for a result."""
