"""`pedit gen-pairs`: write a pair folder (docs/design-notes.md, "gen-pairs").

Source `toon`: pairs rendered by the procedural toon world (pedit.toon.world), with the ground-truth
mask. Training sets are imperfect by default, like generated pairs (paper §3.3: "the face in x_B
is slightly wider"): small shift, face-width change and colour drift in x_B, each amount recorded
per pair; `exact=True` for evaluation sets. Resumable (the seed of a pair depends only on its
index; ids already written are skipped) and shardable (`shard=(i, n)` takes indices ≡ i mod n).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from pedit.data.directions import BUILTIN
from pedit.errors import ConfigError, OutputError
from pedit.files import write_text_atomic
from pedit.data.pairs import SEED_LIMIT, PairWriter

SOURCES = ("toon",)


@dataclass(frozen=True)
class GenPairsConfig:
    output: str
    n: int
    source: str = "toon"
    directions: tuple[str, ...] = tuple(BUILTIN)
    resolution: int = 128
    seed: int = 0  # identity seed of pair i is seed + i: keep train and eval ranges apart
    shard: tuple[int, int] = (0, 1)
    exact: bool = False
    max_shift: int = 2
    max_face_width: float = 0.06
    max_color_drift: int = 6

    def __post_init__(self):
        from pedit.validate import check_int, check_number, check_seed

        if not isinstance(self.output, str) or not self.output:
            raise ConfigError(f"output must be a folder name, got {self.output!r}")
        check_int("n", self.n, 1)
        check_int("resolution", self.resolution, 32, 4096)
        # Pair i records identity seed seed + i, which read_pairs accepts below SEED_LIMIT.
        check_seed("seed", self.seed, SEED_LIMIT - self.n)
        check_int("max_shift", self.max_shift, 0, self.resolution // 4)
        check_number("max_face_width", self.max_face_width, 0, 0.5)
        check_int("max_color_drift", self.max_color_drift, 0, 64)
        if not (isinstance(self.shard, tuple) and len(self.shard) == 2):
            raise ConfigError(f"shard must be (I, N), got {self.shard!r}")
        if self.source not in SOURCES:
            raise ConfigError(f"source must be one of {', '.join(SOURCES)}, got {self.source!r}")
        if self.n < 1:
            raise ConfigError(f"n must be at least 1, got {self.n}")
        unknown = [d for d in self.directions if d not in BUILTIN]
        if unknown or not self.directions:
            raise ConfigError(f"Unknown direction(s) {', '.join(unknown) or '(none given)'}; available: {', '.join(BUILTIN)}.")
        i, k = self.shard
        if not (k >= 1 and 0 <= i < k):
            raise ConfigError(f"shard must be I/N with 0 <= I < N, got {i}/{k}")
        if self.resolution < 32:
            raise ConfigError(f"resolution must be at least 32, got {self.resolution}")


def claim_folder(out: Path, settings: dict, run_only: tuple[str, ...] = ("shard", "output"), write: bool = True) -> None:
    """Refuse a run whose settings (all but `run_only`) differ from the folder's config.json: a
    folder holds one kind of pair. With `write`, create config.json when the folder has none
    (exclusively: of two shards starting at once, the second compares against the first's)."""
    config_file = out / "config.json"
    kept = {k: v for k, v in settings.items() if k not in run_only}
    if config_file.exists():
        try:
            before = {k: v for k, v in json.loads(config_file.read_text()).items() if k not in run_only}
        except ValueError:
            before = None
        if before != kept:
            changed = sorted(k for k in kept if before is None or before.get(k) != kept[k])
            raise ConfigError(f"{out} was written with other settings ({', '.join(changed) or 'unreadable config.json'} "
                              "differ); use a new -o folder, or the same options to resume.")
    elif write:
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise OutputError(f"Cannot create the pair folder {out}: {e.strerror or e}.") from None
        try:  # exclusive: a shard that raced us keeps its file, then we compare against it
            write_text_atomic(config_file, json.dumps(settings, indent=2))
        except OutputError:
            if not config_file.exists():
                raise  # not the race: the folder cannot be written
            return claim_folder(out, settings, run_only)


def generate_pairs(cfg: GenPairsConfig, progress: Callable[[int, int], None] | None = None) -> Path:
    """Write (this shard's share of) `cfg.n` pairs into `cfg.output`; returns the folder."""
    from pedit.toon import world as toon

    out = Path(cfg.output)
    claim_folder(out, json.loads(json.dumps(asdict(cfg))))  # first: a refused run must not touch the folder
    writer = PairWriter(out)
    mine = [i for i in range(cfg.n) if i % cfg.shard[1] == cfg.shard[0]]
    for done, index in enumerate(mine, start=1):
        pair_id = f"{index:06d}"
        if not writer.has(pair_id):
            direction = BUILTIN[cfg.directions[index % len(cfg.directions)]]
            identity_seed = cfg.seed + index
            if cfg.exact:
                imperfection = toon.Imperfection()
            else:
                rng = np.random.default_rng([cfg.seed, index, 1])
                imperfection = toon.sample_imperfection(rng, cfg.max_shift, cfg.max_face_width, cfg.max_color_drift)
            pair = toon.make_pair(identity_seed, direction.name, cfg.resolution, imperfection)
            row = {
                "id": pair_id,
                "direction": direction.name,
                "task": direction.task,
                "p_a": direction.p_a,
                "p_b": direction.p_b,
                "p": direction.p,
                "seed": identity_seed,
                "source": "toon",
                "imperfection": imperfection.to_dict(),
            }
            writer.write(row, {"x_A": pair.x_A, "x_B": pair.x_B, "mask": pair.mask.astype(np.uint8) * 255})
        if progress is not None:
            progress(done, len(mine))
    return out


def shard_from_env() -> tuple[int, int]:
    """(rank, world size) under `accelerate launch` / torchrun, else (0, 1): each process takes its share."""
    try:
        rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return 0, 1
    return (rank, world) if world > 1 and 0 <= rank < world else (0, 1)


def run_shard(shard: tuple[int, int] | None) -> tuple[int, int]:
    """This process's shard: `shard` as given, else the rank's under a launcher. Both at once is
    refused: every rank would take the one shard given and write the same pairs."""
    if shard is None:
        return shard_from_env()
    if shard_from_env()[1] > 1:
        raise ConfigError(f"--shard {shard[0]}/{shard[1]} under a launcher with WORLD_SIZE="
                          f"{os.environ.get('WORLD_SIZE')}: every rank would write the same shard. Leave out "
                          "--shard (each rank then takes its own), or run one process per --shard.")
    return shard
