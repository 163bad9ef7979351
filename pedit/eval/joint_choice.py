"""The constrained choice of mask settings over directions (scripts/choose_mask_jointly.py): one candidate
setting per direction, chosen together for the largest mean mask IoU on the trade-off's hull subject to floors on
preservation: the PSNR outside the true region pooled over every direction's pairs, optionally each
direction's own PSNR outside (the expressions'), and each direction's PSNR inside no worse than its current
setting's.

Squared errors and pixel counts add up over pairs (as pedit.eval.scores.Scores pools them), and so do the
pairs' IoUs, so a choice's pooled scores are sums over directions. For a multiplier lam >= 0 the choice
maximising (summed IoU - lam x summed squared error outside) is each direction's own best; sweeping lam gives
the choices on the trade-off's hull, and the best of them that meets the floors is returned. Each such choice
is optimal for its own squared error: no other choice that errs no more outside has a larger summed IoU.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pedit.eval.pixel_tuning import psnr  # re-exported: the Sums' PSNR is the tunings' pooled one


@dataclass(frozen=True)
class Sums:
    """One candidate's scores over one direction's pairs: summed IoU, pairs, squared errors and channel-pixel
    counts inside and outside the true region (as pedit.eval.pixel_tuning.Tally counts them)."""

    iou: float
    pairs: int
    sq_in: float
    n_in: int
    sq_out: float
    n_out: int

    @property
    def psnr_in(self) -> float:
        return psnr(self.sq_in, self.n_in)

    @property
    def psnr_out(self) -> float:
        return psnr(self.sq_out, self.n_out)




class PairSet:
    """One direction's pairs, prepared once for scoring many blend weights (`sums`): x_A, raw, x_B (N, R, R, 3)
    uint8 input, decoded edit and target; true (N, R, R) bool."""

    def __init__(self, x_A: np.ndarray, raw: np.ndarray, x_B: np.ndarray, true: np.ndarray):
        self.x_A, self.raw = x_A.astype(np.float32), raw.astype(np.float32)
        self.x_B, self.true = x_B.astype(np.float32), np.asarray(true, dtype=bool)
        self.base = ((self.x_A - self.x_B) ** 2).sum(-1, dtype=np.float64)  # the input's error, where the weight is 0
        self.base_in, self.base_out = float(self.base[self.true].sum()), float(self.base[~self.true].sum())
        self.n_true = int(self.true.sum())

    def sums(self, weights: np.ndarray) -> Sums:
        """The Sums of blend weights (N, R, R) (pedit.edit.mask.composite: the input's bytes where the weight is
        0; the IoU of weight >= 0.5, as `pedit eval` and pedit.eval.pixel_tuning.Tally score it)."""
        at = np.nonzero(weights > 0)
        w = weights[at].astype(np.float32)[:, None]
        blend = np.rint(self.x_A[at] * (1 - w) + self.raw[at] * w)
        delta = ((blend - self.x_B[at]) ** 2).sum(-1, dtype=np.float64) - self.base[at]
        inside = self.true[at]
        pred = weights >= 0.5
        inter = np.logical_and(pred, self.true).sum((1, 2))
        union = np.logical_or(pred, self.true).sum((1, 2))
        iou = np.where(union > 0, inter / np.maximum(union, 1), 1.0)
        return Sums(iou=float(iou.sum()), pairs=len(weights), sq_in=self.base_in + float(delta[inside].sum()),
                    n_in=3 * self.n_true, sq_out=self.base_out + float(delta[~inside].sum()),
                    n_out=3 * (self.true.size - self.n_true))


def sums_of(x_A: np.ndarray, raw: np.ndarray, x_B: np.ndarray, true: np.ndarray, weights: np.ndarray) -> Sums:
    """The Sums of one setting's blend weights (N, R, R) over pairs (PairSet.sums)."""
    return PairSet(x_A, raw, x_B, true).sums(weights)


def pooled(chosen: dict[str, Sums]) -> dict:
    """Mean IoU over the pairs and pooled PSNR inside and outside of one choice {direction: Sums}."""
    s = list(chosen.values())
    return {"mask_iou": sum(c.iou for c in s) / sum(c.pairs for c in s),
            "psnr_in_mask": psnr(sum(c.sq_in for c in s), sum(c.n_in for c in s)),
            "psnr_outside_mask": psnr(sum(c.sq_out for c in s), sum(c.n_out for c in s))}


def admissible(candidates: list[Sums], current: int, floor: float | None) -> list[int]:
    """Indices of the candidates no worse inside than `current` and (given a floor) at least `floor` dB outside;
    `current` itself always."""
    now = candidates[current]
    ok = [i for i, c in enumerate(candidates)
          if c.psnr_in >= now.psnr_in and (floor is None or c.psnr_out >= floor)]
    return ok if current in ok else [current, *ok]


def hull_slopes(iou: np.ndarray, sq: np.ndarray) -> list[float]:
    """The IoU-per-squared-error slopes between consecutive vertices of the upper hull of the points (sq, iou):
    the multipliers at which a direction's Lagrangian best changes."""
    order = np.lexsort((-iou, sq))
    front = []  # the Pareto front, error rising, IoU rising
    for j in order:
        if not front or iou[j] > iou[front[-1]]:
            front.append(j)
    hull = []
    for j in front:
        while len(hull) >= 2 and ((iou[hull[-1]] - iou[hull[-2]]) * (sq[j] - sq[hull[-1]])
                                  <= (iou[j] - iou[hull[-1]]) * (sq[hull[-1]] - sq[hull[-2]])):
            hull.pop()
        hull.append(j)
    return [float((iou[b] - iou[a]) / (sq[b] - sq[a])) for a, b in zip(hull, hull[1:])]


def choose_jointly(candidates: dict[str, list[Sums]], current: dict[str, int], out_floor: float,
                   floors: dict[str, float] | None = None) -> dict[str, int] | None:
    """{direction: index into its candidates}: the Lagrangian choice of the largest summed IoU whose pooled PSNR
    outside is at least `out_floor`, each direction admissible (`admissible`, with its floor from `floors`);
    None when even the least error outside misses the floor. The multipliers swept are 0, every direction's
    hull slope and a point just below each (every choice on the hull), ties going to the smaller error."""
    floors = floors or {}
    names = sorted(candidates)
    ok = {d: admissible(candidates[d], current[d], floors.get(d)) for d in names}
    n_out = sum(candidates[d][current[d]].n_out for d in names)
    budget = 255.0**2 * n_out / 10 ** (out_floor / 10)  # the summed squared error outside the floor allows
    arrays = {d: (np.array([candidates[d][i].iou for i in ok[d]], dtype=np.float64),
                  np.array([candidates[d][i].sq_out for i in ok[d]], dtype=np.float64)) for d in names}
    slopes = sorted({s for d in names for s in hull_slopes(*arrays[d])})
    best, best_key = None, None
    for lam in [0.0, *slopes, *(s * (1 - 1e-9) for s in slopes), 2 * slopes[-1] + 1.0 if slopes else 1.0]:
        pick = {}
        for d in names:
            iou, sq = arrays[d]
            gain = iou - lam * sq
            pick[d] = min(np.flatnonzero(gain >= gain.max() - 1e-12 * max(1.0, abs(gain.max()))), key=lambda j: sq[j])
        total_sq = sum(arrays[d][1][pick[d]] for d in names)
        if total_sq > budget:
            continue
        key = (sum(arrays[d][0][pick[d]] for d in names), -total_sq)
        if best_key is None or key > best_key:
            best, best_key = {d: ok[d][pick[d]] for d in names}, key
    return best


def _front(points: list) -> list:
    """The Pareto front of (summed squared error, summed IoU, picks) points: error rising, IoU strictly rising."""
    front = []
    for p in sorted(points, key=lambda p: (p[0], -p[1])):
        if not front or p[1] > front[-1][1]:
            front.append(p)
    return front


def choose_exactly(candidates: dict[str, list[Sums]], current: dict[str, int], out_floor: float,
                   floors: dict[str, float] | None = None) -> dict[str, int] | None:
    """choose_jointly's constraints, solved exactly: of every admissible combination whose pooled PSNR outside is
    at least `out_floor`, the largest summed IoU (ties: the least error), by merging the directions' Pareto fronts
    one direction at a time, keeping only combinations within the error allowance that no other beats on both;
    None when none meets the floor."""
    floors = floors or {}
    names = sorted(candidates)
    n_out = sum(candidates[d][current[d]].n_out for d in names)
    budget = 255.0**2 * n_out / 10 ** (out_floor / 10)
    front = [(0.0, 0.0, ())]
    for d in names:
        own = _front([(candidates[d][i].sq_out, candidates[d][i].iou, i)
                      for i in admissible(candidates[d], current[d], floors.get(d))])
        front = _front([(sq + s, iou + v, picks + (i,)) for sq, iou, picks in front for s, v, i in own
                        if sq + s <= budget])
        if not front:
            return None
    best = max(front, key=lambda p: (p[1], -p[0]))
    return dict(zip(names, best[2]))
