"""The `pedit` command line: parse options, build one config, call one library function, show it.

Heavy imports (torch, diffusers) happen inside command bodies so `pedit --help` stays fast.
Errors: any `PeditError` becomes `Error: <message>` on stderr and exit 1, in one place
(`PeditGroup.invoke`); bad flags are click usage errors (exit 2); `PEDIT_DEBUG=1` shows tracebacks.
Progress bars and tables are drawn with rich on stderr, so stdout stays machine-readable.
"""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path

import click

from pedit import __version__
from pedit.errors import PeditError

BACKENDS = ("torch", "compile", "onnx", "trt")  # pedit.export.backends.BACKENDS (that module is not imported at start-up)


class PeditGroup(click.Group):
    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except PeditError as e:
            if os.environ.get("PEDIT_DEBUG"):
                raise
            raise click.ClickException(str(e)) from None
        except (click.exceptions.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise
        except Exception as e:
            # Anything else is a failure pedit did not foresee: still one line, never a traceback.
            if os.environ.get("PEDIT_DEBUG"):
                raise
            raise click.ClickException(
                f"unexpected {type(e).__name__}: {e} (run again with PEDIT_DEBUG=1 for the traceback)"
            ) from None


def _console(quiet: bool = False):
    from rich.console import Console

    return Console(stderr=True, quiet=quiet, highlight=False)


def _progress(console, transient: bool = False):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"), TimeRemainingColumn(), console=console, transient=transient,
    )


def _show_config(console, cfg) -> None:
    from dataclasses import asdict

    from rich.markup import escape

    items = ", ".join(f"{k}={v}" for k, v in asdict(cfg).items())
    console.print(f"[dim]{type(cfg).__name__}({escape(items)})[/dim]")  # values may hold "[...]" (prompts, paths)


@click.group(cls=PeditGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="pedit")
def cli():
    """Feature-preserving portrait editing with a Multi-Conditioned Diffusion Model.

    \b
    pedit edit photo.jpg --direction royal     edit a portrait (bundled toon model by default)
    pedit train --data pairs/ -o my-model      train an MCDM on a pair folder
    pedit gen-pairs --source toon -o pairs/    make a pair folder
    pedit eval --pairs eval-pairs/             measure a model against ground truth
    pedit sticker-pack selfie.jpg -o out/      four expression stickers, app-ready folders
    pedit export -o engines/                   ONNX (and --trt TensorRT) engines; pedit bench times them
    """


@cli.command()
@click.option("--file", "directions_file", type=click.Path(dir_okay=False), help="A TOML file of your own directions.")
@click.option("-m", "--model", type=click.Path(), help="List the directions this model folder was trained on.")
def directions(directions_file, model):
    """List the built-in editing directions (and those of a file or model)."""
    import json

    from rich.table import Table

    from pedit.data.directions import all_directions, model_directions

    if model:
        meta_file = Path(model) / "pedit.json"
        if not meta_file.exists():
            raise PeditError(f"{model} is not a model folder (no pedit.json).")
        try:
            meta = json.loads(meta_file.read_text())
        except ValueError as e:  # a hand-edited or corrupt pedit.json
            raise PeditError(f"{meta_file} is not valid JSON ({e}).") from None
        if not isinstance(meta, dict) or "directions" not in meta:
            raise PeditError(f"{meta_file} does not list the model's directions.")
        found = model_directions(meta, Path(model))
    else:
        found = all_directions(directions_file)
    table = Table("name", "task", "p_a (source)", "p_b (target)")
    for d in found.values():
        table.add_row(d.name, d.task, d.p_a, d.p_b)
    if sys.stdout.isatty():
        from rich.console import Console

        Console().print(table)
    else:
        for d in found.values():
            click.echo(f"{d.name}\t{d.task}\t{d.p_a}\t{d.p_b}")


@cli.command("gen-pairs")
@click.option("-o", "--output", required=True, type=click.Path(file_okay=False), help="Pair folder to write (resumable).")
@click.option("-n", "n", required=True, type=click.IntRange(min=1), help="Number of pairs in the whole set.")
@click.option("--source", type=click.Choice(["toon", "sd"]), default="toon", show_default=True,
              help="toon: the procedural toon world, with ground truth. sd: Stable Diffusion side by side (paper §3.2).")
@click.option("--directions", "direction_list", default="all", show_default=True,
              help="Comma-separated directions (all: every built-in one; sd: the costumes).")
@click.option("--directions-file", type=click.Path(dir_okay=False), help="sd: a TOML file of your own directions.")
@click.option("--resolution", type=click.IntRange(min=32), help="Side of each half in pixels [toon: 128, sd: 512].")
@click.option("--seed", type=int, default=0, show_default=True, help="Pair i's randomness depends on SEED and i only.")
@click.option("--shard", help="I/N: write indices i with i % N == I [default 0/1, or the rank under accelerate launch].")
@click.option("--exact", is_flag=True, help="toon: exact pairs (evaluation sets); default: imperfect like generated ones.")
@click.option("--max-shift", type=click.IntRange(min=0), default=2, show_default=True, help="toon imperfection: pixels of shift in x_B.")
@click.option("--max-face-width", type=click.FloatRange(0, 0.5), default=0.06, show_default=True, help="toon imperfection: relative face-width change.")
@click.option("--max-color-drift", type=click.IntRange(0, 64), default=6, show_default=True, help="toon imperfection: colour offset per channel.")
@click.option("--base", help="sd: Stable Diffusion base, a local diffusers folder or a hub id.")
@click.option("--controlnet", default="lllyasviel/sd-controlnet-openpose", show_default=True, help="sd: OpenPose ControlNet.")
@click.option("--pose", default="builtin", show_default=True, help="sd: builtin, a keypoints .json, or a folder of photos.")
@click.option("--pose-annotators", type=click.Path(file_okay=False), help="sd: folder with controlnet_aux's OpenPose weights.")
@click.option("--no-pose", is_flag=True, help="sd: no pose condition (the paper's Figure 3b ablation).")
@click.option("--identity-dir", type=click.Path(), help="sd: real portraits; identities cycle over the pairs.")
@click.option("--no-identity", is_flag=True, help="sd: no identity condition (the paper's Figure 3c ablation).")
@click.option("--ip-adapter", default="/".join(["h94/IP-Adapter", "models", "ip-adapter-full-face_sd15.safetensors"]),
              show_default=True, help="sd: IP-Adapter as REPO_OR_FOLDER/SUBFOLDER/WEIGHT_FILE (image encoder in SUBFOLDER/image_encoder).")
@click.option("--ip-adapter-scale", type=click.FloatRange(min=0), default=0.6, show_default=True)
@click.option("--steps", type=click.IntRange(min=1), default=30, show_default=True, help="sd: denoising steps (DDIM).")
@click.option("--batch-size", type=click.IntRange(min=1), default=1, show_default=True, help="sd: pairs per U-Net call.")
@click.option("--guidance-scale", type=click.FloatRange(min=0), default=7.5, show_default=True, help="sd: CFG of each Eq. 2 term.")
@click.option("--s-d", type=click.FloatRange(min=0), default=0.3, show_default=True, help="sd: Eq. 2 strength of the shared prompt p.")
@click.option("--s-a", type=click.FloatRange(min=0), default=0.7, show_default=True, help="sd: Eq. 2 strength of p_a (left half).")
@click.option("--s-b", type=click.FloatRange(min=0), default=0.7, show_default=True, help="sd: Eq. 2 strength of p_b (right half).")
@click.option("--controlnet-scale", type=click.FloatRange(min=0), default=1.0, show_default=True)
@click.option("--min-score", type=click.FloatRange(0, 1), help="sd: drop pairs whose layout score is lower.")
@click.option("--clip", "clip_model", help="sd: CLIP model for the directional score (InstructPix2Pix's filter).")
@click.option("--min-clip", type=float, help="sd: drop pairs whose CLIP directional similarity is lower (needs --clip).")
@click.option("--max-identity-distance", type=click.FloatRange(min=0),
              help="sd: drop pairs whose identity distance (recorded; < 0.6 = same person) is higher, or lacks a face.")
@click.option("--contact-sheet", type=click.IntRange(min=0), default=8, show_default=True, help="sd: pairs on contact_sheet.png.")
@click.option("--precision", type=click.Choice(["auto", "fp32", "fp16", "bf16"]), default="auto", show_default=True)
@click.option("--device", help="sd: cpu, cuda, cuda:1 ... (default: cuda when available; the local rank under accelerate).")
@click.option("--allow-pickle", is_flag=True, help="sd: allow pickle weights (.bin). Only for trusted files.")
@click.option("-q", "--quiet", is_flag=True)
def gen_pairs(output, n, source, direction_list, directions_file, resolution, seed, shard, exact, max_shift,
              max_face_width, max_color_drift, quiet, **sd):
    """Write a pair folder (metadata.jsonl + PNGs) for training or evaluation."""
    from pedit.data.directions import BUILTIN
    from pedit.data.gen_pairs import GenPairsConfig, generate_pairs, run_shard

    if shard is not None:
        try:
            shard = tuple(int(v) for v in shard.split("/"))
        except ValueError:
            raise click.BadParameter("expected I/N, e.g. 0/4", param_hint="--shard") from None
        if len(shard) != 2:
            raise click.BadParameter("expected I/N, e.g. 0/4", param_hint="--shard")
    shard_i, shard_n = run_shard(shard)
    console = _console(quiet or int(os.environ.get("RANK", "0")) != 0)
    if source == "sd":
        return _gen_sd_pairs(console, output, n, direction_list, directions_file, resolution, seed, (shard_i, shard_n), sd)
    names = tuple(BUILTIN) if direction_list == "all" else tuple(s.strip() for s in direction_list.split(",") if s.strip())
    cfg = GenPairsConfig(output, n, source, names, resolution or 128, seed, (shard_i, shard_n), exact, max_shift,
                         max_face_width, max_color_drift)
    _show_config(console, cfg)
    with _progress(console) as bar:
        task = bar.add_task("pairs", total=None, info="")
        generate_pairs(cfg, progress=lambda done, total: bar.update(task, completed=done, total=total))
    console.print(f"Wrote pairs to {output}", soft_wrap=True)  # a path must survive copy-paste: never wrapped


def _read_photo_rgb(path):
    """A photo as (H, W, 3) uint8, decoded by pedit.photos (EXIF turn, CMYK, limits): gen-pairs' reader."""
    import numpy as np

    from pedit.photos.photo import load_photo

    return np.asarray(load_photo(path).rgb)


def _gen_sd_pairs(console, output, n, direction_list, directions_file, resolution, seed, shard, sd):
    """`gen-pairs --source sd`: build the config, run it with the project's sampler, draw pairs/s."""
    import time

    from rich.markup import escape

    from pedit.data.sd_pairs import SDPairsConfig, generate_sd_pairs

    if not sd["base"]:
        raise click.UsageError("--source sd needs --base (a Stable Diffusion folder or hub id).")
    parts = sd["ip_adapter"].rsplit("/", 2)
    if len(parts) != 3 or not all(parts):
        raise click.BadParameter("expected REPO_OR_FOLDER/SUBFOLDER/WEIGHT_FILE", param_hint="--ip-adapter")
    names = ("flower", "sheep", "santa", "royal") if direction_list == "all" else tuple(
        s.strip() for s in direction_list.split(",") if s.strip())
    device = sd["device"]
    if device is None and "LOCAL_RANK" in os.environ:
        import torch

        if torch.cuda.is_available():
            device = f"cuda:{int(os.environ['LOCAL_RANK'])}"
    cfg = SDPairsConfig(
        output=output, n=n, base=sd["base"], controlnet=None if sd["no_pose"] else sd["controlnet"], directions=names,
        directions_file=directions_file, resolution=resolution or 512, steps=sd["steps"], seed=seed, shard=shard,
        batch_size=sd["batch_size"], s_d=sd["s_d"], s_a=sd["s_a"], s_b=sd["s_b"], guidance_scale=sd["guidance_scale"],
        pose=sd["pose"], pose_annotators=sd["pose_annotators"], use_pose=not sd["no_pose"],
        controlnet_scale=sd["controlnet_scale"], identity_dir=sd["identity_dir"], use_identity=not sd["no_identity"],
        ip_adapter=(*parts, "image_encoder"), ip_adapter_scale=sd["ip_adapter_scale"], min_score=sd["min_score"],
        min_clip=sd["min_clip"], max_identity_distance=sd["max_identity_distance"], clip=sd["clip_model"], contact_sheet=sd["contact_sheet"], device=device,
        precision=sd["precision"], allow_pickle=sd["allow_pickle"],
    )
    _show_config(console, cfg)
    from pedit.edit.sampler import make_scheduler, sample

    with _progress(console) as bar:
        task = bar.add_task("pairs", total=None, info="")
        started = {}

        def on_progress(done, total, made):
            if made == 0:
                started["t"] = time.perf_counter()
            rate = made / max(time.perf_counter() - started.get("t", time.perf_counter()), 1e-9)
            bar.update(task, completed=done, total=total, info=f"{rate:.2f} pairs/s" if made else "")

        out = generate_sd_pairs(cfg, sample, make_scheduler, on_progress, log=lambda m: console.print(f"[dim]{escape(m)}[/dim]"),
                                read_photo=_read_photo_rgb)
    console.print(f"Wrote pairs to {out} (contact sheet: {out / 'contact_sheet.png'})", soft_wrap=True)


@cli.command()
@click.option("--data", required=True, type=click.Path(), help="Pair folder (metadata.jsonl).")
@click.option("-o", "--output", required=True, type=click.Path(file_okay=False), help="Model folder to write.")
@click.option("--base", help="Base model: a local diffusers folder or a hub id. Default: the bundled toon base.")
@click.option("--init", type=click.Choice(["base", "scratch"]), default="base", show_default=True,
              help="U-Net weights from the base, or its config with random weights.")
@click.option("--init-from", type=click.Path(file_okay=False), help="Continue from this model folder's U-Net and projector.")
@click.option("--image-encoder", help="CLIP vision model for c_im when the base has no image_encoder/.")
@click.option("--resolution", type=click.IntRange(min=8), help="Training resolution (default: the base VAE's).")
@click.option("--max-steps", type=click.IntRange(min=1), default=1000, show_default=True)
@click.option("--max-minutes", type=click.FloatRange(min=0, min_open=True), help="Stop cleanly after this much training time.")
@click.option("--batch-size", type=click.IntRange(min=1), default=8, show_default=True, help="Per process.")
@click.option("--num-workers", type=click.IntRange(min=0), default=0, show_default=True, help="DataLoader workers decoding images.")
@click.option("--gradient-accumulation", type=click.IntRange(min=1), default=1, show_default=True,
              help="Micro-batches per optimizer step; --max-steps and loss.csv count optimizer steps.")
@click.option("--learning-rate", "--lr", type=float, default=1e-4, show_default=True)
@click.option("--warmup-steps", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--checkpoint-every", type=click.IntRange(min=1), default=500, show_default=True)
@click.option("--validate-every", type=click.IntRange(min=0), default=500, show_default=True, help="0: never.")
@click.option("--resume", is_flag=True, help="Continue from the newest checkpoint in the output folder.")
@click.option("--overwrite", is_flag=True, help="Delete the training run already in the output folder first.")
@click.option("--mixed-precision", type=click.Choice(["no", "fp16", "bf16"]), default="no", show_default=True)
@click.option("--gradient-checkpointing", is_flag=True)
@click.option("--ema-decay", type=click.FloatRange(0, 1), default=0.999, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--allow-pickle", is_flag=True, help="Allow pickle weights (.bin/.pt/.ckpt) in the base. Only for trusted files.")
@click.option("--no-cache", is_flag=True, help="Run the frozen VAE and encoders every step instead of once (the latent cache).")
@click.option("--cache-dir", type=click.Path(file_okay=False), help="Where the latent cache lives. Default: DATA/.pedit-cache.")
@click.option("--log-every", type=click.IntRange(min=1), default=10, show_default=True, help="Steps between loss reports.")
@click.option("-q", "--quiet", is_flag=True)
def train(data, output, base, init, init_from, image_encoder, resolution, max_steps, max_minutes, batch_size, num_workers, gradient_accumulation,
          learning_rate, warmup_steps, checkpoint_every, validate_every, resume, overwrite, mixed_precision,
          gradient_checkpointing, ema_decay, seed, allow_pickle, no_cache, cache_dir, log_every, quiet):
    """Train a Multi-Conditioned Diffusion Model on a pair folder.

    Multi-GPU: accelerate launch -m pedit train --data DIR -o DIR ...
    """
    from pedit.train.loop import TrainConfig, train as run_train

    cfg = TrainConfig(
        data=data, output=output, base=base, init=init, init_from=init_from, image_encoder=image_encoder, resolution=resolution,
        max_steps=max_steps, max_minutes=max_minutes, batch_size=batch_size, num_workers=num_workers, gradient_accumulation=gradient_accumulation,
        learning_rate=learning_rate, warmup_steps=warmup_steps, checkpoint_every=checkpoint_every,
        validate_every=validate_every, resume=resume, mixed_precision=mixed_precision,
        gradient_checkpointing=gradient_checkpointing, ema_decay=ema_decay, seed=seed, allow_pickle=allow_pickle,
        overwrite=overwrite, cache=not no_cache, cache_dir=cache_dir, log_every=log_every,
    )
    # Under `accelerate launch` every rank runs this command; only rank 0 draws (CONVENTIONS.md §8).
    console = _console(quiet or int(os.environ.get("RANK", "0")) != 0)
    _show_config(console, cfg)
    with _progress(console) as bar:
        task = bar.add_task("train", total=max_steps, info="")

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
            elif p.event == "cache":  # building the latent cache: step = pairs encoded so far
                bar.update(task, info=f"latent cache {p.step}/{p.max_steps} pairs")

        out = run_train(cfg, progress=on_progress, log=console.print)
    console.print(f"Model written to {out}")


@cli.command()
@click.argument("inputs", nargs=-1, required=True)
@click.option("-d", "--direction", required=True, help="Editing direction (see `pedit directions`).")
@click.option("-m", "--model", type=click.Path(), help="Model folder from `pedit train` (default: the bundled toon model).")
@click.option("-o", "--output", type=click.Path(), help="Output file, or folder for several inputs. Default: next to the input.")
@click.option("--steps", type=click.IntRange(min=1), default=20, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--scheduler", type=click.Choice(["ddim", "dpm", "euler"]), default="ddim", show_default=True)
@click.option("--s-s", type=float, default=1.5, show_default=True, help="Guidance scale of the spatial condition c_s.")
@click.option("--s-im", type=float, default=1.0, show_default=True, help="Guidance scale of the image condition c_im.")
@click.option("--s-p", type=float, default=4.0, show_default=True, help="Guidance scale of the text condition c_p.")
@click.option("--no-mask", is_flag=True, help="Plain MCDM sampling, no editing mask (the paper's 'w/o mask').")
@click.option("--mask-noises", type=click.IntRange(min=1),
              help="Noise draws for the editing mask (default: the model's pedit.json, else 10).")
@click.option("--mask", "mask_file", type=click.Path(dir_okay=False),
              help="Your own mask: greyscale image, any size (stretched to the photo), white = may change.")
@click.option("--mask-mode", type=click.Choice(["replace", "intersect", "union"]), default="replace", show_default=True,
              help="How --mask combines with the model's own mask.")
@click.option("--save-mask", is_flag=True, help="Also write the mask and a mask overlay PNG.")
@click.option("--compare", is_flag=True, help="Also write input | mask overlay | output side by side.")
@click.option("--face", "--face-index", "face_index", type=click.IntRange(min=0),
              help="Edit face N (0 = largest) instead of the largest.")
@click.option("--require-face", is_flag=True, help="Fail when no face is found instead of editing the centred square.")
@click.option("--margin", type=click.FloatRange(0, 5), default=1.0, show_default=True, help="Crop margin around the face, in face widths.")
@click.option("--detector", type=click.Choice(["default", "haar", "hog", "cnn"]), default="default", show_default=True,
              help="Face detector (default: dlib HOG with the face model installed, else Haar; cnn is slow on a CPU).")
@click.option("--no-identity-check", is_flag=True, help="Skip the identity distance between input and output faces.")
@click.option("--overwrite", is_flag=True, help="Replace existing output files.")
@click.option("--max-pixels", type=click.IntRange(min=1), default=100_000_000, show_default=True, help="Refuse larger images (decompression bombs).")
@click.option("--allow-pickle", is_flag=True, help="Allow pickle weights (.bin/.pt/.ckpt) in the model folder. Only for trusted files.")
@click.option("--device", help="cpu, cuda, cuda:1 ... (default: cuda when available).")
@click.option("--backend", type=click.Choice(BACKENDS), default="torch", show_default=True,
              help="What runs the U-Net: eager torch, torch.compile, ONNX Runtime or TensorRT.")
@click.option("--precision", type=click.Choice(["fp32", "fp16", "bf16"]), help="Default: fp16 on CUDA, fp32 on the CPU.")
@click.option("--engines", type=click.Path(file_okay=False), help="`pedit export` folder for --backend onnx/trt "
              "(default: exported once into ~/.cache/pedit).")
@click.option("--mask-batch", type=click.IntRange(min=0), default=0, show_default=True,
              help="Noise draws per U-Net call of the editing mask (bounds memory; same mask). 0: all in one call.")
@click.option("--no-cache", is_flag=True, help="On the CPU, load the model itself, not its TorchScript cache (same result, slower start).")
@click.option("-q", "--quiet", is_flag=True)
def edit(inputs, direction, model, output, steps, seed, scheduler, s_s, s_im, s_p, no_mask, mask_noises, mask_file,
         mask_mode, save_mask, compare, face_index, require_face, margin, detector, no_identity_check, overwrite,
         max_pixels, allow_pickle, device, backend, precision, engines, mask_batch, no_cache, quiet):
    """Edit portraits toward a direction, keeping everything outside the edit untouched."""
    # OpenMP threads that spin while they wait (libgomp's default) made the toon edit 3-8x slower on a
    # 2-core machine busy with other work; sleeping waits did not (docs/deployment.md, "CPU cold start").
    # Takes effect because torch is not loaded yet; a value the user set wins.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    from pedit.faces import face_model_available
    from pedit.photos.edit_files import EditFilesConfig, edit_files

    cfg = EditFilesConfig(
        inputs=tuple(inputs), direction=direction, model=model, output=output, steps=steps, seed=seed,
        scheduler=scheduler, s_s=s_s, s_im=s_im, s_p=s_p, use_mask=not no_mask, mask_noises=mask_noises,
        save_mask=save_mask, compare=compare, face_index=face_index, require_face=require_face, margin=margin,
        overwrite=overwrite, max_pixels=max_pixels, allow_pickle=allow_pickle, device=device, detector=detector,
        identity_check=not no_identity_check, backend=backend, precision=precision, engines=engines, mask_batch=mask_batch,
        cache=not no_cache, mask=mask_file, mask_mode=mask_mode,
    )
    check_identity = cfg.identity_check and face_model_available()  # else edit_files says why it is skipped
    console = _console(quiet)
    with contextlib.ExitStack() as stack:
        items = edit_files(cfg, _edit_events(console, stack, check_identity))
    failed = [i for i in items if i.error]
    if len(items) > 1:
        _edit_summary(console, items, check_identity)
    if failed:
        if len(items) == 1:
            raise PeditError(failed[0].error)
        raise PeditError(f"{len(failed)} of {len(items)} inputs failed (see above).")


def _edit_events(console, stack: contextlib.ExitStack, check_identity: bool):
    """What `pedit edit` shows of edit_files' events: the bundled-model note, a step bar, one line per input."""
    from rich.markup import escape

    live = {}  # the step bar, opened at the first step: an early error prints nothing but itself

    def on_event(kind, payload):
        if kind == "model":
            if payload.is_bundled:
                # Said even with --quiet: on a real photo it edits like the cartoon model it is.
                click.echo("Using the bundled toon model (a cartoon-world demo); pass -m MODEL_FOLDER to use your own.",
                           err=True)
        elif kind == "steps":
            if not live:
                live["bar"] = stack.enter_context(_progress(console, transient=True))
                live["task"] = live["bar"].add_task("edit", total=payload[1], info="")
            live["bar"].update(live["task"], completed=payload[0], total=payload[1])
        elif kind == "note":
            console.print(escape(payload))
        elif kind == "item":
            # File names and messages are shown verbatim: escaped, or rich reads "[draft]" as markup.
            if payload.error:
                console.print(f"[red]failed[/red] {escape(str(payload.input))}: {escape(payload.error)}")
                if payload.traceback and os.environ.get("PEDIT_DEBUG"):
                    click.echo(payload.traceback, err=True)
            else:
                identity = f", identity {_identity_cell(payload)}" if check_identity else ""
                console.print(f"{escape(str(payload.input))} → {escape(str(payload.output))} "
                              f"({payload.seconds:.1f} s{identity})")
                click.echo(str(payload.output))

    return on_event


def _edit_summary(console, items, check_identity: bool) -> None:
    """The table after a batch: each input's result, seconds (and identity), then the counts."""
    from rich.markup import escape
    from rich.table import Table

    table = Table("input", "result", "seconds", *(["identity distance"] if check_identity else []))
    for i in items:
        table.add_row(escape(str(i.input)), f"[red]{escape(i.error)}[/red]" if i.error else escape(str(i.output)),
                      f"{i.seconds:.1f}", *([_identity_cell(i)] if check_identity else []))
    console.print(table)
    failed = sum(1 for i in items if i.error)
    console.print(f"{len(items) - failed} edited, {failed} failed")


def _identity_cell(item) -> str:
    """'0.23 (same person)', 'no face in the output', ..., or '–' for a failed item."""
    if item.error or item.identity is None:
        return "–"
    if item.identity.distance is None:
        return item.identity.verdict
    return f"{item.identity.distance:.2f} ({item.identity.verdict})"


@cli.command("eval")
@click.argument("more_photos", nargs=-1, metavar="[PHOTOS]...")
@click.option("-m", "--model", type=click.Path(), help="Model folder (default: the bundled toon model).")
@click.option("--pairs", type=click.Path(), help="Pair folder with exact targets (and masks).")
@click.option("--photos", multiple=True, type=click.Path(),
              help="Real photos (files or folders; more may follow as arguments): identity distance, pixels kept.")
@click.option("-d", "--directions", "direction_list", help="With --photos: comma-separated directions to edit toward.")
@click.option("-o", "--output", type=click.Path(file_okay=False), help="Report folder: report.json, report.md, grid.png.")
@click.option("--methods", default=",".join(["ours", "ours-no-mask", "no-c_s", "no-c_im", "sdedit-0.5", "sdedit-0.8", "diffedit"]),
              show_default=True, help="Comma-separated methods to score.")
@click.option("--steps", type=click.IntRange(min=1), default=20, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
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
@click.option("--mask-batch", type=click.IntRange(min=0, max=1024),
              help="Noise draws per U-Net call of the editing mask (bounds memory; same mask). 0: all in one call. "
                   "Default: the model folder's setting.")
@click.option("-q", "--quiet", is_flag=True)
@click.pass_context
def eval_cmd(ctx, more_photos, model, pairs, photos, direction_list, output, methods, steps, seed, batch_size, limit,
             grid_pairs, detector, overwrite, device, allow_pickle, precision, backend, engines, mask_batch, quiet):
    """Measure a model: against ground truth (--pairs), or on real photos (--photos, no ground truth).

    \b
    pedit eval --pairs eval-pairs/ -o report/              SSIM, PSNR in/outside the true mask, mask IoU
    pedit eval --photos a.jpg b.jpg -d royal,angry -o r/   identity distance, pixels kept, mask area
    """
    photos = (*photos, *more_photos)
    if bool(pairs) == bool(photos):
        raise click.UsageError("Pass either --pairs DIR (toon ground truth) or --photos PATH... (real photos).")
    # A flag that does not apply to the chosen mode is an error, never silently ignored.
    given = {name for name in ("methods", "batch_size", "limit", "grid_pairs", "detector", "engines", "mask_batch")
             if ctx.get_parameter_source(name) != click.core.ParameterSource.DEFAULT}
    if photos:
        if not_here := given & {"methods", "batch_size", "limit", "grid_pairs", "engines", "mask_batch"}:
            flags = ", ".join(_flag(ctx, name) for name in sorted(not_here))
            raise click.UsageError(f"{flags} goes with --pairs; --photos edits every photo toward each -d direction.")
        _eval_photos(photos, direction_list, model, output, steps, seed, detector, overwrite, device, allow_pickle,
                     precision, backend, quiet)
        return
    if direction_list:
        raise click.UsageError("-d/--directions goes with --photos; with --pairs each pair names its direction.")
    if "detector" in given:
        raise click.UsageError("--detector goes with --photos; --pairs scores each pair image whole, without a face crop.")
    from pedit.eval.ground_truth import EvalConfig, evaluate, markdown_report

    cfg = EvalConfig(pairs=pairs, model=model, output=output, methods=tuple(m.strip() for m in methods.split(",") if m.strip()),
                     steps=steps, seed=seed, batch_size=batch_size, limit=limit, grid_pairs=grid_pairs, device=device,
                     allow_pickle=allow_pickle, precision=precision, backend=backend, overwrite=overwrite,
                     engines=engines, mask_batch=mask_batch)
    console = _console(quiet)
    _show_config(console, cfg)
    with _progress(console) as bar:
        tasks = {}

        def on_progress(method, done, total):
            if method not in tasks:
                tasks[method] = bar.add_task(method, total=total, info="")
            bar.update(tasks[method], completed=done)

        report = evaluate(cfg, on_progress)
    click.echo(markdown_report(report))


def _flag(ctx, name: str) -> str:
    """The command-line spelling of parameter `name` (--grid for grid_pairs)."""
    param = next(p for p in ctx.command.params if p.name == name)
    return max(param.opts, key=len)


def _eval_photos(photos, direction_list, model, output, steps, seed, detector, overwrite, device, allow_pickle, precision,
                 backend, quiet):
    from rich.markup import escape

    from pedit.eval.photos import PhotoEvalConfig, evaluate_photos, markdown_photo_report

    if not direction_list:
        raise click.UsageError("--photos needs -d/--directions, e.g. -d royal,laughing (see `pedit directions`).")
    cfg = PhotoEvalConfig(photos=tuple(photos), directions=tuple(d.strip() for d in direction_list.split(",") if d.strip()),
                          model=model, output=output, steps=steps, seed=seed, detector=detector, device=device,
                          allow_pickle=allow_pickle, overwrite=overwrite, precision=precision, backend=backend)
    console = _console(quiet)
    _show_config(console, cfg)
    with _progress(console) as bar:
        task = bar.add_task("photos x directions", total=None, info="")
        report = evaluate_photos(cfg, lambda done, total: bar.update(task, completed=done, total=total),
                                 note=lambda text: console.print(escape(text)))
    click.echo(markdown_photo_report(report))


@cli.command("export")
@click.option("-m", "--model", type=click.Path(), help="Model folder (default: the bundled toon model).")
@click.option("-o", "--output", type=click.Path(), default="engines", show_default=True, help="Engines folder.")
@click.option("--trt", is_flag=True, help="Also build TensorRT engines (fp16; needs pedit[trt] and an NVIDIA GPU).")
@click.option("--force", is_flag=True, help="Redo every stage, even those whose inputs are unchanged.")
@click.option("--networks", default=",".join(["unet", "image_projector", "text_encoder", "vae_encoder", "vae_decoder"]),
              show_default=True, help="Comma-separated networks to export.")
@click.option("--mask-noises", type=click.IntRange(min=1), default=10, show_default=True,
              help="Sizes the U-Net's mask profile (5 rows x N noise draws).")
@click.option("--allow-pickle", is_flag=True, help="Allow pickle weights in the model folder. Only for trusted files.")
@click.option("-q", "--quiet", is_flag=True)
def export_cmd(model, output, trt, force, networks, mask_noises, allow_pickle, quiet):
    """Export a model's networks to ONNX (parity-checked against torch) and TensorRT engines."""
    from rich.markup import escape

    from pedit.export.pipeline import ExportConfig, export_model

    cfg = ExportConfig(model=model, output=output, trt=trt, force=force, n_noise=mask_noises, allow_pickle=allow_pickle,
                       networks=tuple(n.strip() for n in networks.split(",") if n.strip()))
    console = _console(quiet)
    _show_config(console, cfg)
    export_model(cfg, log=lambda msg: console.print(escape(msg)))
    console.print(f"Engines and manifest.json in {output}")
    click.echo(str(Path(output) / "manifest.json"))


@cli.command()
@click.option("-m", "--model", type=click.Path(), help="Model folder (default: the bundled toon model).")
@click.option("--arch", type=click.Choice(["sd15"]), help="Instead of -m: an MCDM of Stable Diffusion 1.5 size with random weights.")
@click.option("--backend", "backends", default="torch", show_default=True,
              help=f"Comma-separated backends to time: {', '.join(BACKENDS)}.")
@click.option("--steps", type=click.IntRange(min=1), default=20, show_default=True)
@click.option("--repeats", type=click.IntRange(min=1), default=5, show_default=True, help="Timed edits; medians are reported.")
@click.option("--warmup", type=click.IntRange(min=0), default=1, show_default=True)
@click.option("--vs", "vs", type=click.Choice(["ip2p"]), help="Also time diffusers' InstructPix2Pix pipeline in this process.")
@click.option("--resolution", type=click.IntRange(min=64), help="--arch sd15 only (default 512).")
@click.option("--device", help="cpu, cuda, cuda:1 ... (default: cuda when available).")
@click.option("--precision", type=click.Choice(["fp32", "fp16", "bf16"]), help="Default: fp16 on CUDA, fp32 on the CPU.")
@click.option("--no-mask", is_flag=True, help="Time the edit without the editing mask.")
@click.option("--mask-batch", type=click.IntRange(min=0), default=0, show_default=True, help="Noise draws per mask call.")
@click.option("--engines", type=click.Path(file_okay=False), help="`pedit export` folder for onnx/trt.")
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="Also write the JSON report to this file.")
@click.option("--overwrite", is_flag=True, help="Replace the -o file if it exists.")
@click.option("-q", "--quiet", is_flag=True)
def bench(model, arch, backends, steps, repeats, warmup, vs, resolution, device, precision, no_mask, mask_batch, engines,
          output, overwrite, quiet):
    """Time one edit stage by stage (load, encode, mask, steps, decode) per backend; JSON on stdout, a table on stderr."""
    import json

    from rich.markup import escape
    from rich.table import Table

    from pedit.export.bench import TABLE_HEAD, BenchConfig, run_bench, table_rows

    cfg = BenchConfig(model=model, arch=arch or "model", backends=tuple(b.strip() for b in backends.split(",") if b.strip()),
                      steps=steps, repeats=repeats, warmup=warmup, vs_ip2p=vs == "ip2p", resolution=resolution,
                      device=device, precision=precision, use_mask=not no_mask, mask_batch=mask_batch, engines=engines,
                      output=output, overwrite=overwrite)
    console = _console(quiet)
    _show_config(console, cfg)
    report = run_bench(cfg, log=lambda msg: console.print(f"[dim]{escape(msg)}[/dim]"))
    table = Table(*TABLE_HEAD, title=f"{report['model']} on {report['device']}, {report['precision']}, "
                                     f"{report['resolution']} px, {steps} steps: medians of {repeats}, ms")
    for row in table_rows(report):
        table.add_row(*(escape(c) for c in row))
    console.print(table)
    console.print(f"U-Net: {report['unet_flops_per_step'] / 1e12:.4f} TFLOP per 5-row step")
    click.echo(json.dumps(report, indent=2))


@cli.command("sticker-pack")
@click.argument("selfie", type=click.Path(dir_okay=True))
@click.option("-o", "--output", required=True, type=click.Path(), help="Pack folder to write (stickers/, whatsapp/, telegram/, ...).")
@click.option("-m", "--model", type=click.Path(), help="Expression MCDM folder (default: the bundled toon model).")
@click.option("--base", help="Stable Diffusion base for DreamBooth and the cartoon (a local diffusers folder or a hub id).")
@click.option("--expressions", default="angry,shocked,laughing,crying", show_default=True, help="Comma-separated directions, one sticker each.")
@click.option("--style", help="Cartoon style prompt ({subject} marks the subject; default: a flat sticker cartoon).")
@click.option("--candidates", type=click.IntRange(min=1), default=4, show_default=True, help="Cartoon portraits to draw.")
@click.option("--pick", type=click.IntRange(min=0), help="Keep cartoon candidate N (0-based) instead of the best-scored.")
@click.option("--skip-cartoonize", is_flag=True, help="The selfie is already a cartoon: no DreamBooth, no cartoon stage.")
@click.option("--require-face", is_flag=True, help="Fail when no face is found instead of using the centred square.")
@click.option("--detector", type=click.Choice(["default", "haar", "hog", "cnn"]), default="default", show_default=True,
              help="Face detector that places the crop, as in `pedit edit`.")
@click.option("--overwrite", is_flag=True, help="Replace a previous sticker pack in -o (never a folder holding other files).")
@click.option("--steps", type=click.IntRange(min=1), default=20, show_default=True, help="Expression edit steps.")
@click.option("--cartoon-steps", type=click.IntRange(min=1), default=30, show_default=True)
@click.option("--train-steps", type=click.IntRange(min=1), default=400, show_default=True, help="DreamBooth LoRA steps.")
@click.option("--lora-rank", type=click.IntRange(min=1), default=4, show_default=True)
@click.option("--views", type=click.IntRange(min=1), default=16, show_default=True, help="Augmented views of the selfie.")
@click.option("--prior-preservation", is_flag=True, help="DreamBooth's class-prior loss (draws class images first).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--name", default="pedit stickers", show_default=True, help="The pack's name in the apps.")
@click.option("--cache-dir", type=click.Path(file_okay=False), help="LoRA cache (default: $PEDIT_CACHE or ~/.cache/pedit).")
@click.option("--max-pixels", type=click.IntRange(min=1), default=100_000_000, show_default=True)
@click.option("--allow-pickle", is_flag=True, help="Allow pickle weights in the model folders. Only for trusted files.")
@click.option("--device", help="cpu, cuda, cuda:1 ... (default: cuda when available).")
@click.option("-q", "--quiet", is_flag=True)
def sticker_pack(selfie, output, model, base, expressions, style, candidates, pick, skip_cartoonize, require_face,
                 detector, overwrite, steps, cartoon_steps, train_steps, lora_rank, views, prior_preservation, seed, name,
                 cache_dir, max_pixels, allow_pickle, device, quiet):
    """Make a sticker pack from one selfie: an expression sticker each, WhatsApp and Telegram folders."""
    from rich.markup import escape

    from pedit.stickers.pipeline import STAGES, StickerConfig, make_sticker_pack

    cfg = StickerConfig(
        selfie=selfie, output=output, model=model, base=base,
        expressions=tuple(s.strip() for s in expressions.split(",") if s.strip()), style=style, pick=pick,
        candidates=candidates, skip_cartoonize=skip_cartoonize, require_face=require_face, detector=detector,
        overwrite=overwrite,
        steps=steps, cartoon_steps=cartoon_steps, train_steps=train_steps, lora_rank=lora_rank, views=views,
        prior_preservation=prior_preservation, seed=seed, name=name, cache_dir=cache_dir, max_pixels=max_pixels,
        allow_pickle=allow_pickle, device=device,
    )
    console = _console(quiet)
    _show_config(console, cfg)
    with contextlib.ExitStack() as stack:
        live = {}  # opened at the first stage event: an early error prints nothing but itself

        def on_progress(p):
            if not live:
                live["bar"] = stack.enter_context(_progress(console))
                live["tasks"] = {s: live["bar"].add_task(s, total=None, info="", start=False) for s in STAGES}
            bar, task = live["bar"], live["tasks"][p.stage]
            if p.skipped:
                bar.update(task, total=1, completed=1, info=f"[dim]{escape(p.info)}[/dim]")
                return
            bar.start_task(task)
            bar.update(task, total=p.total, completed=p.done, info=escape(p.info))

        out = make_sticker_pack(cfg, on_progress, note=lambda s: console.print(f"[dim]{escape(s)}[/dim]"))
    console.print(f"Sticker pack written to {escape(str(out))} (preview: {escape(str(out / 'preview.png'))})")
    click.echo(str(out))


def main(argv=None):
    cli.main(args=argv, prog_name="pedit")


if __name__ == "__main__":
    main()
