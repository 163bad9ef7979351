"""Choose a model folder's learned-mask settings per direction, jointly over directions, on TRAINING pairs.

    python scripts/choose_mask_jointly.py -m toon-fast --val runs/cache/c1600.npz,runs/cache/c2400.npz \
        --refiners costume=mask_refiner.npz,mask_refiner_costume_wide.npz \
        --refiners expression=mask_refiner_expression.npz,mask_refiner_expression_wide.npz \
        --out-floor 38 --margin 0.5 --floor expression=35 -o runs/joint [--eval HELD_OUT_CACHE] [--write]

The caches are scripts/cache_mask_inputs.py's (one edit per exact pair with the folder's settings); they
must be training pairs no listed refiner was fitted on. Per direction the candidates are the folder's current
mask and every listed refiner of the direction's task at every setting of GRID (soft threshold, band,
feather, change gate). Two rules are scored:

- plain: per direction, the best mask IoU among the candidates no worse inside and outside the true region
  than the current mask (scripts/train_mask_refiner.py --by direction --rule iou);
- joint (pedit.eval.joint_choice.choose_jointly): the largest mean IoU on the trade-off's hull (a Lagrangian sweep) over all the pairs subject to the
  pooled PSNR outside >= --out-floor + --margin, each direction of a --floor task >= that floor + --margin
  outside, and each direction no worse inside than its current mask.

--write puts the joint choice (or with --rule plain the plain one) into the folder's "mask_by_direction" and
appends the rule, the margin and the training-pair scores to its "mask_refiner" record. --eval scores both on
held-out pairs (scoring only: nothing is chosen there).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))  # the sibling script train_mask_refiner (the cache, the current mask)

GRID = {"refiner_threshold": (0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9), "refiner_band": (0.0, 0.1, 0.2),
        "refiner_feather": (0.0, 0.5, 1.0), "refiner_change_below": (0.0, 8.0, 16.0, 32.0)}


def candidates(d, current, probs: dict, refiners: dict, log):
    """{direction: ([Sums], [settings or None for the current mask])}: the current mask first, then every refiner
    of the direction's task (probs[file] (N, R, R)) at every GRID setting."""
    import itertools

    from pedit.edit.pixel_mask import colour_change, weight_from
    from pedit.eval.joint_choice import PairSet

    out = {}
    for direction in sorted(set(map(str, d["direction"]))):
        idx = np.where(d["direction"] == direction)[0]
        task = str(d["task"][idx[0]])
        x_A, raw, x_B, true = (d[k][idx] for k in ("x_A", "raw", "x_B", "true"))
        change = np.stack([colour_change(raw[i], x_A[i]) for i in range(len(idx))])
        pairs = PairSet(x_A, raw, x_B, true)
        sums, settings = [pairs.sums(current[idx])], [None]
        for name in refiners.get(task, ()):
            for values in itertools.product(*GRID.values()):
                s = dict(zip(GRID, values))
                weights = weight_from(probs[name][idx].astype(np.float64), change, s["refiner_threshold"],
                                      s["refiner_band"], s["refiner_change_below"], s["refiner_feather"])
                sums.append(pairs.sums(weights))
                settings.append({"refiner": name, **s})
        log(f"{direction}: {len(sums)} candidates on {len(idx)} pairs")
        out[direction] = (sums, settings)
    return out


def plain_choice(cands) -> dict:
    """Per direction: the best IoU among the candidates no worse inside and outside than the current (index 0)."""
    from pedit.eval.joint_choice import admissible

    pick = {}
    for direction, (sums, _) in cands.items():
        ok = admissible(sums, 0, floor=sums[0].psnr_out)  # no worse inside, and outside no worse than now
        pick[direction] = max(ok, key=lambda i: (sums[i].iou, -sums[i].sq_out))
    return pick


def summary(cands, pick) -> dict:
    from pedit.eval.joint_choice import pooled

    out = {d: {"settings": cands[d][1][i], "in": cands[d][0][i].psnr_in, "out": cands[d][0][i].psnr_out,
               "iou": cands[d][0][i].iou / cands[d][0][i].pairs, "pairs": cands[d][0][i].pairs} for d, i in pick.items()}
    out["all"] = pooled({d: cands[d][0][i] for d, i in pick.items()})
    return out


def fmt(s) -> str:
    if "iou" in s:
        return f"in {s['in']:.2f} out {s['out']:.2f} IoU {s['iou']:.3f}"
    return f"in {s['psnr_in_mask']:.2f} out {s['psnr_outside_mask']:.2f} IoU {s['mask_iou']:.3f}"


def probabilities(d, folder, resolution, names) -> dict:
    from pedit.edit.learned_mask import features, probability
    from pedit.model.mask_refiner import load_refiner

    out = {}
    for name in names:
        ref = load_refiner(folder / name, resolution)
        out[name] = np.stack([probability(ref, features(d["diff"][i], d["x_A"][i], d["raw"][i], d["mask"][i],
                                                         float(d["ratio"][i]), ref.features))
                              for i in range(len(d["x_A"]))]).astype(np.float32)
    return out


def scored(d, meta, folder, refiners, log):
    from train_mask_refiner import current_weights

    names = list(dict.fromkeys(n for files in refiners.values() for n in files))
    probs = probabilities(d, folder, int(meta["resolution"]), names)
    return candidates(d, current_weights(d, meta, folder), probs, refiners, log)


def replay(cands, settings_by_direction) -> dict:
    """{direction: index} of the given settings (None: current) among a set of candidates."""
    return {d: cands[d][1].index(settings_by_direction.get(d)) for d in cands}


def write(folder: Path, meta: dict, chosen: dict, record: str) -> None:
    """The chosen settings into the folder's "mask_by_direction" (a refiner given as a path is copied into the
    folder under its file name) and `record` appended to its "mask_refiner"."""
    import shutil

    copies: dict = {}  # target in the folder: source, resolved as the scoring read it (folder / "refiner")
    for s in chosen.values():
        if s is not None and Path(s["refiner"]).name != s["refiner"]:
            source, target = folder / s["refiner"], folder / Path(s["refiner"]).name
            copies.setdefault(target, set()).add(source)
    for target, sources in copies.items():  # every check before anything is written
        data = {src.read_bytes() for src in sources}
        if len(data) > 1 or (target.exists() and target.read_bytes() not in data):
            raise SystemExit(f"{target.name}: {', '.join(map(str, sorted(sources)))}"
                             f"{' and the folder' if target.exists() else ''} hold different refiners of that name "
                             "(other directions may use it): rename the new refiner; nothing written")
    for target, sources in copies.items():
        if not target.exists():  # an existing target holds these very bytes
            shutil.copyfile(next(iter(sources)), target)
    by_dir = meta.setdefault("mask_by_direction", {})
    for direction, settings in chosen.items():
        if settings is not None:
            name = Path(settings["refiner"]).name
            # the refiner's fields only: the direction's other keys (its latent mask's) made the scored inputs
            by_dir[direction] = {**by_dir.get(direction, {}), "refine": "learned", **settings, "refiner": name}
    meta["mask_refiner"] = meta.get("mask_refiner", "") + " | " + record
    (folder / "pedit.json").write_text(json.dumps(meta, indent=2))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-m", "--model", default="toon-fast")
    ap.add_argument("--val", required=True, help="cache(s) of training pairs no listed refiner was fitted on")
    ap.add_argument("--refiners", action="append", required=True, help="TASK=FILE[,FILE...]: refiner files in the folder, or paths (copied in by --write)")
    ap.add_argument("--out-floor", type=float, default=38.0)
    ap.add_argument("--margin", type=float, default=0.5, help="dB added to every floor on the training pairs")
    ap.add_argument("--floor", action="append", default=[], help="TASK=DB: each direction of the task at least DB outside")
    ap.add_argument("--eval", help="cache of held-out pairs: scored only")
    ap.add_argument("--rule", choices=("joint", "plain"), default="joint", help="the choice --write writes")
    ap.add_argument("--solver", choices=("hull", "exact"), default="hull",
                    help="the joint rule's solver: hull (the Lagrangian sweep, the bundled folders' choice) or exact "
                         "(pedit.eval.joint_choice.choose_exactly); the other is scored beside it")
    ap.add_argument("--sweep", default="", help="more margins (comma-separated) whose joint choices are scored too "
                    "(\"joint@MARGIN\" in the result; never written)")
    ap.add_argument("-o", "--out", required=True)
    ap.add_argument("--write", action="store_true")
    args = ap.parse_args()

    from train_mask_refiner import load, start_run, training_cache

    from pedit.eval.joint_choice import choose_exactly, choose_jointly

    out, log, lines, folder, meta = start_run(args.model, args.out)
    refiners = {t: f.split(",") for t, f in (r.split("=", 1) for r in args.refiners)}
    task_floor = {t: float(v) for t, v in (f.split("=", 1) for f in args.floor)}
    val = training_cache(args.val, "the --val cache")
    cands = scored(val, meta, folder, refiners, log)
    task_of = {str(k): str(t) for k, t in zip(val["direction"], val["task"])}
    picks = {"plain": plain_choice(cands)}
    solvers = {"hull": choose_jointly, "exact": choose_exactly}
    other = "exact" if args.solver == "hull" else "hull"
    unmet = set()
    for margin in [args.margin, *(float(m) for m in args.sweep.split(",") if m)]:
        floors = {d: task_floor[task_of[d]] + margin for d in cands if task_of[d] in task_floor}
        main = margin == args.margin and "joint" not in picks
        key = "joint" if main else f"joint@{margin:g}"  # by --solver; the other solver beside the main margin's
        for k, solve in [(key, solvers[args.solver]), *([(f"joint-{other}", solvers[other])] if main else [])]:
            picks[k] = solve({d: c[0] for d, c in cands.items()}, {d: 0 for d in cands}, args.out_floor + margin, floors)
            if picks[k] is None:
                log(f"{k}: no choice meets the floors; the current masks stay")
                unmet.add(k)
                picks[k] = {d: 0 for d in cands}
    result = {"args": vars(args), "grid": GRID, "current": summary(cands, {d: 0 for d in cands})}
    for rule, pick in picks.items():
        result[rule] = summary(cands, pick)
        for d in [*cands, "all"]:
            log(f"{rule} {d:9s} {fmt(result[rule][d])}   (current {fmt(result['current'][d])})")
    if args.eval:
        ev = load(args.eval)
        ev_cands = scored(ev, meta, folder, refiners, log)
        result["held_out"] = {rule: summary(ev_cands, replay(ev_cands, {d: cands[d][1][i] for d, i in pick.items()}))
                              for rule, pick in [("current", {d: 0 for d in cands}), *picks.items()]}
        for rule, s in result["held_out"].items():
            log(f"held-out {rule:7s} " + "; ".join(f"{d} {fmt(s[d])}" for d in [*cands, "all"]))
    result["log"] = lines
    (out / "joint-choice.json").write_text(json.dumps(result, indent=1))
    if args.write:
        if args.rule in unmet:  # the scores are saved above; the folder keeps its masks
            raise SystemExit(f"no {args.rule} choice meets the floors on these pairs: nothing written")
        write_choice(folder, meta, result, args, len(val["x_A"]))


def write_choice(folder: Path, meta: dict, result: dict, args, n_val: int) -> None:
    """The choice of args.rule in `result` (this script's joint-choice.json) into the folder, with its record."""
    picked = {d: s["settings"] for d, s in result[args.rule].items() if d != "all"}
    floors = "".join(f"each {t} direction >= {float(v) + args.margin:g} dB outside, "
                     for t, v in (f.split("=", 1) for f in args.floor))
    how = "on the trade-off's hull (a Lagrangian sweep)" if args.solver == "hull" else "(exact: Pareto fronts merged)"
    rule = (f"the largest mean mask IoU {how} subject to the pooled PSNR outside the true region >= "
            f"{args.out_floor + args.margin:g} dB (the target {args.out_floor:g} + a margin of {args.margin:g} dB), "
            f"{floors}every direction no worse inside than the mask it had, chosen jointly over directions "
            "(pedit.eval.joint_choice)" if args.rule == "joint" else
            "per direction the best mask IoU among those no worse inside and outside than the mask it had")
    write(folder, meta, picked, f"per-direction settings chosen by scripts/choose_mask_jointly.py on {n_val} exact "
          f"pairs of training identities no refiner was fitted on (never on held-out ones): {rule}. All: "
          f"{fmt(result[args.rule]['all'])} (before {fmt(result['current']['all'])}); "
          + "; ".join(f"{d}: {fmt(s)}" for d, s in result[args.rule].items() if d != "all"))
    print(f"wrote the {args.rule} choice into {folder / 'pedit.json'}")


if __name__ == "__main__":
    main()
