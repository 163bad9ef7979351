"""pedit.eval.joint_choice: the constrained choice of mask settings over directions, against brute force, and
its vectorised scores against pedit.eval.pixel_tuning.Tally."""

import itertools

import numpy as np
import pytest

from conftest import load_script
from pedit.eval.joint_choice import (Sums, admissible, choose_exactly, choose_jointly, hull_slopes, pooled, psnr,
                                     sums_of)


def random_candidates(rng, directions=3, per=5):
    out = {}
    for d in range(directions):
        out[f"d{d}"] = [Sums(iou=float(rng.uniform(0, 10)), pairs=10, sq_in=float(rng.uniform(1e6, 2e6)), n_in=30000,
                             sq_out=float(rng.uniform(1e3, 1e5)), n_out=300000) for _ in range(per)]
    return out


def brute_force(cands, current, floor, floors):
    """Every admissible combination: (summed IoU, summed error outside, pooled outside PSNR, indices)."""
    names = sorted(cands)
    options = [admissible(cands[d], current[d], floors.get(d)) for d in names]
    rows = []
    for combo in itertools.product(*options):
        chosen = {d: cands[d][i] for d, i in zip(names, combo)}
        rows.append((sum(c.iou for c in chosen.values()), sum(c.sq_out for c in chosen.values()),
                     pooled(chosen)["psnr_outside_mask"], dict(zip(names, combo))))
    return rows


@pytest.mark.parametrize("seed", range(12))
def test_choice_is_feasible_and_no_combination_of_no_more_error_beats_it(seed):
    rng = np.random.default_rng(seed)
    cands = random_candidates(rng)
    current = {d: 0 for d in cands}
    rows = brute_force(cands, current, 0.0, {})
    floor = float(np.median([r[2] for r in rows]))  # about half of the combinations meet it
    pick = choose_jointly(cands, current, floor)
    assert pick is not None
    chosen = {d: cands[d][i] for d, i in pick.items()}
    assert pooled(chosen)["psnr_outside_mask"] >= floor
    iou, sq = sum(c.iou for c in chosen.values()), sum(c.sq_out for c in chosen.values())
    assert all(r[0] <= iou + 1e-9 for r in rows if r[1] <= sq)
    assert all(cands[d][i].psnr_in >= cands[d][0].psnr_in for d, i in pick.items())
    # a choice on the hull, not always the best feasible one: it falls short of the best feasible combination by
    # at most one direction's IoU span (the Lagrangian bound of a multiple-choice knapsack)
    best_feasible = max(r[0] for r in rows if r[2] >= floor)
    span = max(max(cands[d][j].iou for j in admissible(cands[d], 0, None))
               - min(cands[d][j].iou for j in admissible(cands[d], 0, None)) for d in cands)
    assert best_feasible - span - 1e-9 <= iou <= best_feasible + 1e-9


def test_loose_floor_takes_each_directions_best_iou_and_tight_floor_none():
    rng = np.random.default_rng(0)
    cands = random_candidates(rng)
    current = {d: 0 for d in cands}
    pick = choose_jointly(cands, current, 0.0)
    for d, i in pick.items():
        ok = admissible(cands[d], 0, None)
        assert cands[d][i].iou == max(cands[d][j].iou for j in ok)
    assert choose_jointly(cands, current, 99.0) is None


def test_direction_floor_and_inside_are_respected():
    worse_in = Sums(iou=9.0, pairs=10, sq_in=9e6, n_in=30000, sq_out=10.0, n_out=300000)  # best IoU, worse inside
    low_out = Sums(iou=8.0, pairs=10, sq_in=1e6, n_in=30000, sq_out=1e7, n_out=300000)  # below a 35 dB floor
    now = Sums(iou=1.0, pairs=10, sq_in=1e6, n_in=30000, sq_out=1e5, n_out=300000)
    good = Sums(iou=2.0, pairs=10, sq_in=1e6, n_in=30000, sq_out=2e5, n_out=300000)
    assert low_out.psnr_out < 35 < good.psnr_out
    pick = choose_jointly({"a": [now, worse_in, low_out, good]}, {"a": 0}, 0.0, {"a": 35.0})
    assert pick == {"a": 3}
    assert choose_jointly({"a": [now, worse_in, low_out, good]}, {"a": 0}, 0.0) == {"a": 2}


def test_hull_slopes_decrease():
    iou = np.array([0.0, 1.0, 1.5, 1.6, 0.5, 3.0])
    sq = np.array([0.0, 1.0, 2.0, 4.0, 3.0, 10.0])
    s = hull_slopes(iou, sq)
    assert s == sorted(s, reverse=True) and len(s) >= 2
    assert s[0] == pytest.approx(1.0)


def test_sums_match_the_tuning_tally():
    from pedit.edit.mask import composite
    from pedit.eval.ground_truth import edge_band
    from pedit.eval.pixel_tuning import Tally

    rng = np.random.default_rng(3)
    n, r = 4, 16
    x_A, raw, x_B = (rng.integers(0, 256, (n, r, r, 3), dtype=np.uint8) for _ in range(3))
    true = rng.random((n, r, r)) < 0.3
    weights = np.clip(rng.normal(0.5, 0.4, (n, r, r)), 0, 1).astype(np.float32)
    weights[weights < 0.2] = 0.0
    tally = Tally()
    for i in range(n):
        tally.add(composite(x_A[i], raw[i], weights[i]), x_B[i].astype(np.float64), true[i], edge_band(true[i]), weights[i])
    want = tally.summary()
    got = sums_of(x_A, raw, x_B, true, weights)
    assert got.psnr_in == pytest.approx(want["psnr_in_mask"], rel=1e-12)
    assert got.psnr_out == pytest.approx(want["psnr_outside_mask"], rel=1e-12)
    assert got.iou / got.pairs == pytest.approx(want["mask_iou"], rel=1e-12)
    assert psnr(0.0, 3) == float("inf")


def test_write_keeps_a_directions_other_keys_and_never_overwrites_another_refiner(tmp_path):
    """--write lays the refiner's fields over the direction's entry (its latent-mask keys made the scored
    inputs, so they stay), copies a refiner given as a path, and refuses, writing nothing, when the folder holds
    a different file of that name."""
    import json

    write = load_script("choose_mask_jointly").write
    folder = tmp_path / "model"
    folder.mkdir()
    (tmp_path / "new").mkdir()
    (tmp_path / "new" / "r.npz").write_bytes(b"new refiner")
    meta = {"mask_by_direction": {"royal": {"threshold": 0.6, "refiner_feather": 2.0}}, "mask_refiner": "before"}
    settings = {"refiner": str(tmp_path / "new" / "r.npz"), "refiner_threshold": 0.7, "refiner_band": 0.1,
                "refiner_feather": 0.5, "refiner_change_below": 8.0}
    write(folder, meta, {"royal": settings, "angry": None}, "record")
    written = json.loads((folder / "pedit.json").read_text())
    assert written["mask_by_direction"] == {"royal": {"threshold": 0.6, "refine": "learned", "refiner": "r.npz",
                                                      "refiner_threshold": 0.7, "refiner_band": 0.1,
                                                      "refiner_feather": 0.5, "refiner_change_below": 8.0}}
    assert (folder / "r.npz").read_bytes() == b"new refiner" and written["mask_refiner"] == "before | record"
    (tmp_path / "new" / "r.npz").write_bytes(b"another refiner")
    before = (folder / "pedit.json").read_text()
    with pytest.raises(SystemExit, match="hold different refiners"):
        write(folder, json.loads(before), {"royal": settings}, "again")
    assert (folder / "pedit.json").read_text() == before and (folder / "r.npz").read_bytes() == b"new refiner"
    # two runs' files of one name for two directions, none in the folder yet: refused, nothing copied
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "s.npz").write_bytes(b"one")
    (tmp_path / "new" / "s.npz").write_bytes(b"two")
    with pytest.raises(SystemExit, match="hold different refiners"):
        write(folder, json.loads(before), {"royal": {**settings, "refiner": str(tmp_path / "other" / "s.npz")},
                                           "angry": {**settings, "refiner": str(tmp_path / "new" / "s.npz")}}, "x")
    assert not (folder / "s.npz").exists() and (folder / "pedit.json").read_text() == before
    # the folder's own file given by its path: nothing to copy, written
    write(folder, json.loads(before), {"royal": {**settings, "refiner": str(folder / "r.npz")}}, "same")
    assert json.loads((folder / "pedit.json").read_text())["mask_refiner"].endswith("| same")


@pytest.mark.parametrize("seed", range(12))
def test_the_exact_choice_is_the_best_feasible_combination(seed):
    """choose_exactly against brute force: the largest summed IoU among every admissible combination meeting the
    pooled floor (and the per-direction floors), never below the hull choice."""
    rng = np.random.default_rng(100 + seed)
    cands = random_candidates(rng, directions=4, per=6)
    current = {d: 0 for d in cands}
    floors = {"d1": float(np.median([c.psnr_out for c in cands["d1"]]))}
    rows = brute_force(cands, current, 0.0, floors)
    floor = float(np.median([r[2] for r in rows]))
    pick = choose_exactly(cands, current, floor, floors)
    chosen = {d: cands[d][i] for d, i in pick.items()}
    best = max(r[0] for r in rows if r[2] >= floor)
    assert sum(c.iou for c in chosen.values()) == pytest.approx(best, abs=1e-9)
    assert pooled(chosen)["psnr_outside_mask"] >= floor
    assert chosen["d1"].psnr_out >= floors["d1"] or pick["d1"] == current["d1"]  # admissible: the current mask stays a choice
    hull = choose_jointly(cands, current, floor, floors)
    assert sum(c.iou for c in chosen.values()) >= sum(cands[d][i].iou for d, i in hull.items()) - 1e-9
    assert choose_exactly(cands, current, 99.0) is None


def test_the_exact_choice_finds_what_the_hull_misses():
    """Two directions whose best feasible combination lies inside the hull: a (0, 0) or (6, 6); b (0, 0), (5, 5.5)
    or (10, 8) as (squared error, IoU), an allowance of 10: the hull gives IoU 5.5, the exact choice 8."""
    def c(sq, iou):
        return Sums(iou=iou, pairs=1, sq_in=1.0, n_in=3, sq_out=sq + 1e-9, n_out=3)

    cands = {"a": [c(0, 0), c(6, 6)], "b": [c(0, 0), c(5, 5.5), c(10, 8)]}
    floor = psnr(10 + 3e-9, 6)  # the pooled PSNR of a summed error of 10 over both directions' pixels
    current = {"a": 0, "b": 0}
    assert choose_jointly(cands, current, floor) == {"a": 0, "b": 1}
    assert choose_exactly(cands, current, floor) == {"a": 0, "b": 2}
