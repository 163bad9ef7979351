"""Prototype: a small learned mask refiner against the shipped pixel mask, on cached edits
(scripts/cache_mask_inputs.py). Settings are chosen on training pairs; held-out pairs are only scored.

    python scripts/prototype_refiner.py -m toon-fast --train runs/refine-cache/student-train.npz \
        --eval runs/refine-cache/student-eval.npz -o runs/refine-proto
"""

from __future__ import annotations

import argparse
import json
import time
from types import SimpleNamespace

import numpy as np


def load(path):
    z = np.load(path)
    return {k: z[k] for k in z.files}


DIRECTIONS = ("angry", "crying", "laughing", "shocked", "flower", "royal", "santa", "sheep")
USE_DIRECTION = False
USE_TASK = True


def features(d, i):
    """(C, R, R) float32 features of pair i: prior, colour change, input RGB, edit RGB, latent mask, task
    (and with USE_DIRECTION a one-hot of the direction)."""
    from pedit.edit.pixel_mask import colour_change, soft_prior, upsample

    x = d["x_A"][i]
    r = x.shape[0]
    prior = upsample(soft_prior(d["diff"][i], float(d["ratio"][i])), r)
    change = colour_change(d["raw"][i], x) / 255.0
    lat = np.kron(d["mask"][i], np.ones((r // d["mask"].shape[-1],) * 2))
    task = np.full((r, r), 1.0 if d["task"][i] == "costume" else 0.0)
    return np.concatenate([prior[None], change[None], x.transpose(2, 0, 1) / 255.0,
                           d["raw"][i].transpose(2, 0, 1) / 255.0, lat[None]] + ([task[None]] if USE_TASK else [])
                          + ([np.full((len(DIRECTIONS), r, r), 0.0) + (np.array(DIRECTIONS) == d["direction"][i])[:, None, None]]
                             if USE_DIRECTION else [])).astype(np.float32)


def shipped_weights(d, meta):
    from pedit.edit.mask import keep_outside
    from pedit.model.mask_settings import mask_config_for
    import torch

    out = []
    for i in range(len(d["x_A"])):
        cfg = mask_config_for(meta, SimpleNamespace(name=str(d["direction"][i]), task=str(d["task"][i])))
        _, w = keep_outside(d["x_A"][i], d["raw"][i], torch.from_numpy(d["mask"][i][None, None]), cfg,
                            diff=d["diff"][i], reconstruction=d["reconstruction"][i])
        out.append(w)
    return np.stack(out)


def score(d, weights, by="direction"):
    from pedit.edit.mask import composite
    from pedit.eval.ground_truth import edge_band
    from pedit.eval.pixel_tuning import Tally

    tallies = {"all": Tally()}
    for i in range(len(d["x_A"])):
        true = d["true"][i]
        out = composite(d["x_A"][i], d["raw"][i], weights[i])
        for k in ("all", str(d[by][i]), str(d["task"][i])):
            tallies.setdefault(k, Tally()).add(out, d["x_B"][i].astype(np.float64), true, edge_band(true), weights[i])
    return {k: t.summary() for k, t in tallies.items()}


def fmt(s):
    return (f"in {s['psnr_in_mask']:.2f} out {s['psnr_outside_mask']:.2f} all {s['psnr']:.2f} "
            f"IoU {s['mask_iou']:.3f} edge {s['mask_edge_error']:.3f}")


def build_net(c_in, width, dilations):
    import torch.nn as nn

    layers, c = [], c_in
    for dil in dilations:
        layers += [nn.Conv2d(c, width, 3, padding=dil, dilation=dil), nn.ReLU()]
        c = width
    layers.append(nn.Conv2d(c, 1, 1))
    return nn.Sequential(*layers)


def train(X, Y, XA, RAW, XB, args, log):
    import torch

    torch.manual_seed(0)
    net = build_net(X.shape[1], args.width, [int(v) for v in args.dilations.split(",")])
    opt = torch.optim.Adam(net.parameters(), lr=args.lr)
    X, Y = torch.from_numpy(X), torch.from_numpy(Y.astype(np.float32))[:, None]
    XA, RAW, XB = (torch.from_numpy(a.astype(np.float32) / 255.0).permute(0, 3, 1, 2) for a in (XA, RAW, XB))
    n = len(X)
    steps = args.epochs * (n // args.batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, args.lr, total_steps=steps)
    g = torch.Generator().manual_seed(0)
    t0 = time.perf_counter()
    for ep in range(args.epochs):
        perm = torch.randperm(n, generator=g)
        tot = 0.0
        for b in range(n // args.batch):
            idx = perm[b * args.batch:(b + 1) * args.batch]
            logit = net(X[idx])
            loss = torch.nn.functional.binary_cross_entropy_with_logits(
                logit, Y[idx], pos_weight=torch.tensor(args.pos_weight))
            if args.blend_loss > 0:
                w = torch.sigmoid(logit)
                out = w * RAW[idx] + (1 - w) * XA[idx]
                loss = loss + args.blend_loss * ((out - XB[idx]) ** 2).mean() * 100
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            tot += float(loss.detach())
        log(f"epoch {ep + 1}/{args.epochs} loss {tot / (n // args.batch):.4f} ({time.perf_counter() - t0:.0f} s)")
    return net


def predict(net, X):
    import torch

    with torch.no_grad():
        return torch.cat([torch.sigmoid(net(torch.from_numpy(X[i:i + 50]))) for i in range(0, len(X), 50)])[:, 0].numpy()


def to_weight(p, t, band, feather):
    from pedit.edit.pixel_mask import ZERO_BELOW, gaussian_blur, ramp

    out = []
    for q in p:
        w = np.clip(gaussian_blur(ramp(q, t - band, t + band), feather), 0, 1)
        w[w < ZERO_BELOW] = 0
        out.append(w.astype(np.float32))
    return np.stack(out)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("-m", "--model", default="toon-fast")
    ap.add_argument("--train", required=True)
    ap.add_argument("--eval", required=True)
    ap.add_argument("-o", "--out", default="runs/refine-proto")
    ap.add_argument("--val", type=int, default=80, help="training pairs held back to choose the threshold")
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument("--dilations", default="1,2,4,8")
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--pos-weight", type=float, default=1.0)
    ap.add_argument("--blend-loss", type=float, default=0.0)
    ap.add_argument("--direction", action="store_true", help="a one-hot of the direction as input")
    ap.add_argument("--no-task", action="store_true", help="no task channel")
    args = ap.parse_args()
    global USE_DIRECTION
    USE_DIRECTION = args.direction
    global USE_TASK
    USE_TASK = not args.no_task

    import torch
    from pathlib import Path

    from pedit.model.loading import model_path

    torch.set_num_threads(1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    log_lines = []

    def log(s):
        print(s, flush=True)
        log_lines.append(s)

    meta = json.loads((model_path(args.model) / "pedit.json").read_text())
    tr, ev = load(args.train), load(args.eval)
    n_fit = len(tr["x_A"]) - args.val
    fit = {k: v[:n_fit] for k, v in tr.items()}
    val = {k: v[n_fit:] for k, v in tr.items()}
    Xf = np.stack([features(fit, i) for i in range(n_fit)])
    Xv = np.stack([features(val, i) for i in range(len(val["x_A"]))])
    Xe = np.stack([features(ev, i) for i in range(len(ev["x_A"]))])
    net = train(Xf, fit["true"], fit["x_A"], fit["raw"], fit["x_B"], args, log)
    log(f"params {sum(p.numel() for p in net.parameters())}")
    shipped_val = score(val, shipped_weights(val, meta))
    log(f"val shipped: {fmt(shipped_val['all'])}")
    pv = predict(net, Xv)
    best = None
    for t in (0.3, 0.4, 0.5, 0.6):
        for band in (0.0, 0.1, 0.2):
            for fe in (0.0, 0.5, 1.0):
                s = score(val, to_weight(pv, t, band, fe))["all"]
                log(f"val t {t} band {band} feather {fe}: {fmt(s)}")
                key = (s["psnr_in_mask"] >= shipped_val["all"]["psnr_in_mask"], s["psnr_outside_mask"] + 10 * s["mask_iou"])
                if best is None or key > best[0]:
                    best = (key, (t, band, fe))
    t, band, fe = best[1]
    log(f"chosen on training pairs: t {t} band {band} feather {fe}")
    pe = predict(net, Xe)
    learned = score(ev, to_weight(pe, t, band, fe))
    shipped = score(ev, shipped_weights(ev, meta))
    for k in shipped:
        log(f"held-out {k:10s} shipped {fmt(shipped[k])}\n{'':21s}learned {fmt(learned[k])}")
    torch.save(net.state_dict(), out / "net.pt")
    (out / "result.json").write_text(json.dumps({"args": vars(args), "chosen": best[1], "held_out_learned": learned,
                                                 "held_out_shipped": shipped, "log": log_lines}, indent=1))


if __name__ == "__main__":
    main()
