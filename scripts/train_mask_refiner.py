"""Train a model's learned mask refiner (MaskConfig.refine "learned") on training identities, and with
--write put it in the model folder: the file and, per task where it measures better, the mask settings.

    python scripts/cache_mask_inputs.py -m toon-fast --pairs runs/refine-train/pairs -o runs/refine-cache/student-train.npz
    python scripts/train_mask_refiner.py -m toon-fast --train runs/refine-cache/student-train.npz -o runs/refine-student --write

The cache (scripts/cache_mask_inputs.py) holds one edit per exact pair with the folder's own settings.
The last --val pairs are held back: the network (pedit.model.mask_refiner's layers: 3x3 convolutions of
`--width` channels at dilations `--dilations`, ReLU, a 1x1 to one logit) is fitted on the others to the
true region (binary cross-entropy) plus --blend-loss x the squared error of the blend it makes against
the target; then, per task, on the held-back pairs, of the folder's current mask and the refiner at
every soft threshold, change gate and feather of GRID (MaskConfig's refiner_* fields), the best PSNR outside the true
region among those no worse inside it than the current mask (the rule of pedit.eval.pixel_tuning.choose).
--eval CACHE scores the result on held-out pairs (scoring only: nothing is chosen there).
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np

GRID = {"refiner_threshold": (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9), "refiner_band": (0.0, 0.1, 0.2),
        "refiner_feather": (0.0, 0.5, 1.0), "refiner_change_below": (0.0, 8.0, 16.0, 32.0)}


def load(paths):
    """One cache, or several (comma-separated) joined pair by pair."""
    parts = []
    for path in paths.split(","):
        with np.load(path, allow_pickle=False) as z:
            parts.append({k: z[k] for k in z.files})
    keys = dict.fromkeys(k for p in parts for k in p)
    return {k: (np.array(any(bool(p.get(k, False)) for p in parts)) if k == "held_out"
                else np.concatenate([p[k] for p in parts])) for k in keys}


def training_cache(paths, what="the training cache"):
    """load(paths), refused (SystemExit) when it holds evaluation identities: choices are made on training pairs."""
    d = load(paths)
    if d.get("held_out", np.array(False)).any():
        raise SystemExit(f"{what} holds evaluation identities: make it from training pairs only")
    return d


def start_run(model, out_dir):
    """(out folder, made; log, which prints a line and keeps it; the kept lines; the model folder; its pedit.json)."""
    from pedit.model.loading import model_path

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    lines = []

    def log(s):
        print(s, flush=True)
        lines.append(s)

    folder = model_path(model)
    return out, log, lines, folder, json.loads((folder / "pedit.json").read_text())


def subset(d, idx):
    return {k: v[idx] if v.ndim else v for k, v in d.items()}


def features(d, names):
    """(N, C, R, R) float32: pedit.edit.learned_mask.features `names` of every cached pair (what an edit computes)."""
    from pedit.edit.learned_mask import features as one

    return np.stack([one(d["diff"][i], d["x_A"][i], d["raw"][i], d["mask"][i], float(d["ratio"][i]), names)
                     for i in range(len(d["x_A"]))])


def current_weights(d, meta, folder):
    """The blend weights of the folder's mask settings as they are now (pedit.edit.mask.keep_outside)."""
    import torch

    from pedit.edit.mask import keep_outside
    from pedit.model.mask_settings import mask_config_for

    out = []
    for i in range(len(d["x_A"])):
        cfg = mask_config_for(meta, SimpleNamespace(name=str(d["direction"][i]), task=str(d["task"][i])), folder=folder)
        out.append(keep_outside(d["x_A"][i], d["raw"][i], torch.from_numpy(d["mask"][i][None, None]), cfg,
                                diff=d["diff"][i], reconstruction=d["reconstruction"][i])[1])
    return np.stack(out)


def score(d, weights, by="direction"):
    """{"all", each direction (by) and task: pedit.eval.pixel_tuning.Tally summary} of the blends."""
    from pedit.edit.mask import composite
    from pedit.eval.ground_truth import edge_band
    from pedit.eval.pixel_tuning import Tally

    tallies = {"all": Tally()}
    if "band" not in d:  # the edge bands, once per set of pairs (choose scores every setting on the same pairs)
        d["band"] = np.stack([edge_band(t) for t in d["true"]])
    for i in range(len(d["x_A"])):
        out = composite(d["x_A"][i], d["raw"][i], weights[i])
        for k in dict.fromkeys(("all", str(d[by][i]), str(d["task"][i]))):
            tallies.setdefault(k, Tally()).add(out, d["x_B"][i].astype(np.float64), d["true"][i], d["band"][i], weights[i])
    return {k: t.summary() for k, t in tallies.items()}


def fmt(s):
    return (f"in {s['psnr_in_mask']:.2f} out {s['psnr_outside_mask']:.2f} all {s['psnr']:.2f} "
            f"IoU {s['mask_iou']:.3f} edge error {s['mask_edge_error']:.3f}")


def build_net(width, dilations, channels):
    import torch.nn as nn

    layers, c = [], channels
    for dil in dilations:
        layers += [nn.Conv2d(c, width, 3, padding=dil, dilation=dil), nn.ReLU()]
        c = width
    layers.append(nn.Conv2d(c, 1, 1))
    return nn.Sequential(*layers)


def soft_jaccard(p, y):
    """1 - the soft IoU of probabilities p and truth y (N, 1, R, R), per image, averaged: the loss of the mean
    mask IoU `pedit eval` reports (an image with an empty truth and an empty p counts as IoU 1)."""
    inter = (p * y).sum((1, 2, 3))
    union = (p + y - p * y).sum((1, 2, 3))
    return (1 - (inter + 1.0) / (union + 1.0)).mean()


def train(X, d, args, log):
    """The network fitted to the true region of the pairs `d` from their features X."""
    import torch

    torch.manual_seed(args.seed)
    net = build_net(args.width, [int(v) for v in args.dilations.split(",")], X.shape[1])
    opt = torch.optim.Adam(net.parameters(), lr=args.lr)
    X, Y = torch.from_numpy(X), torch.from_numpy(d["true"].astype(np.float32))[:, None]
    XA, RAW, XB = (torch.from_numpy(d[k].astype(np.float32) / 255.0).permute(0, 3, 1, 2) for k in ("x_A", "raw", "x_B"))
    n, per = len(X), len(X) // args.batch
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, args.lr, total_steps=args.epochs * per)
    g = torch.Generator().manual_seed(args.seed)
    t0 = time.perf_counter()
    for ep in range(args.epochs):
        perm, tot = torch.randperm(n, generator=g), 0.0
        for b in range(per):
            idx = perm[b * args.batch:(b + 1) * args.batch]
            logit = net(X[idx])
            loss = torch.nn.functional.binary_cross_entropy_with_logits(logit, Y[idx])
            if args.blend_loss > 0:
                w = torch.sigmoid(logit)
                loss = loss + args.blend_loss * 100 * ((w * RAW[idx] + (1 - w) * XA[idx] - XB[idx]) ** 2).mean()
            if args.jaccard_loss > 0:
                loss = loss + args.jaccard_loss * soft_jaccard(torch.sigmoid(logit), Y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            tot += float(loss.detach())
        log(f"epoch {ep + 1}/{args.epochs} loss {tot / per:.4f} ({time.perf_counter() - t0:.0f} s)")
    return net


def weights_of(d, p, refiner_threshold, refiner_band, refiner_feather, refiner_change_below):
    """pedit.edit.learned_mask.learned_weight's last steps on the probabilities p (N, R, R) of the pairs d."""
    from pedit.edit.pixel_mask import colour_change, weight_from

    return np.stack([weight_from(q.astype(np.float64),
                                 colour_change(d["raw"][i], d["x_A"][i]) if refiner_change_below else None,
                                 refiner_threshold, refiner_band, refiner_change_below, refiner_feather)
                     for i, q in enumerate(p)])


def layers_of(net):
    convs = [m for m in net if hasattr(m, "weight")]
    return [(c.weight.detach().numpy(), c.bias.detach().numpy(), c.dilation[0]) for c in convs]


def better(s, best, now, rule, slack=0.0):
    """Whether summary s beats best under `rule`: "outside" (the pixel tuning's: the best PSNR outside among those no
    worse inside than `now`) or "iou" (the best mask IoU among those no worse than `now` inside and, by at most
    `slack` dB, outside)."""
    if s["psnr_in_mask"] < now["psnr_in_mask"]:
        return False
    if rule == "outside":
        return s["psnr_outside_mask"] > best["psnr_outside_mask"]
    return s["psnr_outside_mask"] >= now["psnr_outside_mask"] - slack and s["mask_iou"] > best["mask_iou"]


def choose(val, p_val, current, log, by="task", rule="outside", slack=0.0, grid=None):
    """{group: (settings or None for the current mask, val summary, current's val summary)}, one group per task
    or per direction (`by`); every GRID setting is scored once over all the held-back pairs (and, given a
    `grid` dict, recorded there per group: the trade-off each rule chooses from)."""
    now = score(val, current, by=by)
    groups = sorted(set(map(str, val[by])))
    best = {g: (None, now[g]) for g in groups}
    for values in itertools.product(*GRID.values()):
        settings = dict(zip(GRID, values))
        s = score(val, weights_of(val, p_val, **settings), by=by)
        for g in groups:
            if grid is not None:
                grid.setdefault(g, []).append([settings, s[g]])
            if better(s[g], best[g][1], now[g], rule, slack):
                best[g] = (settings, s[g])
    chosen = {}
    for g in groups:
        log(f"{g}: current {fmt(now[g])}\n  chosen {best[g][0]}: {fmt(best[g][1])}")
        chosen[g] = (best[g][0], best[g][1], now[g])
    return chosen


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-m", "--model", default="toon-fast")
    ap.add_argument("--train", required=True, help="cache(s) of training pairs, comma-separated (scripts/cache_mask_inputs.py)")
    ap.add_argument("--eval", help="cache of held-out pairs: scored only")
    ap.add_argument("-o", "--out", default="runs/refine")
    ap.add_argument("--val", type=int, default=80, help="training pairs held back to choose the soft threshold")
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument("--dilations", default="1,2,4,8")
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--blend-loss", type=float, default=1.0)
    ap.add_argument("--jaccard-loss", type=float, default=0.0,
                    help="weight of a soft Jaccard loss (1 - soft IoU per image) beside the cross-entropy")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--name", default="mask_refiner.npz", help="the refiner's file name in the model folder")
    ap.add_argument("--task", help="train, choose and write for this task's pairs only (e.g. expression)")
    ap.add_argument("--features", default="", help="EXTRA_FEATURES the network reads besides FEATURES, comma-separated "
                    "(pedit.model.mask_refiner)")
    ap.add_argument("--from", dest="from_file", help="a refiner file trained before: choose and score only")
    ap.add_argument("--by", choices=("task", "direction"), default="task",
                    help="choose the soft threshold, gate and feather per task (mask_by_task) or per direction (mask_by_direction)")
    ap.add_argument("--rule", choices=("outside", "iou"), default="outside",
                    help="outside: the best PSNR outside among those no worse inside; iou: the best mask IoU among those "
                         "no worse inside and outside than the folder's current mask")
    ap.add_argument("--out-slack", type=float, default=0.0,
                    help="with --rule iou: the PSNR outside the true region may fall this many dB below the current mask's")
    ap.add_argument("--write", action="store_true", help="write the refiner and the chosen settings into the folder")
    return ap.parse_args()


def main():
    args = parse_args()

    import torch

    from pedit.edit.learned_mask import probability
    from pedit.model.mask_refiner import FEATURES, load_refiner, save_refiner

    torch.set_num_threads(1)
    out, log, lines, folder, meta = start_run(args.model, args.out)
    tr = training_cache(args.train)
    if args.task:
        tr = subset(tr, np.where(tr["task"] == args.task)[0])
    n_fit = len(tr["x_A"]) - args.val
    fit, val = subset(tr, slice(0, n_fit)), subset(tr, slice(n_fit, None))
    if args.from_file:
        loaded = load_refiner(args.from_file, int(meta["resolution"]))
        layers, names = list(loaded.layers), loaded.features
    else:
        names = FEATURES + tuple(n for n in args.features.split(",") if n)
        layers = layers_of(train(features(fit, names), fit, args, log))
    log(f"parameters {sum(w.size + b.size for w, b, _ in layers)}")
    save_refiner(out / args.name, int(meta["resolution"]), layers, names)
    refiner = load_refiner(out / args.name, int(meta["resolution"]))

    def probabilities(X):
        return np.stack([probability(refiner, x) for x in X])

    grid = {}
    chosen = choose(val, probabilities(features(val, names)), current_weights(val, meta, folder), log, args.by, args.rule,
                    args.out_slack, grid)
    result = {"grid": grid, "args": vars(args), "chosen": {t: c[0] for t, c in chosen.items()},
              "val": {t: {"chosen": c[1], "current": c[2]} for t, c in chosen.items()}}
    if args.eval:
        ev = load(args.eval)
        if args.task:
            ev = subset(ev, np.where(ev["task"] == args.task)[0])
        p_ev, now = probabilities(features(ev, names)), current_weights(ev, meta, folder)
        learned = now.copy()
        for group, (settings, _, _) in chosen.items():
            if settings is not None:
                idx = np.where(ev[args.by] == group)[0]
                learned[idx] = weights_of(subset(ev, idx), p_ev[idx], **settings)
        result["held_out"] = {"learned": score(ev, learned), "current": score(ev, now)}
        for k in result["held_out"]["current"]:
            log(f"held-out {k:10s} current {fmt(result['held_out']['current'][k])}\n"
                f"{'':20s} learned {fmt(result['held_out']['learned'][k])}")
    result["log"] = lines
    (out / "refiner-training.json").write_text(json.dumps(result, indent=1))
    if args.write:
        import shutil

        shutil.copyfile(out / args.name, folder / args.name)
        by_group = meta.setdefault(f"mask_by_{args.by}", {})
        for group, (settings, s, now) in chosen.items():
            if settings is not None:
                by_group[group] = {**by_group.get(group, {}), "refine": "learned", "refiner": args.name, **settings}
        before = meta.get("mask_refiner", "") if args.task else ""  # another task's refiner stays on record
        rule = ("the best PSNR outside the true region among those no worse inside it than the mask the folder had"
                if args.rule == "outside" else
                f"the best mask IoU among those no worse inside the true region than the mask the folder had and at most "
                f"{args.out_slack:g} dB worse outside it")
        meta["mask_refiner"] = (before + " | " if before else "") + (
            f"{args.name}: {sum(w.size + b.size for w, b, _ in layers)} weights, trained on {n_fit} exact pairs of training "
            f"identities and its soft threshold, change gate and feather chosen per {args.by} on {len(val['x_A'])} more "
            f"(scripts/train_mask_refiner.py; never on held-out ones): {rule}. " + "; ".join(
                f"{t}: {'learned' if c[0] else 'kept'} ({fmt(c[1])}; before {fmt(c[2])})" for t, c in chosen.items()))
        (folder / "pedit.json").write_text(json.dumps(meta, indent=2))
        log(f"wrote {folder / args.name} and the chosen settings into {folder / 'pedit.json'}")


if __name__ == "__main__":
    main()
