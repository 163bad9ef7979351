"""Which folder `-m` names: the bundled models by name, else the path itself. Imports nothing heavy,
so the torch-free runtime (pedit.export.runtime) resolves `-m` with the same rule as the loaders.
"""

from __future__ import annotations

from pathlib import Path


def bundled_model_path() -> Path:
    """The toon model that ships inside the package (the default of every `-m`)."""
    return Path(__file__).parents[1] / "assets" / "toon-model"


# Models that ship inside the package, by the name `-m` also takes (a folder of that name here wins).
BUNDLED_MODELS = {"toon": "toon-model", "toon-fast": "toon-model-fast"}  # toon-fast: its distilled student
# What `pedit edit`, sticker-pack and the web app use without -m: of the shipped models that meet the fidelity and
# preservation targets on the 200 held-out toon pairs at their own defaults, the one with the fewest U-Net rows
# (docs/design-notes.md, "The default model"): the student, 16 rows against the teacher's 24. The library's
# Editor.from_pretrained(None) stays the teacher.
DEFAULT_EDIT_MODEL = "toon-fast"


def model_path(path: str | Path | None) -> Path:
    """The folder `-m path` means: the bundled toon model for None, a bundled model's name (BUNDLED_MODELS)
    when no file or folder of that name exists, else the path itself."""
    if path is None:
        return bundled_model_path()
    if str(path) in BUNDLED_MODELS and not Path(path).exists():
        return Path(__file__).parents[1] / "assets" / BUNDLED_MODELS[str(path)]
    return Path(path).expanduser()
