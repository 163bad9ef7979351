"""The package's layout rules (docs/design-notes.md "Layout and imports", docs/architecture.md), read from the import statements.

A wing imports only the wings below it, and no two modules import each other, directly or round a
longer loop. Imports inside functions count too: they are the same dependency, paid later. The rule
is checked from the source with `ast`, so a new upward import fails here, not in a reader's head.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "pedit"

# Top to bottom. "shared" is every module directly in pedit/ (errors, files, validate, viz, cache, ...).
WINGS = ("api", "cli", "app", "stickers", "eval", "photos", "export", "train", "edit", "model", "data", "toon",
         "faces", "shared")
# Only these may import the front-end libraries (imports go one way: front ends → library).
FRONT_ENDS = {"cli": {"click", "rich"}, "app": {"gradio", "gradio_client"}}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def wing_of(name: str) -> str:
    parts = name.split(".")
    if name in ("pedit", "pedit.__main__"):
        return "api"  # the package's own facade (`from pedit import Editor`) and `python -m pedit`
    if parts[1] == "faces":
        return "faces"
    if len(parts) == 2 and not (PACKAGE / parts[1]).is_dir():
        return "shared"
    assert parts[1] in WINGS, f"{name} is in no wing of the layout (docs/architecture.md); add it to WINGS in this test"
    return parts[1]


def imports_of(path: Path, known: dict[str, Path]) -> set[str]:
    """The pedit modules `path` imports (at its top or inside functions), and the other top-level packages."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            for alias in node.names:  # `from pedit.export import trt` imports the module pedit.export.trt
                sub = f"{node.module}.{alias.name}"
                if sub in known:
                    found.add(sub)
                elif node.module == "pedit" and alias.name == "__version__":
                    found.add("pedit.__version__")
                else:
                    found.add(node.module)
    return found


def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imports_of(path, known) for name, path in known.items()}


def test_every_module_is_in_a_wing():
    for name in modules():
        assert wing_of(name) in WINGS


def test_no_wing_imports_a_wing_above_it():
    upward = []
    for name, targets in graph().items():
        here = WINGS.index(wing_of(name))
        for target in sorted(t for t in targets if t.startswith("pedit")):
            there = "shared" if target == "pedit.__version__" else wing_of(target)
            if WINGS.index(there) < here:
                upward.append(f"{name} ({wing_of(name)}) imports {target} ({there})")
    assert upward == []


def test_no_two_modules_import_each_other():
    imports = graph()
    edges = {name: {t for t in targets if t in imports} for name, targets in imports.items()}
    circles = [component for component in strongly_connected(edges) if len(component) > 1]
    assert circles == []


def test_only_the_front_ends_import_click_rich_or_gradio():
    every_front_end = set().union(*FRONT_ENDS.values())
    wrong = []
    for name, targets in graph().items():
        allowed = FRONT_ENDS.get(wing_of(name), set())
        wrong += [f"{name} imports {t}" for t in sorted(targets)
                  if t.split(".")[0] in every_front_end - allowed]
    assert wrong == []


def strongly_connected(edges: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components, iterative (the graph is small; recursion would do too)."""
    index, low, on_stack, stack, out = {}, {}, set(), [], []
    for root in sorted(edges):
        if root in index:
            continue
        work = [(root, iter(sorted(edges[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                out.append(sorted(component))
    return out


@pytest.mark.parametrize("edges, expected", [
    ({"a": {"b"}, "b": {"a"}, "c": set()}, [["a", "b"]]),
    ({"a": {"b"}, "b": {"c"}, "c": {"a"}}, [["a", "b", "c"]]),
    ({"a": {"b"}, "b": {"c"}, "c": set()}, []),
])
def test_the_circle_finder_finds_circles(edges, expected):
    assert [c for c in strongly_connected(edges) if len(c) > 1] == expected


def test_the_rule_sees_an_upward_import_inside_a_function(tmp_path):
    """The checker reads lazy imports: a function-level `from pedit.export...` in a lower wing counts."""
    source = tmp_path / "m.py"
    source.write_text("def f():\n    from pedit.export.backends import make_denoise\n")
    assert imports_of(source, modules()) == {"pedit.export.backends"}
