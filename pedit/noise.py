"""One way to draw random tensors: on the generator's device, then moved to where they are used.

Every random tensor on a path that may run on CUDA (train, gen-pairs, edit, mask, eval, stickers)
comes from here; tests/test_noise.py keeps it so (no bare `torch.randn/rand/randint/...` elsewhere in
those modules). Two rules make a seed mean the same thing everywhere:

- draw on `generator.device` (a CPU generator for every seed pedit makes), in float32, so the same
  seed gives the same numbers whether the model runs on the CPU or a GPU, and the CPU draws are the
  ones pedit always made (the bundled model's pinned edits stay byte-identical);
- then move the result to the target's device and dtype, so no CPU tensor meets a CUDA one later
  ("Expected all tensors to be on the same device").

A shared module (below every wing) because train, data, edit, eval, model, export and stickers all
draw noise, and none of those wings may import another above it.
"""

from __future__ import annotations

import torch

__all__ = ["randn", "rand", "randint"]


def _shape(shape) -> tuple[int, ...]:
    return (shape,) if isinstance(shape, int) else tuple(shape)


def _target(like: torch.Tensor | None, device, dtype):
    if like is not None:
        return like.device if device is None else device, like.dtype if dtype is None else dtype
    return device, dtype


def randn(shape, generator: torch.Generator, *, like: torch.Tensor | None = None,
          device=None, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Unit Gaussian noise of `shape`, drawn in float32 on the generator's device, returned on
    `device`/`dtype` (or those of `like`; unchanged where neither is given)."""
    device, dtype = _target(like, device, dtype)
    x = torch.randn(_shape(shape), generator=generator, device=generator.device, dtype=torch.float32)
    return x.to(device=device, dtype=dtype)


def rand(shape, generator: torch.Generator, *, like: torch.Tensor | None = None,
         device=None, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Uniform [0, 1) of `shape`, drawn like `randn`."""
    device, dtype = _target(like, device, dtype)
    x = torch.rand(_shape(shape), generator=generator, device=generator.device, dtype=torch.float32)
    return x.to(device=device, dtype=dtype)


def randint(low: int, high: int, shape, generator: torch.Generator, *, device=None) -> torch.Tensor:
    """Integers in [low, high) of `shape` (int64), drawn on the generator's device, returned on `device`."""
    x = torch.randint(low, high, _shape(shape), generator=generator, device=generator.device)
    return x.to(device=device)
