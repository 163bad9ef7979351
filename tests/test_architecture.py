"""docs/architecture.md's walk of an image through `pedit edit` is the code's: every function it names is
defined in the file it names, the walk visits at most 10 files, and it walks down the wings once
(each file it reaches first is in the same wing as the previous new file, or a lower one)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from test_layout import WINGS

ROOT = Path(__file__).resolve().parents[1]


def _walk() -> list[tuple[str, str]]:
    text = (ROOT / "docs" / "architecture.md").read_text()
    section = text.split("## The way an image takes through `pedit edit")[1].split("\n## ")[0]
    rows = re.findall(r"^\| (\d+) \| `([^`]+)` \| `([^`]+)` \|", section, flags=re.M)
    assert rows, "no walk table found in docs/architecture.md"
    assert [int(n) for n, _, _ in rows] == list(range(1, len(rows) + 1))
    return [(path, name) for _, path, name in rows]


def _defined(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
    return names


def _wing(path: str) -> int:
    parts = Path(path).parts  # pedit/<wing>/<module>.py
    wing = parts[1] if len(parts) > 2 else "shared"
    return WINGS.index(wing)


def test_every_function_of_the_walk_is_defined_where_it_says():
    for path, name in _walk():
        assert (ROOT / path).is_file(), f"{path} named in docs/architecture.md does not exist"
        assert name in _defined(ROOT / path), f"{name} is not defined in {path} (docs/architecture.md's walk)"


def test_the_walk_visits_at_most_ten_files_down_the_wings_once():
    files = []
    for path, _ in _walk():
        if path not in files:
            files.append(path)
    assert len(files) <= 10, files
    levels = [_wing(f) for f in files]
    climbs = [(a, b) for a, b, la, lb in zip(files, files[1:], levels, levels[1:]) if lb < la]
    assert not climbs, f"the walk climbs back up a wing: {climbs}"
