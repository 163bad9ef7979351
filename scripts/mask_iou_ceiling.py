"""Where the editing mask's IoU is lost, per direction, on cached edits of TRAINING pairs.

    python scripts/mask_iou_ceiling.py -m toon-fast --cache runs/refine-cache/student-train2.npz --last 400 \
        -o docs/results/mask-iou-ceiling-student.json

The cache is scripts/cache_mask_inputs.py's (one edit per exact pair with the folder's settings). Per
pair, with T the true region:

- `shipped`: the IoU of the folder's blend weight >= 0.5 (what `pedit eval` reports as mask IoU);
- `refiner_oracle`: the IoU of the refiner's probability map at the best threshold of each pair (an
  oracle: no rule can pick it without the truth); `refiner_direction`: at one threshold per
  direction, the best on these pairs;
- `change_oracle`: the IoU of |decoded edit - input| >= t at each pair's best t (the edit alone);
- `drawn_t`: the share of T where the decoded edit changes some channel by t levels or more. A
  mask that takes no pixel the edit leaves unchanged reaches at most this IoU (take exactly
  T ∩ changed); the rest of T can be reached only by copying unchanged pixels there, which needs a
  prior on where the direction's region lies that the edit does not show;
- `helps`: the share of T where the decoded edit is closer to the target than the input is (the
  pixels a blend gains from); `grid16`: pedit.eval.ceiling.iou_ceiling on the 16x16 grid;
- `raw_out_psnr`: PSNR outside T of the decoded edit itself (the preservation of a mask that took
  every pixel: what a pixel wrongly in the mask costs on average).
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np

THRESHOLDS = np.linspace(0.05, 0.95, 19)
DRAWN_LEVELS = (4, 8, 16, 32)


def best_iou(score: np.ndarray, true: np.ndarray, levels) -> tuple[float, float]:
    """(best IoU of score >= level against true, that level) over `levels`."""
    from pedit.eval.ceiling import mask_iou

    ious = [mask_iou(score >= t, true) for t in levels]
    k = int(np.argmax(ious))
    return ious[k], float(levels[k])


def probabilities(d, meta, folder, expression_refiner=None, costume_refiner=None):
    """(N, R, R): each pair's refiner probability (the folder's refiner for its task, or the given one)."""
    from pedit.edit.learned_mask import features, probability
    from pedit.model.mask_refiner import load_refiner
    from pedit.model.mask_settings import mask_config_for

    out = []
    for i in range(len(d["x_A"])):
        task = str(d["task"][i])
        cfg = mask_config_for(meta, SimpleNamespace(name=str(d["direction"][i]), task=task), folder=folder)
        path = {"expression": expression_refiner, "costume": costume_refiner}.get(task) or cfg.refiner
        refiner = load_refiner(path, d["x_A"].shape[1])
        out.append(probability(refiner, features(d["diff"][i], d["x_A"][i], d["raw"][i], d["mask"][i],
                                                 float(d["ratio"][i]), refiner.features)))
    return np.stack(out)


def per_pair(d, i, p, weight):
    """The measures of pair i (module docstring)."""
    from pedit.edit.pixel_mask import colour_change
    from pedit.eval.ceiling import iou_ceiling, mask_iou

    true, xa, raw, xb = d["true"][i], d["x_A"][i], d["raw"][i], d["x_B"][i].astype(np.int16)
    n = max(int(true.sum()), 1)
    change = colour_change(raw, xa)
    helps = np.abs(raw.astype(np.int16) - xb).sum(-1) < np.abs(xa.astype(np.int16) - xb).sum(-1)
    sq_out = ((raw.astype(np.float64) - xa) ** 2)[~true].mean()
    row = {"shipped": mask_iou(weight >= 0.5, true), "refiner_oracle": best_iou(p, true, THRESHOLDS)[0],
           "change_oracle": best_iou(change, true, np.arange(1, 128))[0],
           "helps": float((helps & true).sum() / n), "grid16": iou_ceiling(true, 16),
           "raw_out_psnr": 10 * math.log10(255.0 ** 2 / max(sq_out, 1e-12))}
    row.update({f"drawn_{t}": float(((change >= t) & true).sum() / n) for t in DRAWN_LEVELS})
    return row


def summarise(d, rows, p):
    """{direction, task, all: mean of each measure, plus refiner_direction (one threshold per group)}."""
    from pedit.eval.ceiling import mask_iou

    groups = {"all": np.arange(len(rows))}
    for key in ("task", "direction"):
        for g in sorted(set(d[key])):
            groups[str(g)] = np.where(d[key] == g)[0]
    out = {}
    for g, idx in groups.items():
        s = {k: float(np.mean([rows[i][k] for i in idx])) for k in rows[0]}
        s["pairs"] = len(idx)
        if g in set(map(str, d["direction"])):
            ious = [np.mean([mask_iou(p[i] >= t, d["true"][i]) for i in idx]) for t in THRESHOLDS]
            s["refiner_direction"], s["refiner_direction_threshold"] = float(max(ious)), float(THRESHOLDS[int(np.argmax(ious))])
        out[g] = s
    dirs = [g for g in out if g in set(map(str, d["direction"]))]
    for g in ("all", "costume", "expression"):  # pairs weigh alike: the mean over the group's directions' pairs
        idx = [k for k in dirs if g == "all" or str(d["task"][np.where(d["direction"] == k)[0][0]]) == g]
        tot = sum(out[k]["pairs"] for k in idx)
        if tot:
            out[g]["refiner_direction"] = sum(out[k]["refiner_direction"] * out[k]["pairs"] for k in idx) / tot
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-m", "--model", default="toon-fast")
    ap.add_argument("--cache", required=True, help="scripts/cache_mask_inputs.py's cache of training pairs")
    ap.add_argument("--expression-refiner", help="a refiner file for the expression pairs (default: the folder's)")
    ap.add_argument("--last", type=int, default=0, help="only the cache's last N pairs (pairs no refiner was fitted on)")
    ap.add_argument("--costume-refiner", help="a refiner file for the costume pairs (default: the folder's)")
    ap.add_argument("-o", "--out", required=True)
    args = ap.parse_args()

    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    from train_mask_refiner import current_weights, load, subset
    from pedit.model.loading import model_path

    d = load(args.cache)
    if args.last:
        d = subset(d, slice(len(d["x_A"]) - args.last, None))
    if bool(d.get("held_out", np.array(False))):
        raise SystemExit("the cache holds evaluation identities: diagnose on training pairs only")
    folder = model_path(args.model)
    meta = json.loads((folder / "pedit.json").read_text())
    p = probabilities(d, meta, folder, args.expression_refiner, args.costume_refiner)
    weights = current_weights(d, meta, folder)
    rows = [per_pair(d, i, p[i], weights[i]) for i in range(len(p))]
    result = {"args": vars(args), "by_group": summarise(d, rows, p)}
    Path(args.out).write_text(json.dumps(result, indent=1))
    cols = ["shipped", "refiner_direction", "refiner_oracle", "change_oracle", "grid16", "helps",
            *(f"drawn_{t}" for t in DRAWN_LEVELS), "raw_out_psnr"]
    print("group".ljust(11) + " ".join(c[:12].rjust(12) for c in cols))
    for g, s in result["by_group"].items():
        print(g.ljust(11) + " ".join(f"{s.get(c, float('nan')):12.3f}" for c in cols))


if __name__ == "__main__":
    main()
