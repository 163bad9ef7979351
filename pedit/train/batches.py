"""Which pairs each training step sees and what it drops: seeds, per-epoch data order, condition dropout (paper §3.3)."""

from __future__ import annotations

import functools

import numpy as np
import torch

from pedit.data.pairs import Pair
from pedit.train.latent_cache import read_unchanged
from pedit.noise import rand, randint


def step_seed(seed: int, step: int, rank: int) -> int:
    """A well-mixed 63-bit seed for one (seed, step, rank); ranks never share a stream."""
    return int(np.random.SeedSequence([seed, step, rank]).generate_state(2, np.uint64)[0] >> np.uint64(1))


@functools.lru_cache(maxsize=4)
def _epoch_order(seed: int, epoch: int, n: int) -> np.ndarray:
    return np.random.default_rng([seed, epoch]).permutation(n)


def batch_indices(seed: int, step: int, rank: int, world: int, batch_size: int, n: int) -> list[int]:
    """This rank's indices for micro-batch `step` (the step itself without gradient accumulation):
    a slice of the global batch taken from per-epoch permutations."""
    start = step * batch_size * world + rank * batch_size
    return [int(_epoch_order(seed, pos // n, n)[pos % n]) for pos in range(start, start + batch_size)]


class StepBatches(torch.utils.data.Sampler):
    """Yields batch_indices for micro-batches start..stop-1 (step s of a run with gradient
    accumulation k takes micro-batches s*k .. s*k+k-1): the data order depends on the index alone."""

    def __init__(self, seed: int, start: int, stop: int, rank: int, world: int, batch_size: int, n: int):
        self.args = (seed, rank, world, batch_size, n)
        self.start, self.stop = start, stop

    def __len__(self):
        return self.stop - self.start

    def __iter__(self):
        seed, rank, world, batch_size, n = self.args
        for step in range(self.start, self.stop):
            yield batch_indices(seed, step, rank, world, batch_size, n)


class PairImages(torch.utils.data.Dataset):
    """(x_A, x_B) of a pair as (3, R, R) uint8 tensors; decoded in DataLoader workers."""

    def __init__(self, pairs: list[Pair], size: int):
        self.pairs, self.size = pairs, size

    def __len__(self):
        return len(self.pairs)

    def __getitem__(self, i):
        p = self.pairs[i]
        return tuple(torch.from_numpy(read_unchanged(f, self.size)).permute(2, 0, 1) for f in (p.x_A, p.x_B))


def sample_dropout(batch: int, p: float, generator: torch.Generator) -> torch.Tensor:
    """(B,) int subset masks: 0 = keep all; else one of the 7 non-empty subsets of {c_s, c_im, c_p}, uniformly."""
    drop = rand(batch, generator) < p
    subset = randint(1, 8, (batch,), generator)
    return torch.where(drop, subset, torch.zeros_like(subset))
