"""pedit.noise is the one way to draw random tensors (issue 17): same seed → same numbers on any
device, the numbers pedit always drew on the CPU, and no bare torch random call anywhere else."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch

import pedit
from pedit import noise

ROOT = Path(pedit.__file__).parent
# Functions and tensor methods that draw from a random generator; only pedit/noise.py calls them.
RANDOM_FUNCTIONS = {"randn", "rand", "randint", "randperm", "randn_like", "rand_like", "randint_like", "normal",
                    "bernoulli", "multinomial", "poisson"}
RANDOM_METHODS = {"normal_", "uniform_", "bernoulli_", "random_", "exponential_", "geometric_", "cauchy_",
                  "log_normal_"}


def bare_random_calls(source: str) -> list[str]:
    """Each `torch.randn(...)`-style call, in-place `x.normal_()`-style call and `from torch import randn` in `source`."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.module == "torch":
            found += [f"line {node.lineno}: from torch import {a.name}" for a in node.names if a.name in RANDOM_FUNCTIONS]
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
            continue
        attr, owner = node.func.attr, node.func.value
        if attr in RANDOM_FUNCTIONS and isinstance(owner, ast.Name) and owner.id == "torch":
            found.append(f"line {node.lineno}: torch.{attr}")
        elif attr in RANDOM_METHODS:
            found.append(f"line {node.lineno}: .{attr}")
    return found


def test_no_module_draws_random_tensors_but_pedit_noise():
    offenders = {}
    for path in sorted(ROOT.rglob("*.py")):
        if path == ROOT / "noise.py":
            continue
        calls = bare_random_calls(path.read_text())
        if calls:
            offenders[str(path.relative_to(ROOT.parent))] = calls
    assert not offenders, f"draw random tensors through pedit.noise (randn/rand/randint): {offenders}"


@pytest.mark.parametrize("snippet", ["torch.randn(3, generator=g)", "torch.randint(0, 4, (2,))", "x.normal_()",
                                     "torch.rand_like(x)", "from torch import randn"])
def test_the_scan_finds_each_kind_of_bare_call(snippet):
    assert bare_random_calls(snippet)


def test_the_same_numbers_pedit_drew_before():
    """Byte-identical to the bare calls on the CPU, so every pinned edit keeps its pixels."""
    def g():
        return torch.Generator().manual_seed(7)
    like = torch.zeros(1, dtype=torch.float64)
    assert torch.equal(noise.randn((2, 4, 3, 3), g()), torch.randn((2, 4, 3, 3), generator=g()))
    assert torch.equal(noise.randn((2, 4), g(), like=like), torch.randn((2, 4), generator=g(), dtype=torch.float32).to(like))
    assert torch.equal(noise.rand(5, g()), torch.rand(5, generator=g()))
    assert torch.equal(noise.randint(0, 1000, (6,), g()), torch.randint(1000, (6,), generator=g()))
    assert noise.randn(3, g(), like=like).dtype == torch.float64


def test_draws_on_the_generator_then_moves_to_the_target():
    """A `meta` target stands in for a GPU: a CPU generator's draw must land there, not stay on the CPU."""
    g = torch.Generator().manual_seed(0)
    target = torch.empty(1, device="meta", dtype=torch.float16)
    for x in (noise.randn((2, 3), g, like=target), noise.rand((2, 3), g, device="meta", dtype=torch.float16)):
        assert x.device.type == "meta" and x.dtype == torch.float16
    t = noise.randint(0, 10, (4,), g, device="meta")
    assert t.device.type == "meta" and t.dtype == torch.int64
    # the stream advanced exactly as on the CPU: the next draw matches a CPU-only sequence
    ref = torch.Generator().manual_seed(0)
    torch.randn((2, 3), generator=ref), torch.rand((2, 3), generator=ref), torch.randint(0, 10, (4,), generator=ref)
    assert torch.equal(noise.randn(3, g), torch.randn(3, generator=ref))
