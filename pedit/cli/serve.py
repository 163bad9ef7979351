"""`pedit serve`: a local tritonserver on a pedit model repository (pedit.serve), until Ctrl-C or SIGTERM."""

from __future__ import annotations

import click

from pedit.cli.progress import make_console


@click.command("serve")
@click.option("-m", "--model", type=click.Path(), help="Model folder (default: the bundled toon model); its repository "
              "is exported once into pedit's cache.")
@click.option("--repo", type=click.Path(file_okay=False), help="Serve this repository (`pedit export --triton`) instead.")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to bind (0.0.0.0: every interface; admin endpoints then need the printed key).")
@click.option("--port", type=click.IntRange(1, 65533), help="HTTP port; gRPC and metrics take the next two. "
              "Default: free ports.")
@click.option("--instances", type=click.IntRange(1, 64), default=4, show_default=True,
              help="Concurrent edits (pedit model instances) of a repository exported here.")
@click.option("--no-batching", is_flag=True, help="Export with the U-Net's dynamic batching off (the baseline).")
@click.option("--timeout", type=click.FloatRange(1, 3600), default=300, show_default=True,
              help="Seconds to wait for the server to be ready.")
def serve(model, repo, host, port, instances, no_batching, timeout):
    """Run tritonserver on pedit's model repository: prints the URLs, stops every child process on Ctrl-C."""
    import signal
    import time

    from pedit.serve.repository import RepositoryConfig, check_repository, serving_repository
    from pedit.serve.server import ADMIN_HEADER, TritonServer, is_loopback

    if model is not None and repo is not None:
        check_repository(repo, model)  # -m and --repo together: the repository must be that model's
    console = make_console(False)
    if repo is None:
        repo = serving_repository(RepositoryConfig(model=model, pedit_instances=instances, batching=not no_batching),
                                  log=lambda msg: console.print(msg))
    else:
        check_repository(repo)  # refused here with pedit's message, before a server starts
    server = TritonServer(repo, host=host, port=port)
    click.echo(f"Starting tritonserver on {repo} (log: {server.log_path}) ...", err=True)
    server.start(timeout=timeout)
    click.echo(f"Ready in {server.ready_seconds:.1f} s.", err=True)
    for name, url in server.urls.items():
        click.echo(f"{name}: {url}")
    if not is_loopback(host):
        click.echo(f"Listening on {host}: model control is off; the repository index, statistics, shared-memory and "
                   f"logging endpoints need the header {ADMIN_HEADER}: {server.admin_key}", err=True)
    click.echo("Ctrl-C stops the server.", err=True)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        while server.alive():
            time.sleep(0.5)
        click.echo(f"tritonserver exited (code {server.process.returncode}): {server.failure_reason()}", err=True)
    except KeyboardInterrupt:  # Ctrl-C, and SIGTERM (pedit.cli.errors turns it into this)
        click.echo("Stopping tritonserver and its model processes ...", err=True)
    finally:
        server.stop()
