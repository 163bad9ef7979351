"""A real tritonserver on a pedit repository of the bundled toon model, started on 127.0.0.1 (free ports)
by this module and stopped by it: same bytes alone, among concurrent requests and as `pedit edit
--backend onnx`; bad requests answered with pedit's message while the server keeps serving; overload
shed; a killed U-Net process gives errors, never a wrong image, and a restarted server serves; a
client gone mid-request disturbs nobody. Skipped, saying why, without the serving environment."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from pedit.serve.server import ServeError, find_triton

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "toon.png"
PHOTO = EXAMPLE.read_bytes()
INSTANCES, MAX_QUEUE, MAX_BYTES = 3, 5, 1_000_000


def _serving_environment() -> str | None:
    try:
        find_triton()
    except ServeError as e:
        return str(e)
    try:
        import tritonclient.http  # noqa: F401
    except ImportError:
        return "tritonclient is not installed in this environment: pip install 'pedit[serve]'"
    return None


pytestmark = pytest.mark.skipif(_serving_environment() is not None,
                                reason=f"no serving environment: {_serving_environment()}")


class ServeProcess:
    """`pedit serve --repo REPO` in a subprocess, as a user runs it: its printed URLs, and its stop
    (SIGTERM, what Ctrl-C and container runtimes send) checked to leave no process behind."""

    def __init__(self, repo: Path):
        from pedit.serve.server import free_port

        self.repo, self.admin_key = repo, "test-admin-key"
        self.port = free_port()
        self.process = None

    def start(self, tries: int = 3):
        """Start on a free port; again on another when the port was taken in the meantime (pedit serve
        says so and exits 1 rather than use a stranger's server)."""
        from pedit.serve.server import free_port

        for _ in range(tries):
            if self._start():
                return self
            self.port = free_port()
        raise AssertionError(f"pedit serve found its port taken {tries} times")

    def _start(self) -> bool:
        env = {**os.environ, "PEDIT_SERVE_KEY": self.admin_key, "PYTHONPATH": str(ROOT)}
        self.process = subprocess.Popen([sys.executable, "-m", "pedit", "serve", "--repo", str(self.repo),
                                         "--port", str(self.port), "--timeout", "240"],
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
        self.urls = {}
        for line in self.process.stdout:  # "http: URL", "grpc: ...", "metrics: ..." once ready
            name, _, url = line.strip().partition(": ")
            self.urls[name] = url
            if name == "metrics":
                break
        if not self.urls:
            stderr = self.process.stderr.read()
            taken = "in use by another" in stderr or "answers as another server" in stderr
            if self.process.wait() == 1 and taken:
                return False
            raise AssertionError(stderr)
        assert set(self.urls) == {"http", "grpc", "metrics"}, self.process.stderr.read()
        assert self.urls["http"] == f"http://127.0.0.1:{self.port}"  # loopback unless --host says otherwise
        return True

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self):
        self.process.send_signal(signal.SIGTERM)
        assert self.process.wait(timeout=60) == 0
        assert "Stopping tritonserver" in self.process.stderr.read()
        # The server and every Python-backend stub of this repository are gone.
        assert not _processes_of(str(self.repo)), "pedit serve left processes behind"


def _processes_of(text: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if text.encode() in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from pedit.serve.repository import RepositoryConfig, export_repository

    repo = export_repository(RepositoryConfig(output=str(tmp_path_factory.mktemp("triton") / "repo"),
                                              pedit_instances=INSTANCES, max_queue=MAX_QUEUE, timeout_s=120,
                                              max_request_bytes=MAX_BYTES, network_backend="python",
                                              networks=("unet",)))
    s = ServeProcess(repo).start()
    yield s
    if s.alive():
        s.stop()


@pytest.fixture(scope="module")
def client(server):
    from pedit.serve.client import ServerClient

    return ServerClient(server.urls["http"], timeout=120)


def edit(client, direction="laughing", seed=0, **kw):
    return client.edit(kw.pop("photo", PHOTO), [direction], seed, kw.pop("settings", None))[0]


def pixels(image) -> np.ndarray:
    return np.asarray(image.convert("RGB"))


@pytest.fixture(scope="module")
def alone(client):
    """The reference: each request sent on its own."""
    return {(d, s): pixels(edit(client, d, s).image) for d, s in (("laughing", 0), ("angry", 1))}


def unet_counts(server) -> tuple[int, int]:
    """(inference count, execution count) of the U-Net model, from Triton's statistics (admin key)."""
    from pedit.serve.server import ADMIN_HEADER, read_json

    stats = read_json(f"{server.urls['http']}/v2/models/unet/stats", {ADMIN_HEADER: server.admin_key})
    s = stats["model_stats"][0]
    return int(s["inference_count"]), int(s["execution_count"])


def test_served_edit_is_the_local_onnx_edit(server, tmp_path):
    from pedit.cli.main import cli

    runner = CliRunner()
    local = runner.invoke(cli, ["edit", str(EXAMPLE), "-d", "laughing", "--backend", "onnx", "-o", str(tmp_path / "l.png"), "-q"])
    assert local.exit_code == 0, local.output
    remote = runner.invoke(cli, ["edit", str(EXAMPLE), "-d", "laughing", "--server", server.urls["http"],
                                 "-o", str(tmp_path / "r.png"), "-q"])
    assert remote.exit_code == 0, remote.output
    assert (tmp_path / "r.png").read_bytes() == (tmp_path / "l.png").read_bytes()


def test_several_directions_and_a_users_mask_through_the_server_write_the_local_files(server, tmp_path):
    from pedit.cli.main import cli

    mask = np.zeros((128, 128), np.uint8)
    mask[20:90, 25:105] = 255  # the face and hair of the toon portrait may change, nothing else
    Image.fromarray(mask).save(tmp_path / "mask.png")
    common = ["edit", str(EXAMPLE), "-d", "laughing,angry", "--seed", "3", "--mask", str(tmp_path / "mask.png"),
              "--mask-mode", "intersect", "--save-mask", "-q"]
    runner = CliRunner()
    local = runner.invoke(cli, [*common, "--backend", "onnx", "-o", str(tmp_path / "local")])
    assert local.exit_code == 0, local.output
    remote = runner.invoke(cli, [*common, "--server", server.urls["http"], "-o", str(tmp_path / "remote")])
    assert remote.exit_code == 0, remote.output
    names = sorted(p.name for p in (tmp_path / "local").iterdir())
    assert len(names) == 6 and names == sorted(p.name for p in (tmp_path / "remote").iterdir())
    for name in names:
        assert (tmp_path / "remote" / name).read_bytes() == (tmp_path / "local" / name).read_bytes(), name
    kept = np.asarray(Image.open(tmp_path / "remote" / "toon_laughing_mask.png"))
    assert kept.max() > 0 and kept[mask == 0].max() == 0  # the edit stayed inside the user's mask


def test_the_web_app_edits_through_the_server(server, alone):
    pytest.importorskip("gradio", reason="the web app needs pedit[app]")
    from pedit.app.service import AppConfig, EditRequest, PeditApp
    from pedit.errors import ConfigError

    app = PeditApp(AppConfig(server=server.urls["http"]))
    try:
        from pedit.app.ui import build_ui
        from pedit.model.sampling_settings import sampling_for

        page = build_ui(app)  # the form shows the served model's own sampler (it failed: no default_options)
        steps = [c for c in page.blocks.values() if getattr(c, "label", None) == "Steps"]
        assert [c.value for c in steps] == [sampling_for(app.editor.meta).steps]
        outcome = app.edit(EditRequest(photo=str(EXAMPLE), direction="laughing"))
        assert np.array_equal(pixels(Image.open(outcome.result)), alone[("laughing", 0)])
        with pytest.raises(ConfigError, match="without --server"):
            app.sticker_pack(str(EXAMPLE))
    finally:
        app.close()


def test_concurrent_requests_give_the_bytes_of_each_alone(server, client, alone):
    before = unet_counts(server)
    asks = [("laughing", 0), ("angry", 1)] * 4
    with ThreadPoolExecutor(len(asks)) as pool:
        got = list(pool.map(lambda a: pixels(edit(client, *a).image), asks))
    for ask, image in zip(asks, got):
        assert np.array_equal(image, alone[ask]), f"{ask} differs when served among others"
    assert not np.array_equal(alone[("laughing", 0)], alone[("angry", 1)])  # the two requests are distinguishable
    inferences, executions = (a - b for a, b in zip(unet_counts(server), before))
    assert inferences > executions > 0  # rows of different requests shared U-Net executions


def test_server_path_crops_and_pastes_back_like_the_cli(client, alone, tmp_path):
    """The full-photo request (the server finds the face and pastes back) equals the CLI's local edit."""
    from pedit.cli.main import cli

    result = CliRunner().invoke(cli, ["edit", str(EXAMPLE), "-d", "angry", "--seed", "1", "-o", str(tmp_path / "a.png"),
                                      "-q", "--backend", "onnx"])
    assert result.exit_code == 0, result.output
    assert np.array_equal(pixels(Image.open(tmp_path / "a.png")), alone[("angry", 1)])


@pytest.mark.parametrize("kw, message", [
    ({"photo": b"this is not a photo at all"}, "The request's photo is not an image pedit can read"),
    ({"photo": PHOTO[: len(PHOTO) // 2]}, "The request's photo"),
    ({"photo": b"\x89PNG" + b"\0" * MAX_BYTES}, f"more than the server's limit of {MAX_BYTES:,}"),
    ({"direction": "sleepy"}, "Unknown direction 'sleepy'"),
    ({"settings": {"steps": 0}}, "steps"),
    ({"settings": {"s_p": 0.0}}, "s_p = 0 removes the text condition"),
    ({"settings": {"steps": 5000}}, "steps"),
    ({"settings": {"mask_noises": 5000}}, "mask_noises"),
    ({"settings": {"output": "/tmp/x.png"}}, "Unknown setting(s) output"),
])
def test_bad_requests_get_pedits_message_and_the_server_keeps_serving(client, alone, kw, message):
    from pedit.serve.client import ServeError as ClientError

    with pytest.raises(ClientError) as e:
        edit(client, **kw)
    assert message in str(e.value)
    assert "Traceback" not in str(e.value)
    assert np.array_equal(pixels(edit(client).image), alone[("laughing", 0)])


def test_admin_endpoints_need_the_key_and_model_control_is_off(server):
    base = server.urls["http"]
    with pytest.raises(urllib.error.HTTPError):
        urllib.request.urlopen(f"{base}/v2/models/unet/stats", timeout=10)
    with pytest.raises(urllib.error.HTTPError):
        urllib.request.urlopen(urllib.request.Request(f"{base}/v2/repository/index", data=b"{}"), timeout=10)
    from pedit.serve.server import ADMIN_HEADER

    unload = urllib.request.Request(f"{base}/v2/repository/models/unet/unload", data=b"{}",
                                    headers={ADMIN_HEADER: server.admin_key})
    with pytest.raises(urllib.error.HTTPError):  # with the key too: --model-control-mode=none
        urllib.request.urlopen(unload, timeout=10)


def test_overload_is_shed_with_a_clear_error(client, alone):
    from pedit.serve.client import ServeError as ClientError

    n = INSTANCES + MAX_QUEUE + 6

    def one(_):
        try:
            return pixels(edit(client).image)
        except ClientError as e:
            return str(e)

    with ThreadPoolExecutor(n) as pool:
        got = list(pool.map(one, range(n)))
    refused = [g for g in got if isinstance(g, str)]
    served = [g for g in got if not isinstance(g, str)]
    assert refused and served
    assert all("overloaded" in r for r in refused), refused[:2]
    assert all(np.array_equal(g, alone[("laughing", 0)]) for g in served)


def test_a_client_gone_mid_request_disturbs_nobody(server, client, alone):
    from pedit.serve.client import ServerClient

    impatient = ServerClient(server.urls["http"], timeout=0.3)
    gone = threading.Thread(target=lambda: pytest.raises(Exception, edit, impatient))
    gone.start()
    result = edit(client, "angry", 1)
    gone.join()
    assert np.array_equal(pixels(result.image), alone[("angry", 1)])
    assert np.array_equal(pixels(edit(client).image), alone[("laughing", 0)])


def _stub_pids(model: str) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmd = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if cmd and cmd[0].endswith(b"triton_python_backend_stub") and any(
                    c.endswith(f"/{model}/1/model.py".encode()) for c in cmd):
                pids.append(int(entry.name))
    return pids


def test_a_killed_unet_gives_errors_never_a_wrong_image_and_a_restart_serves(server, client, alone):
    """Runs last in this module: it kills the U-Net's process, then restarts the server."""
    from pedit.serve.client import ServeError as ClientError, ServerClient

    pids = _stub_pids("unet")
    assert pids, "no U-Net model process found"

    done = threading.Event()

    def load(_):  # requests back to back until a while after the kill: some are in their steps then
        got = []
        while not done.is_set():
            try:
                got.append(pixels(edit(client).image))
            except ClientError as e:
                got.append(str(e))
        return got

    with ThreadPoolExecutor(INSTANCES) as pool:
        futures = [pool.submit(load, i) for i in range(INSTANCES)]
        time.sleep(1.0)
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
        time.sleep(1.0)
        done.set()
        got = [g for f in futures for g in f.result()]
    errors = [g for g in got if isinstance(g, str)]
    assert errors, "killing the U-Net mid-request failed no request"
    assert all(np.array_equal(g, alone[("laughing", 0)]) for g in got if not isinstance(g, str))
    server.stop()  # pedit serve stopped by SIGTERM: server and stubs gone (checked in stop)
    server.start()
    fresh = ServerClient(server.urls["http"], timeout=120)
    assert np.array_equal(pixels(edit(fresh).image), alone[("laughing", 0)])
