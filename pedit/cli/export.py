"""`pedit export` and `pedit bench`: ONNX and TensorRT engines, and what they buy in milliseconds."""

from __future__ import annotations

from pathlib import Path

import click

from pedit.cli.choices import BACKENDS, sampling_options, sampling_settings
from pedit.cli.progress import make_console, show_config


@click.command("export")
@click.option("-m", "--model", type=click.Path(), help="Model folder (default: the bundled toon model).")
@click.option("-o", "--output", type=click.Path(), default="engines", show_default=True, help="Engines folder.")
@click.option("--trt", is_flag=True, help="Also build TensorRT engines (strongly typed, from the fp16 graphs; needs pedit[trt] "
              "and an NVIDIA GPU).")
@click.option("--fp16", is_flag=True, help="Also write fp16 ONNX graphs (<name>.fp16.onnx, float32 inputs and outputs).")
@click.option("--force", is_flag=True, help="Redo every stage, even those whose inputs are unchanged.")
@click.option("--networks", default=",".join(["unet", "image_projector", "text_encoder", "vae_encoder", "vae_decoder"]),
              show_default=True, help="Comma-separated networks to export.")
@click.option("--mask-noises", type=click.IntRange(min=1), default=10, show_default=True,
              help="Sizes the U-Net's mask profile (5 rows x N noise draws).")
@click.option("--allow-pickle", is_flag=True, help="Allow pickle weights in the model folder. Only for trusted files.")
@click.option("--triton", is_flag=True, help="Write a Triton model repository to -o instead (each network a model, "
              "and the `pedit` model that edits a photo; `pedit serve --repo` runs it).")
@click.option("--overwrite", is_flag=True, help="With --triton: replace the repository if it exists.")
@click.option("--no-batching", is_flag=True, help="With --triton: the U-Net without dynamic batching (a baseline).")
@click.option("--instances", type=click.IntRange(1, 64), default=4, show_default=True,
              help="With --triton: instances of the `pedit` model (concurrent edits).")
@click.option("-q", "--quiet", is_flag=True)
def export_cmd(model, output, trt, fp16, force, networks, mask_noises, allow_pickle, triton, overwrite, no_batching,
               instances, quiet):
    """Export a model's networks to ONNX (parity-checked against torch) and TensorRT engines, or a Triton repository."""
    from rich.markup import escape

    if triton:
        from pedit.serve.repository import RepositoryConfig, export_repository

        console = make_console(quiet)
        cfg = RepositoryConfig(model=model, output=output, trt=trt, overwrite=overwrite, batching=not no_batching,
                               pedit_instances=instances, allow_pickle=allow_pickle)
        show_config(console, cfg)
        click.echo(str(export_repository(cfg, log=lambda msg: console.print(escape(msg)))))
        return

    from pedit.export.pipeline import ExportConfig, export_model

    cfg = ExportConfig(model=model, output=output, trt=trt, fp16=fp16, force=force, n_noise=mask_noises, allow_pickle=allow_pickle,
                       networks=tuple(n.strip() for n in networks.split(",") if n.strip()))
    console = make_console(quiet)
    show_config(console, cfg)
    export_model(cfg, log=lambda msg: console.print(escape(msg)))
    console.print(f"Engines and manifest.json in {output}")
    click.echo(str(Path(output) / "manifest.json"))


@click.command()
@click.option("-m", "--model", type=click.Path(), help="Model folder (default: the bundled toon model).")
@click.option("--arch", type=click.Choice(["sd15"]), help="Instead of -m: an MCDM of Stable Diffusion 1.5 size with random weights.")
@click.option("--backend", "backends", default="torch", show_default=True,
              help=f"Comma-separated backends to time: {', '.join(BACKENDS)}.")
@sampling_options(what="the timed edit (and --arch sd15's random weights)")
@click.option("--repeats", type=click.IntRange(min=1), default=5, show_default=True, help="Timed edits; medians are reported.")
@click.option("--warmup", type=click.IntRange(min=0), default=1, show_default=True)
@click.option("--vs", "vs", type=click.Choice(["ip2p"]), help="Also time diffusers' InstructPix2Pix pipeline in this process.")
@click.option("--resolution", type=click.IntRange(min=64), help="--arch sd15 only (default 512).")
@click.option("--device", help="cpu, cuda, cuda:1 ... (default: cuda when available).")
@click.option("--precision", type=click.Choice(["fp32", "fp16", "bf16"]), help="Default: fp16 on CUDA, fp32 on the CPU.")
@click.option("-d", "--direction", default="laughing", show_default=True, help="The direction the timed edit goes toward.")
@click.option("--ip2p-steps", type=click.IntRange(min=1), help="InstructPix2Pix's steps with --vs ip2p (default: --steps, "
              "else 20); it keeps its DDIM sampler.")
@click.option("--engines", type=click.Path(file_okay=False), help="`pedit export` folder for onnx/trt.")
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="Also write the JSON report to this file.")
@click.option("--overwrite", is_flag=True, help="Replace the -o file if it exists.")
@click.option("-q", "--quiet", is_flag=True)
def bench(model, arch, backends, repeats, warmup, vs, resolution, device, precision, direction, ip2p_steps, engines,
          output, overwrite, quiet, **sampling):
    """Time one edit stage by stage (load, encode, mask, steps, decode) per backend; JSON on stdout, a table on stderr."""
    import json

    from rich.markup import escape
    from rich.table import Table

    from pedit.export.bench import TABLE_HEAD, BenchConfig, run_bench, table_rows

    cfg = BenchConfig(model=model, arch=arch or "model", backends=tuple(b.strip() for b in backends.split(",") if b.strip()),
                      sampling=sampling_settings(sampling), repeats=repeats, warmup=warmup, vs_ip2p=vs == "ip2p",
                      resolution=resolution, device=device, precision=precision, direction=direction, engines=engines,
                      output=output, overwrite=overwrite, ip2p_steps=ip2p_steps)
    console = make_console(quiet)
    show_config(console, cfg)
    report = run_bench(cfg, log=lambda msg: console.print(f"[dim]{escape(msg)}[/dim]"))
    table = Table(*TABLE_HEAD, title=f"{report['model']} on {report['device']}, {report['precision']}, "
                                     f"{report['resolution']} px, {report['config']['sampling']['steps']} steps: medians of {repeats}, ms")
    for row in table_rows(report):
        table.add_row(*(escape(c) for c in row))
    console.print(table)
    console.print(f"U-Net: {report['unet_flops_per_step'] / 1e12:.4f} TFLOP per 5-row step")
    click.echo(json.dumps(report, indent=2))

