"""`pedit eval`: a model against ground truth (--pairs) or on real photos (--photos)."""

from __future__ import annotations

import click

from pedit.cli.choices import BACKENDS, sampling_options, sampling_settings
from pedit.cli.progress import make_console, make_progress, show_config


@click.command("eval")
@click.argument("more_photos", nargs=-1, metavar="[PHOTOS]...")
@click.option("-m", "--model", type=click.Path(), help="Model folder (default: the bundled toon model).")
@click.option("--pairs", type=click.Path(), help="Pair folder with exact targets (and masks).")
@click.option("--photos", multiple=True, type=click.Path(),
              help="Real photos (files or folders; more may follow as arguments): identity distance, pixels kept.")
@click.option("-d", "--directions", "direction_list", help="With --photos: comma-separated directions to edit toward.")
@click.option("-o", "--output", type=click.Path(file_okay=False), help="Report folder: report.json, report.md, grid.png.")
@click.option("--methods", default=",".join(["ours", "ours-no-mask", "no-c_s", "no-c_im", "sdedit-0.5", "sdedit-0.8", "diffedit"]),
              show_default=True, help="Comma-separated methods to score.")
@sampling_options(no_mask=False, what="every edit (ours' and the baselines')")
@click.option("--batch-size", type=click.IntRange(min=1), default=16, show_default=True)
@click.option("--limit", type=click.IntRange(min=1), help="Score only the first N pairs.")
@click.option("--grid", "grid_pairs", type=click.IntRange(min=0), default=6, show_default=True, help="Pairs in the picture grid.")
@click.option("--detector", type=click.Choice(["default", "haar", "hog", "cnn"]), default="default", show_default=True,
              help="With --photos: the face detector that places the crop.")
@click.option("--overwrite", is_flag=True, help="Replace an earlier report in -o.")
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda, cuda:1 ...")
@click.option("--allow-pickle", is_flag=True, help="Allow pickle weights in the model folder. Only for trusted files.")
@click.option("--precision", type=click.Choice(["fp32", "fp16", "bf16"]), default="fp32", show_default=True)
@click.option("--backend", type=click.Choice(BACKENDS), default="torch", show_default=True, help="What runs the U-Net.")
@click.option("--engines", type=click.Path(file_okay=False), help="`pedit export` folder for --backend onnx/trt "
              "(default: exported once into ~/.cache/pedit).")
@click.option("--update-card", is_flag=True,
              help="With --pairs: write ours' results into the model folder's card (README.md); only its metadata "
                   "and results section change, your own text stays.")
@click.option("-q", "--quiet", is_flag=True)
@click.pass_context
def eval_cmd(ctx, more_photos, model, pairs, photos, direction_list, output, methods, batch_size, limit, grid_pairs,
             detector, overwrite, device, allow_pickle, precision, backend, engines, update_card, quiet, **sampling):
    """Measure a model: against ground truth (--pairs), or on real photos (--photos, no ground truth).

    The sampling options (--steps, --scheduler, --s-p, ...) set ours' edit, each over the model's
    pedit.json as in `pedit edit`; with --pairs the baselines take the steps (else 20), seed, scales and
    mask draws too, and keep DDIM.

    \b
    pedit eval --pairs eval-pairs/ -o report/              SSIM, PSNR in/outside the true mask, mask IoU
    pedit eval --photos a.jpg b.jpg -d royal,angry -o r/   identity distance, pixels kept, mask area
    pedit eval -m my-model --pairs eval-pairs/ --update-card   the results into the model card (README.md)
    """
    photos = (*photos, *more_photos)
    if bool(pairs) == bool(photos):
        raise click.UsageError("Pass either --pairs DIR (toon ground truth) or --photos PATH... (real photos).")
    # A flag that does not apply to the chosen mode is an error, never silently ignored.
    pairs_only = {"methods", "batch_size", "limit", "grid_pairs", "engines", "update_card"}
    given = {name for name in (*pairs_only, "detector")
             if ctx.get_parameter_source(name) != click.core.ParameterSource.DEFAULT}
    if photos:
        if not_here := given & pairs_only:
            flags = ", ".join(_flag(ctx, name) for name in sorted(not_here))
            raise click.UsageError(f"{flags} goes with --pairs; --photos edits every photo toward each -d direction.")
        _eval_photos(photos, direction_list, model, output, sampling_settings(sampling), detector, overwrite, device,
                     allow_pickle, precision, backend, quiet)
        return
    if direction_list:
        raise click.UsageError("-d/--directions goes with --photos; with --pairs each pair names its direction.")
    if "detector" in given:
        raise click.UsageError("--detector goes with --photos; --pairs scores each pair image whole, without a face crop.")
    from pedit.eval.ground_truth import EvalConfig, evaluate
    from pedit.eval.report import markdown_report

    cfg = EvalConfig(pairs=pairs, model=model, output=output, methods=tuple(m.strip() for m in methods.split(",") if m.strip()),
                     sampling=sampling_settings(sampling), batch_size=batch_size, limit=limit, grid_pairs=grid_pairs,
                     device=device, allow_pickle=allow_pickle, precision=precision, backend=backend, overwrite=overwrite,
                     engines=engines)
    card_folder = _card_folder(model, cfg.methods) if update_card else None  # checked before the work
    console = make_console(quiet)
    show_config(console, cfg)
    with make_progress(console) as bar:
        tasks = {}

        def on_progress(method, done, total):
            if method not in tasks:
                tasks[method] = bar.add_task(method, total=total, info="")
            bar.update(tasks[method], completed=done)

        report = evaluate(cfg, on_progress)
    click.echo(markdown_report(report, on_grid=False))  # the grid truth's tables are in report.md
    if card_folder is not None:
        from pedit.model.card import write_card_for_eval

        click.echo(f"Model card updated: {write_card_for_eval(card_folder, report)}", err=True)


def _card_folder(model, methods):
    """The model folder whose card --update-card writes: "ours" must be scored, the card readable."""
    from pedit.model.card import read_card
    from pedit.model.loading import read_model_folder

    if "ours" not in methods:
        raise click.UsageError("--update-card records ours' results: include ours in --methods.")
    folder, _ = read_model_folder(model)
    read_card(folder)  # a card that is a link or not UTF-8 fails here, before the eval
    return folder


def _flag(ctx, name: str) -> str:
    """The command-line spelling of parameter `name` (--grid for grid_pairs)."""
    param = next(p for p in ctx.command.params if p.name == name)
    return max(param.opts, key=len)


def _eval_photos(photos, direction_list, model, output, sampling, detector, overwrite, device, allow_pickle, precision,
                 backend, quiet):
    from rich.markup import escape

    from pedit.eval.photos import PhotoEvalConfig, evaluate_photos, markdown_photo_report

    if not direction_list:
        raise click.UsageError("--photos needs -d/--directions, e.g. -d royal,laughing (see `pedit directions`).")
    cfg = PhotoEvalConfig(photos=tuple(photos), directions=tuple(d.strip() for d in direction_list.split(",") if d.strip()),
                          model=model, output=output, sampling=sampling, detector=detector, device=device,
                          allow_pickle=allow_pickle, overwrite=overwrite, precision=precision, backend=backend)
    console = make_console(quiet)
    show_config(console, cfg)
    with make_progress(console) as bar:
        task = bar.add_task("photos x directions", total=None, info="")
        report = evaluate_photos(cfg, lambda done, total: bar.update(task, completed=done, total=total),
                                 note=lambda text: console.print(escape(text)))
    # A photo name that is not UTF-8 (surrogates in Python) shown with \x escapes, as in the report file.
    click.echo(markdown_photo_report(report).encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace"))

