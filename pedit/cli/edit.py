"""`pedit edit`: mask-guided editing of photos (paper §3.4), one line per input, a table after a batch."""

from __future__ import annotations

import contextlib
import os

import click

from pedit.cli.choices import BACKENDS, sampling_options, sampling_settings
from pedit.cli.progress import make_console, make_progress
from pedit.errors import PeditError


@click.command()
@click.argument("inputs", nargs=-1, required=True)
@click.option("-d", "--direction", required=True,
              help="Editing direction (see `pedit directions`), or several: angry,shocked (one output each, edited together).")
@click.option("-m", "--model", type=click.Path(), help="Model folder from `pedit train`, or toon / toon-fast (default: toon-fast, the best measured bundled model).")
@click.option("-o", "--output", type=click.Path(), help="Output file, or folder for several inputs. Default: next to the input.")
@sampling_options()
@click.option("--subject", help="Who the photo shows, filled in for \"person\" in the direction's prompts "
              "(e.g. woman, old man): for models trained on gen-pairs --source sd pairs.")
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
@click.option("--no-cache", is_flag=True, help="On the CPU, load the model itself, not its TorchScript cache (same result, slower start).")
@click.option("--server", metavar="URL", help="Edit through a pedit Triton server (`pedit serve` prints its http URL); "
              "the same outputs as a local edit. -m, --backend and --device are the server's then.")
@click.option("--concurrency", type=click.IntRange(1, 256), default=1, show_default=True,
              help="With --server: photos in flight at once.")
@click.option("-q", "--quiet", is_flag=True)
def edit(inputs, direction, model, output, subject, mask_file, mask_mode, save_mask, compare, face_index, require_face,
         margin, detector, no_identity_check, overwrite, max_pixels, allow_pickle, device, backend, precision, engines,
         no_cache, server, concurrency, quiet, **sampling):
    """Edit portraits toward a direction, keeping everything outside the edit untouched."""
    # OpenMP threads that spin while they wait (libgomp's default) made the toon edit 3-8x slower on a
    # 2-core machine busy with other work; sleeping waits did not (docs/deployment.md, "CPU cold start").
    # Takes effect because torch is not loaded yet; a value the user set wins.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    from pedit.faces import face_model_available
    from pedit.photos.edit_files import EditFilesConfig, edit_files

    cfg = EditFilesConfig(
        inputs=tuple(inputs), direction=direction, model=model, output=output, sampling=sampling_settings(sampling),
        save_mask=save_mask, compare=compare, face_index=face_index, require_face=require_face, margin=margin,
        overwrite=overwrite, max_pixels=max_pixels, allow_pickle=allow_pickle, device=device, detector=detector,
        identity_check=not no_identity_check, backend=backend, precision=precision, engines=engines,
        cache=not no_cache, mask=mask_file, mask_mode=mask_mode, subject=subject,
    )
    check_identity = cfg.identity_check and face_model_available()  # else edit_files says why it is skipped
    console = make_console(quiet)
    editor = None
    if server is not None:
        from pedit.serve.client import RemoteEditor, ServerClient

        editor = RemoteEditor(ServerClient(server, concurrency=concurrency))
    with contextlib.ExitStack() as stack:
        items = edit_files(cfg, _edit_events(console, stack, check_identity), editor=editor)
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
                live["bar"] = stack.enter_context(make_progress(console, transient=True))
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
                outputs = payload.outputs or (payload.output,)
                console.print(f"{escape(str(payload.input))} → {escape(', '.join(map(str, outputs)))} "
                              f"({payload.seconds:.1f} s{identity})")
                for path in outputs:
                    click.echo(str(path))

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

