"""The few array operations the edit's math needs, on torch tensors (CPU or CUDA) and numpy arrays alike.

The step math (guidance, the DDIM update, the editing mask, the composite) is written once over these
and the Python array API (`array_api_compat.array_namespace`), so the eager-torch editor and the
torch-free deployment runtime run the same code. Nothing here imports torch: a torch tensor brings its
own namespace. Each helper keeps the operation torch itself would run (`cat`, not a copy loop), so the
torch path's results are the bytes it always gave.
"""

from __future__ import annotations

from array_api_compat import array_namespace, is_torch_array


def xp_of(*arrays):
    """The array namespace of `arrays` (array_api_compat's wrapper of torch or numpy)."""
    return array_namespace(*arrays)


def cat(arrays, axis: int = 0):
    """Arrays joined along `axis` (torch.cat / numpy.concatenate)."""
    return xp_of(arrays[0]).concat(list(arrays), axis=axis)


def tile_rows(x, n: int):
    """(B, ...) → (nB, ...): n copies one after another, block-wise (torch's x.repeat(n, 1, ...))."""
    return cat([x] * n)


def blocks(x, n: int) -> list:
    """(nB, ...) → n blocks of (B, ...): the inverse of `tile_rows`' layout (torch's chunk(n))."""
    b = x.shape[0] // n
    return [x[i * b: (i + 1) * b] for i in range(n)]


def as_dtype(x, like):
    """x in `like`'s dtype (a float32 mask must not promote an fp16 prediction)."""
    return x if x.dtype == like.dtype else xp_of(x).astype(x, like.dtype)


def on_device_of(like) -> dict:
    """{"device": ...} for creating an array where `like` lives (torch), {} for numpy."""
    return {"device": like.device} if is_torch_array(like) else {}


def to_like(x, like):
    """x (numpy or torch) in `like`'s library and dtype and, for torch, on its device (a user's numpy
    mask meeting a CUDA latent)."""
    if is_torch_array(like):
        import torch

        return torch.as_tensor(x).to(like)
    return as_dtype(to_host(x), like)


def all_finite(x) -> bool:
    """Whether every value of x is finite (one host sync on a GPU)."""
    xp = xp_of(x)
    return bool(xp.all(xp.isfinite(x)))


def to_host(x):
    """x as a numpy array on the host."""
    if is_torch_array(x):
        return x.detach().cpu().numpy()
    return x
