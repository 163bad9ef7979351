"""Measure fewer U-Net rows per edit on training identities (issue 18, item 2): mask draws, scheduler,
steps and the guidance interval, each configuration scored against exact ground truth.

    python scripts/tune_sampling.py -n 64 -o runs/sampling-tune

    python scripts/tune_sampling.py -o runs/sampling-tune --choose 24 --write   # record the choice in pedit.json
    python scripts/tune_sampling.py -o runs/sampling-tune --choose 24 --by-task --write   # one per task

Makes `n` exact toon pairs of training identities (seeds 0..n-1; evaluation uses 1,000,000+; the
same pairs as scripts/tune_masks.py), then runs `pedit eval`'s scoring (pedit.eval.ground_truth.evaluate,
method "ours", the model folder's per-task mask settings) once per configuration. Writes
OUT/sampling.json and prints a table: U-Net rows per edit (pedit.edit.editor.edit_rows), PSNR on the
whole image, inside and outside the true mask, mask IoU, seconds per pair. Configurations: CONFIGS
below, or --only NAME,NAME. `--choose R` picks, among the measured configurations of at most R rows
whose PSNR inside and outside the true mask are both within 0.3 dB of "today" (or better), the one
with the best whole-image PSNR; `--write` records it in the model's pedit.json ("sampling", and the
mask's draws as "mask": {"n_noise": ...}) with the measurement that chose it. With `--by-task` the
same rule runs on each task's pairs alone (its bar, its whole-image PSNR) and `--write` records one
sampler per task ("sampling_by_task", the draws in "mask_by_task"), or, where every task chooses the
same configuration, that one as "sampling".
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

# name: (mask draws, scheduler, steps, guidance interval or None)
CONFIGS = {
    "today": (10, "ddim", 20, None),
    "ddim-20-gi": (10, "ddim", 20, (0.2, 0.8)),
    "dpm-10": (10, "dpm", 10, None),
    "dpm-8": (10, "dpm", 8, None),
    "dpm-6": (10, "dpm", 6, None),
    "draws4-dpm-8": (4, "dpm", 8, None),
    "draws2-dpm-8": (2, "dpm", 8, None),
    "draws2-dpm-6": (2, "dpm", 6, None),
    "draws2-dpm-8-gi": (2, "dpm", 8, (0.2, 0.8)),
    "draws2-dpm-8-gi-hi": (2, "dpm", 8, (0.4, 1.0)),
    "draws2-dpm-6-gi-hi": (2, "dpm", 6, (0.4, 1.0)),
    "draws2-dpm-4": (2, "dpm", 4, None),
    "draws2-euler-8": (2, "euler", 8, None),
    "draws2-ddim-8": (2, "ddim", 8, None),
    # at or near the 24 rows: few draws, few steps, guidance on the middle noise levels
    "draws2-dpm-6-gi": (2, "dpm", 6, (0.2, 0.8)),
    "draws2-dpm-5-gi": (2, "dpm", 5, (0.2, 0.8)),
    "draws2-dpm-4-gi": (2, "dpm", 4, (0.2, 0.8)),
    "draws1-dpm-6-gi": (1, "dpm", 6, (0.2, 0.8)),
    "draws2-dpm-6-gi-mid": (2, "dpm", 6, (0.3, 0.7)),
    # DDIM needs no diffusers import (pedit.edit.schedules.LightDDIM): the CPU cold start keeps its < 3 s
    "draws2-ddim-6-gi": (2, "ddim", 6, (0.2, 0.8)),
    "draws2-ddim-5-gi": (2, "ddim", 5, (0.2, 0.8)),
    "draws2-ddim-4-gi": (2, "ddim", 4, (0.2, 0.8)),
    "draws2-ddim-8-gi": (2, "ddim", 8, (0.2, 0.8)),
    # for a distilled student (pedit distill: 2 rows a step whatever the interval), more steps fit in 24 rows
    "draws2-ddim-10-gi": (2, "ddim", 10, (0.2, 0.8)),
    "draws2-ddim-10": (2, "ddim", 10, None),
    "draws4-ddim-8-gi": (4, "ddim", 8, (0.2, 0.8)),
    "draws4-ddim-8": (4, "ddim", 8, None),
    "draws2-ddim-3-gi": (2, "ddim", 3, (0.2, 0.8)),
    "draws1-ddim-4-gi": (1, "ddim", 4, (0.2, 0.8)),
    # a teacher's 24-row budget around draws2-ddim-6-gi (25 rows): one draw, or one guided step fewer
    "draws1-ddim-6-gi": (1, "ddim", 6, (0.2, 0.8)),
    "draws2-ddim-6-gi-hi": (2, "ddim", 6, (0.4, 0.8)),
    "draws2-ddim-6-gi-lo": (2, "ddim", 6, (0.2, 0.6)),
    "draws2-ddim-7-gi-mid": (2, "ddim", 7, (0.3, 0.7)),
    "draws3-ddim-6-gi-hi": (3, "ddim", 6, (0.4, 0.8)),
    "draws2-ddim-7-gi-hi": (2, "ddim", 7, (0.45, 0.8)),
    "draws2-ddim-6-gi-top": (2, "ddim", 6, (0.6, 0.9)),
    "draws2-ddim-7-gi-top": (2, "ddim", 7, (0.6, 0.9)),
    "draws2-ddim-6-gi-top1": (2, "ddim", 6, (0.7, 0.9)),
    "draws2-ddim-8-gi-top": (2, "ddim", 8, (0.6, 0.9)),
    "draws2-ddim-10-gi-top": (2, "ddim", 10, (0.6, 0.9)),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-m", "--model", default=None, help="model folder (default: the bundled toon model)")
    ap.add_argument("-n", type=int, default=64, help="exact pairs of training identities (seeds 0..n-1)")
    ap.add_argument("-o", "--out", default="runs/sampling-tune")
    ap.add_argument("--only", help="comma-separated configuration names")
    ap.add_argument("--pairs", help="an existing pair folder instead of making one (held-out checks)")
    ap.add_argument("--choose", type=int, metavar="ROWS", help="choose the best configuration of at most ROWS rows")
    ap.add_argument("--write", action="store_true", help="with --choose: write it into the model's pedit.json")
    ap.add_argument("--per-task", action="store_true",
                    help="with --choose: the 0.3 dB bar inside and outside the true mask for each task (expression, "
                         "costume) as well as pooled; needs \"by_task\" in today's results")
    ap.add_argument("--by-task", action="store_true",
                    help="with --choose: one choice per task (expression, costume), each by its own pairs' bar and "
                         "PSNR; --write records them as \"sampling_by_task\" (each task's mask draws in "
                         "\"mask_by_task\"), or as \"sampling\" where every task chooses the same")
    ap.add_argument("--fewest", action="store_true",
                    help="with --choose: the fewest U-Net rows within the bar (best PSNR among those), not the best PSNR")
    ap.add_argument("--today-from", metavar="SAMPLING_JSON",
                    help="with --choose: take \"today\" (the bar) from this results file, e.g. the teacher's sweep "
                         "when choosing for its distilled student")
    ap.add_argument("--schedulers", default="ddim,dpm,euler",
                    help="with --choose: only these samplers (ddim alone keeps the CPU cold start free of diffusers)")
    args = ap.parse_args()

    from pedit.data.gen_pairs import GenPairsConfig, generate_pairs
    from pedit.edit.editor import EditOptions
    from pedit.edit.rows import edit_rows
    from pedit.edit.mask import MaskConfig
    from pedit.edit.sampler import make_scheduler
    from pedit.eval.ground_truth import EvalConfig, evaluate
    from pedit.model.loading import bundled_model_path
    from pedit.model.sampling_settings import SamplingSettings

    model = Path(args.model) if args.model else bundled_model_path()
    meta = json.loads((model / "pedit.json").read_text())
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.pairs:
        pairs = Path(args.pairs)
    else:
        pairs = out / "pairs"
        if not (pairs / "metadata.jsonl").exists():
            generate_pairs(GenPairsConfig(str(pairs), n=args.n, resolution=int(meta["resolution"]), seed=0, exact=True))
    schedule = json.loads((model / "scheduler" / "scheduler_config.json").read_text())
    names = args.only.split(",") if args.only else list(CONFIGS)
    results_file = out / "sampling.json"
    results = json.loads(results_file.read_text()) if results_file.exists() else {}
    if args.choose is not None:  # from the measurements on file: no edit runs
        results = json.loads(results_file.read_text())
        if args.today_from:
            results["today"] = {**json.loads(Path(args.today_from).read_text())["today"], "from": args.today_from}
        if args.by_task:
            choose_by_task(model, meta, results, args.choose, args.write, args.schedulers.split(","), args.fewest)
        else:
            choose(model, meta, results, args.choose, args.write, args.schedulers.split(","), args.fewest, args.per_task)
        return
    for name in names:
        draws, scheduler, steps, interval = CONFIGS[name]
        options = EditOptions(steps=steps, scheduler=scheduler, mask=MaskConfig(n_noise=draws), guidance_interval=interval)
        rows = edit_rows(options, make_scheduler(scheduler, schedule), distilled="distilled" in meta)
        t0 = time.perf_counter()
        # None in CONFIGS is every step guided; EvalConfig's None would take the model folder's own interval
        report = evaluate(EvalConfig(pairs=str(pairs), model=str(model), methods=("ours",),
                                     sampling=SamplingSettings(steps=steps, scheduler=scheduler, mask_noises=draws,
                                                               guidance_interval=interval or (0.0, 1.0)),
                                     batch_size=16, grid_pairs=0, imperfect_reference=False))
        ours = report["methods"]["ours"]
        results[name] = {"mask_draws": draws, "scheduler": scheduler, "steps": steps, "guidance_interval": interval,
                         "unet_rows_per_edit": rows, "pairs": report["pairs"], "psnr": ours["psnr"],
                         "psnr_in_mask": ours["psnr_in_mask"], "psnr_outside_mask": ours["psnr_outside_mask"],
                         "mask_iou": ours["mask_iou"], "seconds_per_pair": ours["seconds_per_pair"],
                         "wall_s": time.perf_counter() - t0, "by_task": by_task(report, meta)}
        results_file.write_text(json.dumps(results, indent=2))  # after every configuration: a cut run keeps what it had
        r = results[name]
        tasks = " | ".join(f"{t} {v['psnr_in_mask']:.2f}/{v['psnr_outside_mask']:.2f}" for t, v in sorted(r["by_task"].items()))
        print(f"| {name} | {rows} | {r['psnr']:.2f} | {r['psnr_in_mask']:.2f} | {r['psnr_outside_mask']:.2f} | "
              f"{r['mask_iou']:.3f} | {r['seconds_per_pair']:.3f} | {tasks} |", flush=True)


def by_task(report: dict, meta: dict) -> dict:
    """PSNR (whole image, inside and outside the true mask) and mask IoU per task (expression, costume),
    over its directions: a pooled figure can hide one task losing what the other gains. PSNRs are pooled
    as mean squared errors weighted by pairs (exact for the whole image, where every pair has the same
    pixels; inside and outside the true mask a direction weighs by its pairs, not its pixels)."""
    import math

    task_of = {d["name"]: d.get("task", "other") for d in meta.get("directions", [])}
    psnrs = ("psnr", "psnr_in_mask", "psnr_outside_mask")
    out: dict = {}
    for direction, s in report["per_direction"]["ours"].items():
        t = out.setdefault(task_of.get(direction, "other"), {"pairs": 0, "mask_iou": 0.0, **{k: 0.0 for k in psnrs}})
        t["pairs"] += s["pairs"]
        t["mask_iou"] += s["mask_iou"] * s["pairs"]
        for key in psnrs:  # as a mean squared error (255² / 10^(PSNR / 10))
            t[key] += s["pairs"] * 10 ** (-s[key] / 10)
    for t in out.values():
        t["mask_iou"] = round(t["mask_iou"] / t["pairs"], 4)
        for key in psnrs:
            t[key] = round(-10 * math.log10(t[key] / t["pairs"]), 3)
    return out


TOLERANCE_DB = 0.3  # the fidelity bar: within 0.3 dB of today's edit inside and outside the true mask


def within_bar(r: dict, today: dict) -> bool:
    """PSNR inside and outside the true mask both within TOLERANCE_DB of today's (or better)."""
    return all(r[k] >= today[k] - TOLERANCE_DB for k in ("psnr_in_mask", "psnr_outside_mask"))


def choose(model: Path, meta: dict, results: dict, max_rows: int, write: bool, schedulers: list[str],
           fewest: bool = False, per_task: bool = False) -> None:
    today = results["today"]
    ok = {n: r for n, r in results.items()
          if r["unet_rows_per_edit"] <= max_rows and r["scheduler"] in schedulers and within_bar(r, today)
          and (not per_task or all(within_bar(r["by_task"][t], bar) for t, bar in today["by_task"].items()))}
    if not ok:
        raise SystemExit(f"no measured configuration of at most {max_rows} rows is within {TOLERANCE_DB} dB of today")
    name = max(ok, key=lambda n: (-ok[n]["unet_rows_per_edit"] if fewest else 0, ok[n]["psnr"]))
    r = ok[name]
    print(f"chosen: {name} ({r['unet_rows_per_edit']} rows; PSNR {r['psnr']:.2f}, in {r['psnr_in_mask']:.2f}, "
          f"out {r['psnr_outside_mask']:.2f}, IoU {r['mask_iou']:.3f}; today {today['unet_rows_per_edit']} rows, "
          f"{today['psnr']:.2f} / {today['psnr_in_mask']:.2f} / {today['psnr_outside_mask']:.2f} / {today['mask_iou']:.3f})")
    if not write:
        return
    meta["mask"] = {**meta.get("mask", {}), "n_noise": r["mask_draws"]}
    meta["sampling"] = {
        "scheduler": r["scheduler"], "steps": r["steps"], "guidance_interval": r["guidance_interval"],
        "chosen_by": (f"scripts/tune_sampling.py on {r['pairs']} exact pairs of training identities (seeds 0-"
                      f"{r['pairs'] - 1}), never held-out ones: of {len(results)} configurations, "
                      f"{'the fewest U-Net rows (then the best whole-image PSNR)' if fewest else 'the best whole-image PSNR'} "
                      f"among the {'/'.join(schedulers)} ones of at most {max_rows} U-Net rows within {TOLERANCE_DB} dB "
                      f"of the paper's sampler "
                      f"inside and outside the true mask{', pooled and for each task' if per_task else ''}. {name}: {r['unet_rows_per_edit']} rows, PSNR {r['psnr']:.2f}, "
                      f"in mask {r['psnr_in_mask']:.2f}, outside {r['psnr_outside_mask']:.2f}, IoU {r['mask_iou']:.3f}; "
                      f"the paper's sampler (20 DDIM steps, every step guided, 10 mask draws"
                      f"{', the teacher, ' + today['from'] if 'from' in today else ''}): "
                      f"{today['unet_rows_per_edit']} rows, {today['psnr']:.2f} / {today['psnr_in_mask']:.2f} / "
                      f"{today['psnr_outside_mask']:.2f} / {today['mask_iou']:.3f}. The mask's draws are \"mask\".n_noise."),
    }
    (model / "pedit.json").write_text(json.dumps(meta, indent=2))
    print(f"wrote \"sampling\" and mask.n_noise into {model / 'pedit.json'}")


def choose_by_task(model: Path, meta: dict, results: dict, max_rows: int, write: bool, schedulers: list[str],
                   fewest: bool = False) -> None:
    """For each task of today's results: among the measured configurations of at most `max_rows` rows
    whose PSNR inside and outside the true mask on that task's pairs are within TOLERANCE_DB of today's
    there, the best whole-image PSNR on them (with `fewest`: the fewest rows first). `write`: where the
    tasks choose differently, each into pedit.json's "sampling_by_task" (its draws into "mask_by_task");
    where they all choose one configuration, it is the folder's "sampling" (its draws "mask".n_noise)
    and "sampling_by_task" goes: one sampler, one block."""
    today = results["today"]
    chosen = {}
    for task, bar in sorted(today["by_task"].items()):
        ok = {n: r for n, r in results.items() if r["unet_rows_per_edit"] <= max_rows and r["scheduler"] in schedulers
              and task in r["by_task"] and within_bar(r["by_task"][task], bar)}
        if not ok:
            raise SystemExit(f"{task}: no measured configuration of at most {max_rows} rows is within "
                             f"{TOLERANCE_DB} dB of today on its pairs")
        chosen[task] = max(ok, key=lambda n: (-ok[n]["unet_rows_per_edit"] if fewest else 0, ok[n]["by_task"][task]["psnr"]))
        r, t = ok[chosen[task]], ok[chosen[task]]["by_task"][task]
        print(f"{task}: {chosen[task]} ({r['unet_rows_per_edit']} rows; on its {t['pairs']} pairs PSNR {t['psnr']:.2f}, "
              f"in {t['psnr_in_mask']:.2f}, out {t['psnr_outside_mask']:.2f}, IoU {t['mask_iou']:.3f}; today "
              f"{bar['psnr']:.2f} / {bar['psnr_in_mask']:.2f} / {bar['psnr_outside_mask']:.2f} / {bar['mask_iou']:.3f})")
    if write:
        write_by_task(model, meta, results, chosen, max_rows, schedulers, fewest)


def task_measurement(results: dict, name: str, task: str, today: dict) -> str:
    """One task's figures of configuration `name` and of the paper's sampler, for "chosen_by"."""
    t, bar = results[name]["by_task"][task], today["by_task"][task]
    return (f"{task}s ({t['pairs']} pairs): PSNR {t['psnr']:.2f}, in mask {t['psnr_in_mask']:.2f}, outside "
            f"{t['psnr_outside_mask']:.2f}, IoU {t['mask_iou']:.3f}, against the paper's sampler's {bar['psnr']:.2f} / "
            f"{bar['psnr_in_mask']:.2f} / {bar['psnr_outside_mask']:.2f} / {bar['mask_iou']:.3f}")


def write_by_task(model: Path, meta: dict, results: dict, chosen: dict, max_rows: int, schedulers: list[str],
                  fewest: bool) -> None:
    """choose_by_task's choice into the model's pedit.json, each block with the measurement that chose it."""
    today = results["today"]
    rule = (f"scripts/tune_sampling.py --by-task on {today['pairs']} exact pairs of training identities (seeds 0-"
            f"{today['pairs'] - 1}), never held-out ones: for each task, of {len(results)} configurations, "
            f"{'the fewest U-Net rows, then ' if fewest else ''}the best whole-image PSNR on that task's pairs among "
            f"the {'/'.join(schedulers)} ones of at most {max_rows} U-Net rows within {TOLERANCE_DB} dB of the paper's "
            f"sampler (20 DDIM steps, every step guided, 10 mask draws"
            f"{', the teacher, ' + today['from'] if 'from' in today else ''}) inside and outside the true mask on them.")

    def block(name: str, tasks: list[str]) -> dict:
        r = results[name]
        said = "; ".join(task_measurement(results, name, t, today) for t in tasks)
        return {"scheduler": r["scheduler"], "steps": r["steps"], "guidance_interval": r["guidance_interval"],
                "chosen_by": f"{rule} {name} ({r['unet_rows_per_edit']} rows) for {' and '.join(tasks)}: {said}."}

    masks = meta.setdefault("mask_by_task", {})
    if len(set(chosen.values())) == 1:  # every task chose the same: one sampler, the folder's "sampling"
        name = next(iter(chosen.values()))
        meta["sampling"] = block(name, sorted(chosen))
        meta["sampling"]["chosen_by"] += " One configuration for every task: one \"sampling\"; the draws are \"mask\".n_noise."
        meta["mask"] = {**meta.get("mask", {}), "n_noise": results[name]["mask_draws"]}
        meta.pop("sampling_by_task", None)
        for task in chosen:
            masks.get(task, {}).pop("n_noise", None)
        where = "\"sampling\" (one for every task)"
    else:
        by_task = meta.setdefault("sampling_by_task", {})
        for task, name in chosen.items():
            by_task[task] = block(name, [task])
            masks[task] = {**masks.get(task, {}), "n_noise": results[name]["mask_draws"]}
        where = f"\"sampling_by_task\" ({', '.join(sorted(chosen))}) and their mask draws"
    (model / "pedit.json").write_text(json.dumps(meta, indent=2))
    print(f"wrote {where} into {model / 'pedit.json'}")

if __name__ == "__main__":
    main()
