"""`pedit directions` and `pedit gen-pairs`: the directions and the pair folders of stage 1 (paper §3.2)."""

from __future__ import annotations

import os
import sys

import click

from pedit.cli.progress import make_console, make_progress, show_config
from pedit.errors import PeditError


@click.command()
@click.option("--file", "directions_file", type=click.Path(dir_okay=False), help="A TOML file of your own directions.")
@click.option("-m", "--model", type=click.Path(), help="List the directions this model folder was trained on.")
def directions(directions_file, model):
    """List the built-in editing directions (and those of a file or model)."""
    import json

    from rich.table import Table

    from pedit.data.directions import all_directions, model_directions

    if model:
        from pedit.model.loading import model_path

        model = model_path(model)
        meta_file = model / "pedit.json"
        if not meta_file.exists():
            raise PeditError(f"{model} is not a model folder (no pedit.json).")
        try:
            meta = json.loads(meta_file.read_text())
        except ValueError as e:  # a hand-edited or corrupt pedit.json
            raise PeditError(f"{meta_file} is not valid JSON ({e}).") from None
        if not isinstance(meta, dict) or "directions" not in meta:
            raise PeditError(f"{meta_file} does not list the model's directions.")
        found = model_directions(meta, model)
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


@click.command("gen-pairs")
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
@click.option("--nested-identity", "identity_guidance", type=click.FloatRange(min=0), metavar="S_ID",
              help="sd: guide identity and text nested (paper Eq. 1's form) with identity scale S_ID: one more "
                   "U-Net row per pair (5, not 4). Default: one CFG over text and identity together.")
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
    console = make_console(quiet or int(os.environ.get("RANK", "0")) != 0)
    if source == "sd":
        return _gen_sd_pairs(console, output, n, direction_list, directions_file, resolution, seed, (shard_i, shard_n), sd)
    names = tuple(BUILTIN) if direction_list == "all" else tuple(s.strip() for s in direction_list.split(",") if s.strip())
    cfg = GenPairsConfig(output, n, source, names, resolution or 128, seed, (shard_i, shard_n), exact, max_shift,
                         max_face_width, max_color_drift)
    show_config(console, cfg)
    with make_progress(console) as bar:
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
        ip_adapter=(*parts, "image_encoder"), ip_adapter_scale=sd["ip_adapter_scale"],
        identity_guidance=sd["identity_guidance"], min_score=sd["min_score"],
        min_clip=sd["min_clip"], max_identity_distance=sd["max_identity_distance"], clip=sd["clip_model"], contact_sheet=sd["contact_sheet"], device=device,
        precision=sd["precision"], allow_pickle=sd["allow_pickle"],
    )
    show_config(console, cfg)
    from pedit.edit.sampler import make_scheduler, sample

    with make_progress(console) as bar:
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

