"""Where `pedit train`'s pairs come from, and what the frozen parts give for them per step.

The pair folder (or the one a datasets folder or hub id becomes, pedit.data.hf), the latent cache's
root, and each step's frozen outputs: gathered from the latent cache (pedit.train.latent_cache), or
with `--no-cache` decoded and encoded every step.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import torch

from pedit.data.pairs import METADATA, Pair
from pedit.errors import ConfigError, OutputError, PairFolderError
from pedit.train.batches import PairImages
from pedit.train.config import TrainConfig
from pedit.train.progress import TrainProgress


def cache_root(cfg: TrainConfig, data: Path) -> Path:
    """The latent cache's root: --cache-dir, else inside the pair folder `data` (for a datasets
    source, the pair folder it was written to)."""
    if cfg.cache_dir:
        return Path(cfg.cache_dir)
    root = data / ".pedit-cache"
    if root.is_symlink():  # like any link in a pair folder: it could lead the cache's writes out of it
        raise PairFolderError(f"{root} is a link; pedit follows no link in a pair folder. Remove it, or pass "
                              "--cache-dir to keep the latent cache elsewhere.")
    return root


def data_folder(cfg: TrainConfig, say, report) -> Path:
    """The pair folder to train on: --data itself, or the one a datasets folder or hub id becomes
    (pedit.data.hf: written once under pedit's cache, then validated like any pair folder)."""
    from pedit.data.hf import is_saved_dataset, looks_like_hub_id

    path = Path(cfg.data)
    if (path / METADATA).exists() or not (is_saved_dataset(path) or looks_like_hub_id(cfg.data)):
        if cfg.columns is not None:
            raise ConfigError(f"--columns maps a datasets folder or hub id; {cfg.data} is not one (a pair folder "
                              "needs no map).")
        return path
    from pedit.data.hf import dataset_pair_folder

    return dataset_pair_folder(cfg.data, cfg.columns, cfg.split, say,
                               progress=lambda n, total: report(TrainProgress(n, total, float("nan"), 0.0, "dataset")))


@dataclass
class FrozenBatches:
    """Per step, the frozen parts' outputs for the step's pairs (dicts of device tensors), and the
    prompt table (n_prompts, 77, D) whose rows `p_a` and `p_b` index; row 0 is the empty prompt."""

    batches: Iterable[dict]
    prompts: torch.Tensor


def frozen_batches(cfg: TrainConfig, data: Path, pairs: list[Pair], parts, size: int, sampler, accelerator, report,
                   say) -> FrozenBatches:
    """The latent cache's tensors gathered per step (default), or --no-cache: images decoded in
    DataLoader workers and encoded every step. Either way each batch holds mean_A, std_A, mean_B,
    std_B (B, 4, h, w), clip_A (B, 1 + P, Dv) and p_a, p_b (B,) prompt rows."""
    from pedit.train.latent_cache import build_or_load, encode_pairs, encode_texts, prompt_rows, prompt_texts

    dev = accelerator.device
    if not cfg.cache:
        texts = prompt_texts(pairs)
        p_a, p_b = (r.to(dev) for r in prompt_rows(pairs, texts))
        loader = torch.utils.data.DataLoader(PairImages(pairs, size), batch_sampler=sampler, num_workers=cfg.num_workers,
                                             pin_memory=torch.cuda.is_available())

        def encoded():
            for idx, (x_A, x_B) in zip(sampler, loader):
                ix = torch.as_tensor(idx).to(dev)
                # uint8 batches travel to the device before any arithmetic: the conversions and
                # CLIP's resize then run there, not on the CPU.
                x_A = x_A.to(dev, non_blocking=True).float() / 127.5 - 1  # (B, 3, R, R) in [-1, 1]
                x_B = x_B.to(dev, non_blocking=True).float() / 127.5 - 1
                yield {**encode_pairs(parts, x_A, x_B), "p_a": p_a[ix], "p_b": p_b[ix]}

        return FrozenBatches(encoded(), encode_texts(parts, texts))

    root = cache_root(cfg, data)
    with accelerator.main_process_first():  # the first process builds, the others then load
        try:
            cache = build_or_load(root, pairs, data, parts, size, workers=cfg.num_workers,
                                  build=accelerator.is_main_process,
                                  progress=lambda n, total: report(TrainProgress(n, total, float("nan"), 0.0, "cache")))
        except Exception as e:  # a full disk while building (an OSError, or safetensors' own error): one line
            from pedit.files import write_failure

            if (why := write_failure(e)) is None:
                raise
            raise OutputError(f"The latent cache could not be written to {root} ({why}); free space "
                              "there, pass --cache-dir with another folder, or train with --no-cache.") from None
    where = dev
    if dev.type == "cuda" and cache.nbytes() > torch.cuda.mem_get_info(dev)[0] // 2:
        where = torch.device("cpu")  # too big to sit beside the model: gathered on the host, sent per step
    cache.to(where)
    say(f"latent cache {cache.folder}: {len(pairs)} pairs, {cache.nbytes() / 2**20:.1f} MiB on {where}")

    def gathered():
        for idx in sampler:
            ix = torch.as_tensor(idx).to(where)
            yield {name: t[ix].to(dev, non_blocking=True) for name, t in cache.tensors().items() if name != "prompts"}

    return FrozenBatches(gathered(), cache.prompts.to(dev))
