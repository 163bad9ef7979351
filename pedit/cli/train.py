"""`pedit train` (the MCDM training loop of stage 2, paper §3.3) and `pedit distill` (its few-row student)."""

from __future__ import annotations

import os

import click

from pedit.cli.progress import make_console, make_progress, show_config

# The step loop's options, shared by train and distill (pedit.train.steps.run_steps runs both).
STEP_LOOP_OPTIONS = (
    click.option("--max-steps", type=click.IntRange(min=1), default=1000, show_default=True),
    click.option("--max-minutes", type=click.FloatRange(min=0, min_open=True), help="Stop cleanly after this much training time."),
    click.option("--batch-size", type=click.IntRange(min=1), default=8, show_default=True, help="Per process."),
    click.option("--num-workers", type=click.IntRange(min=0), default=0, show_default=True, help="DataLoader workers decoding images."),
    click.option("--gradient-accumulation", type=click.IntRange(min=1), default=1, show_default=True,
                 help="Micro-batches per optimizer step; --max-steps and loss.csv count optimizer steps."),
    click.option("--learning-rate", "--lr", type=float, default=1e-4, show_default=True),
    click.option("--warmup-steps", type=click.IntRange(min=0), default=0, show_default=True),
    click.option("--checkpoint-every", type=click.IntRange(min=1), default=500, show_default=True),
    click.option("--validate-every", type=click.IntRange(min=0), default=500, show_default=True, help="0: never."),
    click.option("--resume", is_flag=True, help="Continue from the newest checkpoint in the output folder."),
    click.option("--overwrite", is_flag=True, help="Delete the run already in the output folder first."),
    click.option("--mixed-precision", type=click.Choice(["no", "fp16", "bf16"]), default="no", show_default=True),
    click.option("--gradient-checkpointing", is_flag=True),
    click.option("--ema-decay", type=click.FloatRange(0, 1), default=0.999, show_default=True, help="0: keep no EMA copy."),
    click.option("--optimizer", type=click.Choice(["adamw", "adafactor"]), default="adamw", show_default=True,
                 help="adafactor: far less optimizer state (SD 1.5 size in 24 GB)."),
    click.option("--seed", type=int, default=0, show_default=True),
    click.option("--allow-pickle", is_flag=True,
                 help="Allow pickle weights (.bin/.pt/.ckpt) in the base or teacher. Only for trusted files."),
    click.option("--no-cache", is_flag=True, help="Run the frozen VAE and encoders every step instead of once (the latent cache)."),
    click.option("--cache-dir", type=click.Path(file_okay=False), help="Where the latent cache lives. Default: DATA/.pedit-cache."),
    click.option("--log-every", type=click.IntRange(min=1), default=10, show_default=True, help="Steps between loss reports."),
    click.option("-q", "--quiet", is_flag=True),
)
DATA_OPTIONS = (
    click.option("--columns", help="For a datasets source: x_A=COL,x_B=COL,p_b=COL[,p_a=COL|\"text\"]"
                 "[,direction=COL|\"text\"][,mask=COL] (default: input_image, edited_image, edit_prompt, or a pair "
                 "folder's own columns)."),
    click.option("--split", default="train", show_default=True, help="The split of a datasets source."),
)


def with_options(options):
    def apply(f):
        for option in reversed(options):
            f = option(f)
        return f
    return apply


def config_fields(loop: dict) -> dict:
    """The step-loop options as TrainConfig / DistillConfig fields (--no-cache is cache=False; -q is the console's)."""
    fields = {k: v for k, v in loop.items() if k not in ("no_cache", "quiet")}
    return {**fields, "cache": not loop["no_cache"]}


@click.command()
@click.option("--data", required=True, type=click.Path(),
              help="Pair folder (metadata.jsonl), a saved datasets folder (save_to_disk) or a hub dataset id.")
@with_options(DATA_OPTIONS)
@click.option("-o", "--output", required=True, type=click.Path(file_okay=False), help="Model folder to write.")
@click.option("--base", help="Base model: a local diffusers folder or a hub id. Default: the bundled toon base.")
@click.option("--init", type=click.Choice(["base", "scratch"]), default="base", show_default=True,
              help="U-Net weights from the base, or its config with random weights.")
@click.option("--init-from", type=click.Path(file_okay=False), help="Continue from this model folder's U-Net and projector.")
@click.option("--image-encoder", help="CLIP vision model for c_im when the base has no image_encoder/.")
@click.option("--resolution", type=click.IntRange(min=8), help="Training resolution (default: the base VAE's).")
@with_options(STEP_LOOP_OPTIONS)
def train(data, columns, split, output, base, init, init_from, image_encoder, resolution, **loop):
    """Train a Multi-Conditioned Diffusion Model on a pair folder.

    Multi-GPU: accelerate launch -m pedit train --data DIR -o DIR ...
    """
    from pedit.train.loop import TrainConfig, train as run_train

    cfg = TrainConfig(data=data, columns=columns, split=split, output=output, base=base, init=init, init_from=init_from,
                      image_encoder=image_encoder, resolution=resolution, **config_fields(loop))
    # Under `accelerate launch` every rank runs this command; only rank 0 draws progress.
    console = make_console(loop["quiet"] or int(os.environ.get("RANK", "0")) != 0)
    show_config(console, cfg)
    run_with_progress(console, "train", cfg.max_steps, lambda on_progress: run_train(cfg, progress=on_progress,
                                                                                      log=console.print))


@click.command()
@click.option("-m", "--model", "teacher", type=click.Path(file_okay=False),
              help="The trained MCDM to distil (default: the bundled toon model).")
@click.option("--data", required=True, type=click.Path(),
              help="Pair folder (metadata.jsonl) of the teacher's directions, a saved datasets folder or a hub id.")
@with_options(DATA_OPTIONS)
@click.option("-o", "--output", required=True, type=click.Path(file_okay=False), help="Student model folder to write.")
@click.option("--scale-range", default="", metavar="s_s=LO:HI,s_im=LO:HI,s_p=LO:HI",
              help="Guidance scales the student learns (default s_s=1:2.5,s_im=1:2,s_p=1:7.5; at most 15); edits "
                   "outside are refused.")
@with_options(STEP_LOOP_OPTIONS)
def distill(teacher, data, columns, split, output, scale_range, **loop):
    """Distil a trained MCDM's guidance into a student: one U-Net row per branch a step (2 for a masked edit, not 5).

    The student folder edits, evaluates, benches and exports like any model folder.
    """
    from pedit.train.distill import DistillConfig, distill as run_distill, parse_scale_range

    cfg = DistillConfig(teacher=teacher, data=data, columns=columns, split=split, output=output,
                        scale_range=parse_scale_range(scale_range), **config_fields(loop))
    console = make_console(loop["quiet"] or int(os.environ.get("RANK", "0")) != 0)
    show_config(console, cfg)
    run_with_progress(console, "distill", cfg.max_steps, lambda on_progress: run_distill(cfg, progress=on_progress,
                                                                                          log=console.print))


def run_with_progress(console, name: str, max_steps: int, run) -> None:
    """A progress bar over `run(on_progress)`'s steps (pedit.train.progress.TrainProgress), then where the model went."""
    with make_progress(console) as bar:
        task = bar.add_task(name, total=max_steps, info="")

        def on_progress(p):
            if p.event == "step":
                bar.update(task, completed=p.step, info=f"loss {p.loss:.4f}  {p.steps_per_s:.2f} it/s")
            elif p.event == "resumed":
                bar.update(task, completed=p.step)
                console.print(f"Resumed from {p.path}")
            elif p.event == "validation":
                console.print(f"step {p.step}: validation grid {p.path}")
            elif p.event == "checkpoint":
                console.print(f"[dim]step {p.step}: checkpoint {p.path}[/dim]")
            elif p.event == "dataset":  # a datasets source written to its pair folder: step = rows so far
                bar.update(task, info=f"dataset {p.step}/{p.max_steps} rows")
            elif p.event == "cache":  # building the latent cache: step = pairs encoded so far
                bar.update(task, info=f"latent cache {p.step}/{p.max_steps} pairs")

        out = run(on_progress)
    console.print(f"Model written to {out}")
