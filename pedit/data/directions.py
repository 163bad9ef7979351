"""Editing directions: the built-in eight and the user's own from a TOML file.

A direction (docs/design-notes.md, "Directions") is a name, a task, the source prompt `p_a`, the target
prompt `p_b` and the shared prompt `p` used by gen-pairs (paper §3.2, Eq. 2). One MCDM serves
every direction of its training set: at inference the text prompt selects the direction (§4).
"""

from __future__ import annotations

import dataclasses
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path

from pedit.errors import DirectionError, ModelError
from pedit.files import read_user_text

TASKS = ("costume", "expression", "custom")


@dataclass(frozen=True)
class Direction:
    name: str
    task: str
    p_a: str  # source prompt, e.g. "a person, everyday clothes"
    p_b: str  # target prompt, e.g. "a person, santa claus costume"
    p: str  # shared prompt for the side-by-side canvas of gen-pairs

    def __post_init__(self):
        if not self.name or not self.name.replace("-", "").replace("_", "").isalnum():
            raise DirectionError(
                f"Direction name {self.name!r} must be letters, digits, '-' or '_' (it is used in file names)."
            )
        if self.task not in TASKS:
            raise DirectionError(f"Direction {self.name!r}: task must be one of {', '.join(TASKS)}, got {self.task!r}.")
        for field in ("p_a", "p_b", "p"):
            if not isinstance(getattr(self, field), str) or not getattr(self, field).strip():
                raise DirectionError(f"Direction {self.name!r}: {field} must be a non-empty prompt.")

    def for_subject(self, subject: str | None) -> "Direction":
        """This direction with "person" in its prompts replaced by `subject` ("old man"); None: unchanged.

        A model folder records each direction's template prompts (with "person" where gen-pairs varied the subject);
        `pedit edit --subject WORD` fills the subject in, as gen-pairs did for each pair."""
        if subject is None:
            return self
        check_subject(subject)
        return dataclasses.replace(self, **{f: with_subject(getattr(self, f), subject) for f in ("p_a", "p_b", "p")})


_SUBJECT_WORD = re.compile(r"[A-Za-z][A-Za-z'-]*(?: [A-Za-z][A-Za-z'-]*){0,3}")


def check_subject(subject) -> None:
    """A subject is one to four plain words ("woman", "old man"): it goes inside a prompt."""
    if not isinstance(subject, str) or not _SUBJECT_WORD.fullmatch(subject):
        raise DirectionError(f"subject must be one to four words of letters (e.g. 'woman', 'old man'), got {subject!r}.")


def with_subject(prompt: str, subject: str) -> str:
    """"a person, santa claus costume" → "a woman, santa claus costume", "an old man, ..." (the
    article follows the subject's first letter; prompts without "person" unchanged)."""
    def swap(m: re.Match) -> str:
        if not m["article"]:
            return subject
        article = "an" if subject[:1].lower() in "aeiou" else "a"
        return f"{article.capitalize() if m['article'][0] == 'A' else article} {subject}"

    return re.sub(r"\b(?:(?P<article>[Aa]n?) )?person\b", swap, prompt)


def without_subject(prompt: str, subject: str) -> str:
    """The inverse of with_subject: "an old man, santa claus costume" → "a person, santa claus costume".

    For pair folders written before gen-pairs recorded each row's template prompts."""
    def swap(m: re.Match) -> str:
        if not m["article"]:
            return "person"
        return f"{'A' if m['article'][0] == 'A' else 'a'} person"

    return re.sub(rf"\b(?:(?P<article>[Aa]n?) )?{re.escape(subject)}\b", swap, prompt)


_SHARED = "the same person on the left and right"
_COSTUME_SOURCE = "a person, everyday clothes"
_EXPRESSION_SOURCE = "a cartoon person, neutral expression"

BUILTIN: dict[str, Direction] = {
    d.name: d
    for d in [
        Direction("flower", "costume", _COSTUME_SOURCE, "a person, flower costume", _SHARED),
        Direction("sheep", "costume", _COSTUME_SOURCE, "a person, sheep costume", _SHARED),
        Direction("santa", "costume", _COSTUME_SOURCE, "a person, santa claus costume", _SHARED),
        Direction("royal", "costume", _COSTUME_SOURCE, "a person, royal costume", _SHARED),
        Direction("angry", "expression", _EXPRESSION_SOURCE, "a cartoon person, angry expression", _SHARED),
        Direction("shocked", "expression", _EXPRESSION_SOURCE, "a cartoon person, shocked expression", _SHARED),
        Direction("laughing", "expression", _EXPRESSION_SOURCE, "a cartoon person, laughing expression", _SHARED),
        Direction("crying", "expression", _EXPRESSION_SOURCE, "a cartoon person, crying expression", _SHARED),
    ]
}


def load_directions_file(path: str | Path) -> dict[str, Direction]:
    """Read user directions from TOML: one table per direction.

        [pirate]
        task = "costume"
        p_a = "a person, everyday clothes"
        p_b = "a person, pirate costume"
        p = "the same person on the left and right"   # optional
    """
    path = Path(path)
    try:
        data = tomllib.loads(read_user_text(path, "Directions file", "TOML", DirectionError))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise DirectionError(f"Directions file {path} is not valid TOML: {e}") from None
    out = {}
    for name, table in data.items():
        if not isinstance(table, dict):
            raise DirectionError(f"Directions file {path}: [{name}] must be a table with task, p_a and p_b.")
        unknown = set(table) - {"task", "p_a", "p_b", "p"}
        if unknown:
            raise DirectionError(f"Directions file {path}: [{name}] has unknown keys {sorted(unknown)}.")
        missing = {"p_a", "p_b"} - set(table)
        if missing:
            raise DirectionError(f"Directions file {path}: [{name}] is missing {', '.join(sorted(missing))}.")
        out[name] = Direction(name, table.get("task", "custom"), table["p_a"], table["p_b"], table.get("p", _SHARED))
    return out


def all_directions(extra_file: str | Path | None = None) -> dict[str, Direction]:
    """Built-in directions, updated with the user's file if given (user entries win)."""
    directions = dict(BUILTIN)
    if extra_file is not None:
        directions.update(load_directions_file(extra_file))
    return directions


def resolve(name: str, available: dict[str, Direction]) -> Direction:
    """The direction called `name`, or a DirectionError listing the available ones."""
    if name not in available:
        raise DirectionError(f"Unknown direction {name!r}. Available: {', '.join(sorted(available))}.")
    return available[name]


def model_directions(meta: dict, where: Path) -> dict[str, Direction]:
    """The directions a model folder was trained on, from its pedit.json (`meta`), validated."""
    try:
        listed = [Direction(**d) for d in meta.get("directions", [])]
    except (KeyError, TypeError, AttributeError, DirectionError) as e:
        raise ModelError(
            f"{Path(where) / 'pedit.json'} does not list the model's directions properly ({type(e).__name__}: {e})."
        ) from None
    out: dict[str, Direction] = {}
    for d in listed:  # a name listed twice: the second would silently replace the first's prompts
        if d.name in out:
            raise ModelError(f"{Path(where) / 'pedit.json'} lists the direction {d.name!r} twice; each direction "
                             "must be listed once, with the prompts the model was trained on.")
        out[d.name] = d
    return out
