"""What decides SD pair `index` (gen-pairs --source sd): its subject, direction, pose, identity
and starting noise, all drawn from (seed, index) alone, so a pair is the same whichever run,
shard or batch makes it. Every seed recorded here is one the pair-folder reader accepts.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from pedit.data.directions import Direction, with_subject
from pedit.data.pairs import SEED_LIMIT
from pedit.data.poses import Pose, sample_pose
from pedit.noise import randn

# Subject words varied per pair (issue 7): "person" in a direction's prompts becomes one of these.
SUBJECTS = ("woman", "man", "young woman", "young man", "old woman", "old man", "girl", "boy",
            "middle-aged woman", "middle-aged man")
SEED_STRIDE = 1_000_003  # pair i of seed s starts from noise seed s · SEED_STRIDE + i (recorded)


def max_seed(n: int) -> int:
    """The largest seed whose n pairs all record a noise seed read_pairs accepts (< SEED_LIMIT,
    which torch.Generator.manual_seed takes too)."""
    return (SEED_LIMIT - n) // SEED_STRIDE


def noise_seed(seed: int, index: int) -> int:
    return seed * SEED_STRIDE + index


@dataclass(frozen=True)
class PairPlan:
    """Everything that decides pair `index`, drawn from (seed, index) alone."""

    index: int
    direction: Direction
    subject: str
    pose: Pose | None
    pose_jitter: dict
    identity: int | None  # index into the identity list

    @property
    def prompts(self) -> dict[str, str]:
        d = self.direction
        return {"p": with_subject(d.p, self.subject), "p_a": with_subject(d.p_a, self.subject),
                "p_b": with_subject(d.p_b, self.subject)}


def plan_pair(cfg, index: int, directions: list[Direction], poses: list[Pose] | None,
              n_identities: int) -> PairPlan:
    rng = np.random.default_rng([cfg.seed, index, 7])
    direction = directions[index % len(directions)]
    subject = SUBJECTS[int(rng.integers(len(SUBJECTS)))]
    pose, jitter = (None, {}) if poses is None else sample_pose(poses, rng, cfg.pose_jitter)
    # Identities cycle over pairs (diversity, paper §3.2 and Figure 4), offset by the seed.
    identity = None if not n_identities else (cfg.seed + index) % n_identities
    return PairPlan(index, direction, subject, pose, jitter, identity)


def initial_latent(cfg, index: int, h: int, w: int, device=None) -> torch.Tensor:
    """z_T of pair `index`: (1, 4, h, 2w) unit noise from its own CPU generator (resume-stable, and the
    same on any device), returned on `device`."""
    g = torch.Generator().manual_seed(noise_seed(cfg.seed, index))
    return randn((1, 4, h, 2 * w), g, device=device)
