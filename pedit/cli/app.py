"""`pedit app`: the local web app (Gradio): an Edit tab and a Sticker-pack tab (pedit.app)."""

from __future__ import annotations

import os

import click

from pedit.errors import MissingPackageError


@click.command("app")
@click.option("-m", "--model", type=click.Path(), help="Model folder from `pedit train` (default: the bundled toon model).")
@click.option("--base", help="Stable Diffusion base for the sticker pack's cartoon stages (photos with your own model).")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to serve on (0.0.0.0: every interface).")
@click.option("--port", type=click.IntRange(1, 65535), default=7860, show_default=True)
@click.option("--device", help="cpu, cuda, cuda:1 ... (default: cuda when available).")
@click.option("--max-pixels", type=click.IntRange(min=1), default=100_000_000, show_default=True,
              help="Refuse larger uploads (decompression bombs), as `pedit edit`.")
@click.option("--allow-pickle", is_flag=True, help="Allow pickle weights in the model folder. Only for trusted files.")
@click.option("--server", metavar="URL", help="Edit through a pedit Triton server (`pedit serve` prints its http URL) "
              "instead of a model loaded here.")
def app(model, base, host, port, device, max_pixels, allow_pickle, server):
    """Serve the web app: edit a photo in the browser, or make a sticker pack from a selfie."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as `pedit edit` (docs/deployment.md, "CPU cold start")
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    try:
        from pedit.app import ui
    except ImportError as e:
        if e.name is None or e.name.split(".")[0] not in ("gradio", "gradio_client"):
            raise
        raise MissingPackageError("pedit app needs Gradio, which is not installed: pip install 'pedit[app]'.") from None
    from pedit.app.service import AppConfig, PeditApp

    service = PeditApp(AppConfig(model=model, base=base, device=device, allow_pickle=allow_pickle,
                                 max_pixels=max_pixels, server=server))
    if service.editor.is_bundled:
        click.echo("Using the bundled toon model (a cartoon-world demo); pass -m MODEL_FOLDER to use your own.", err=True)
    click.echo(f"pedit app on http://{host}:{port} (Ctrl-C stops it)", err=True)
    try:
        ui.serve(service, host=host, port=port, block=True)
    finally:
        service.close()
