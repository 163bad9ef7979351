"""A local `tritonserver`: where its binary is, the environment it needs, and one running process group.

Where the binary comes from, in this order:
  1. $PEDIT_TRITON_VENV, a virtual environment with `nvidia-pytriton` installed (its wheel bundles
     tritonserver 2.51 with the Python backend only; it runs on a CPU);
  2. `.venv-serve` beside the pedit package (what `make setup` builds);
  3. `tritonserver` on PATH with `backends/` beside its `bin/` (NVIDIA's containers: /opt/tritonserver).

nvidia-pytriton needs numpy < 2 (its Python-backend stub passes tensors through numpy's 1.x API), so
it lives in an environment of its own; the Python models run in that environment's interpreter.
The stub links libpython dynamically, so LD_LIBRARY_PATH must name the directory of the libpython the
environment's interpreter was built with (a pyenv build otherwise picks up the system's and fails at
model load), and the wheel's own libraries (`nvidia_pytriton.libs`).

`TritonServer` starts the binary in a new process group (the Python-backend stubs are its children)
and stops the whole group: SIGTERM, then SIGKILL after a grace period.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from pedit.cache import cache_root
from pedit.errors import PeditError

VENV_VARIABLE = "PEDIT_TRITON_VENV"
PROJECT_ROOT = Path(__file__).resolve().parents[2]
ADMIN_HEADER = "pedit-admin-key"
# Endpoints no client of the edit needs: behind ADMIN_HEADER always (model load/unload and the
# repository index, shared memory a request could point into, logging and tracing settings, statistics).
RESTRICTED = "model-repository,shared-memory,logging,trace,statistics"
SETUP_HINT = ("run `make setup` (it builds .venv-serve with nvidia-pytriton), or point "
              f"${VENV_VARIABLE} at a virtual environment with `pip install nvidia-pytriton==0.7.0 'numpy<2'`")


class ServeError(PeditError):
    """A Triton server that cannot be found, started, or reached, or that did not become ready."""


class PortTaken(ServeError):
    """Another process answers on a port this server was to listen on."""


@dataclass(frozen=True)
class TritonInstall:
    """What it takes to run one tritonserver binary."""

    binary: Path
    backends: Path  # --backend-directory
    env: dict = field(default_factory=dict)  # variables to set (PATH, LD_LIBRARY_PATH) for the server
    python: Path | None = None  # the interpreter the Python models run in
    backend_names: tuple[str, ...] = ()

    @property
    def has_onnxruntime(self) -> bool:
        return "onnxruntime" in self.backend_names


def _venv_python_version(venv: Path) -> tuple[str, Path]:
    """("3.11", libdir) of a virtual environment's interpreter, read by running it (pyvenv.cfg lies for symlinks)."""
    code = "import sys, sysconfig; print(f'{sys.version_info[0]}.{sys.version_info[1]}'); print(sysconfig.get_config_var('LIBDIR'))"
    out = subprocess.run([str(venv / "bin" / "python"), "-c", code], capture_output=True, text=True, timeout=60)
    if out.returncode != 0:
        raise ServeError(f"The serving environment {venv} has no working Python ({out.stderr.strip()[-200:]}); {SETUP_HINT}.")
    version, libdir = out.stdout.split()
    return version, Path(libdir)


def _pytriton_install(venv: Path) -> TritonInstall | None:
    found = sorted(venv.glob("lib/python3*/site-packages/pytriton/tritonserver/bin/tritonserver"))
    if not found:
        return None
    dist = found[0].parents[1]  # .../pytriton/tritonserver
    version, libdir = _venv_python_version(venv)
    stub = dist / "python_backend_stubs" / version / "triton_python_backend_stub"
    if not stub.is_file():
        raise ServeError(f"nvidia-pytriton in {venv} has no Python-backend stub for Python {version}; {SETUP_HINT}.")
    # The wheel keeps one stub per Python version apart from the backend: a backend folder of our own
    # puts the right one beside libtriton_python.so (links, rebuilt when missing).
    backends = cache_root("triton-backends") / f"{venv.resolve().as_posix().strip('/').replace('/', '_')}-{version}"
    python_dir = backends / "python"
    python_dir.mkdir(parents=True, exist_ok=True)
    for target, name in ((dist / "backends/python/libtriton_python.so", "libtriton_python.so"),
                         (dist / "backends/python/triton_python_backend_utils.py", "triton_python_backend_utils.py"),
                         (stub, "triton_python_backend_stub")):
        link = python_dir / name
        if not (link.is_symlink() and link.resolve() == target.resolve()):
            link.unlink(missing_ok=True)
            link.symlink_to(target)
    libs = dist.parents[1] / "nvidia_pytriton.libs"
    env = {"PATH": f"{venv / 'bin'}:{os.environ.get('PATH', '')}",
           "LD_LIBRARY_PATH": ":".join(p for p in (str(libs), str(libdir), os.environ.get("LD_LIBRARY_PATH", "")) if p)}
    return TritonInstall(found[0], backends, env, venv / "bin" / "python", ("python",))


def find_triton() -> TritonInstall:
    """The tritonserver to run (see the module docstring for the order); ServeError saying how to get one."""
    named = os.environ.get(VENV_VARIABLE)
    candidates = [Path(named)] if named else [PROJECT_ROOT / ".venv-serve"]
    for venv in candidates:
        if venv.is_dir() and (install := _pytriton_install(venv)) is not None:
            return install
    if named:
        raise ServeError(f"${VENV_VARIABLE}={named} holds no nvidia-pytriton tritonserver; {SETUP_HINT}.")
    on_path = shutil.which("tritonserver")
    if on_path:
        binary = Path(on_path).resolve()
        backends = binary.parents[1] / "backends"
        names = tuple(sorted(p.name for p in backends.iterdir() if p.is_dir())) if backends.is_dir() else ()
        return TritonInstall(binary, backends, {}, Path(sys.executable), names)
    raise ServeError(f"No tritonserver found; {SETUP_HINT}.")


def free_port(host: str = "127.0.0.1") -> int:
    import socket

    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def is_loopback(host: str) -> bool:
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass
class Ports:
    http: int
    grpc: int
    metrics: int

    @classmethod
    def starting_at(cls, port: int | None, host: str = "127.0.0.1") -> "Ports":
        """HTTP on `port` (gRPC and metrics on the next two); None: three free ports."""
        if port is None:
            return cls(free_port(host), free_port(host), free_port(host))
        return cls(port, port + 1, port + 2)


class TritonServer:
    """One tritonserver process group on a model repository.

        with TritonServer(repo) as server:      # started, and ready (or ServeError with the log's reason)
            server.urls["http"]
    """

    def __init__(self, repository: str | Path, host: str = "127.0.0.1", port: int | None = None,
                 install: TritonInstall | None = None, log_path: Path | None = None, admin_key: str | None = None,
                 extra_env: dict | None = None):
        self.repository = Path(repository).resolve()
        self.host = host
        self.auto_ports = port is None  # free ports picked here: on a collision, picked again
        self.ports = Ports.starting_at(port, self._probe_host())
        self.install = install or find_triton()
        # PEDIT_SERVE_KEY: a key of your own (a deployment's secret); else a random one per start.
        self.admin_key = admin_key or os.environ.get("PEDIT_SERVE_KEY") or secrets.token_urlsafe(24)
        if not (self.admin_key.isascii() and self.admin_key.isprintable()) or any(c.isspace() for c in self.admin_key):
            raise ServeError("The admin key ($PEDIT_SERVE_KEY) must be printable ASCII without spaces or newlines "
                             "(a key read from a file often ends in a newline: strip it).")
        self.log_path = log_path or cache_root("serve-logs") / f"tritonserver-{os.getpid()}-{self.ports.http}.log"
        self.extra_env = extra_env or {}
        self.process: subprocess.Popen | None = None
        self.started_at: float | None = None
        self.ready_seconds: float | None = None

    @property
    def urls(self) -> dict[str, str]:
        shown = "127.0.0.1" if self.host in ("0.0.0.0", "::") else self.host
        return {"http": f"http://{shown}:{self.ports.http}", "grpc": f"{shown}:{self.ports.grpc}",
                "metrics": f"http://{shown}:{self.ports.metrics}/metrics"}

    def command(self) -> list[str]:
        restricted = f"{RESTRICTED}:{ADMIN_HEADER}={self.admin_key}"
        return [str(self.install.binary), f"--model-repository={self.repository}",
                f"--backend-directory={self.install.backends}",
                f"--http-address={self.host}", f"--http-port={self.ports.http}",
                f"--grpc-address={self.host}", f"--grpc-port={self.ports.grpc}",
                f"--metrics-address={self.host}", f"--metrics-port={self.ports.metrics}",
                "--model-control-mode=none",  # no load/unload of models over the network
                f"--http-restricted-api={restricted}", f"--grpc-restricted-protocol={restricted}",
                "--strict-readiness=true", "--exit-on-error=true", "--exit-timeout-secs=5",
                "--log-verbose=0"]

    def environment(self) -> dict:
        env = {**os.environ, **self.install.env, **self.extra_env}
        # The Python models import pedit from this same source tree, whatever the serving venv holds.
        env["PYTHONPATH"] = ":".join(p for p in (str(PROJECT_ROOT), env.get("PYTHONPATH", "")) if p)
        env.setdefault("OMP_NUM_THREADS", "1")
        return env

    def _probe_host(self) -> str:
        return "127.0.0.1" if self.host in ("0.0.0.0", "::") else self.host

    def start(self, timeout: float = 120.0, tries: int = 3) -> "TritonServer":
        """Start the server and wait until it is ready. Free ports picked here can be taken by another
        process between the pick and the server's bind: then the server starts again on new ones."""
        for attempt in range(tries):
            try:
                return self._start(timeout)
            except PortTaken:
                if not self.auto_ports or attempt == tries - 1:
                    raise
                self.ports = Ports.starting_at(None, self._probe_host())
        raise AssertionError("unreachable")

    def _start(self, timeout: float) -> "TritonServer":
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "wb")
        self.started_at = time.perf_counter()
        self.process = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT, env=self.environment(),
                                        start_new_session=True)
        log.close()
        try:
            self.wait_ready(timeout)
        except BaseException:
            self.stop()
            raise
        self.ready_seconds = time.perf_counter() - self.started_at
        return self

    def wait_ready(self, timeout: float) -> None:
        """Until this server is ready: its own log says its three services started (Triton writes a
        "failed to start" line instead when a port is taken, and exits) and its health endpoint says
        ready. The log, not the port, tells that the server answering is this one: a port can be taken
        by another server between its pick and the bind, and that one may say ready too."""
        deadline = time.monotonic() + timeout
        url = f"http://127.0.0.1:{self.ports.http}/v2/health/ready" if self.host in ("0.0.0.0", "::") else \
            f"{self.urls['http']}/v2/health/ready"
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self._raise_exit()
            if self._services_started() and _answers_ready(url):
                return
            time.sleep(0.25)
        raise ServeError(f"tritonserver was not ready within {timeout:.0f} s: {self.failure_reason()}")

    def _services_started(self) -> bool:
        """This process's log shows the metrics service started (Triton starts gRPC, then HTTP, then
        metrics, and stops at the first that fails) and no service failed."""
        log = self.log_text()
        started = any("Started Metrics Service at" in line and f":{self.ports.metrics}\"" in line for line in log.splitlines())
        return started and "failed to start" not in log

    def _raise_exit(self) -> None:
        log = self.log_text()
        if "already in use" in log:
            again = "pick another with --port" if not self.auto_ports else "taken between its pick and the start"
            raise PortTaken(f"Port {self.ports.http}, {self.ports.grpc} or {self.ports.metrics} on {self.host} is in "
                            f"use by another process ({again}).")
        raise ServeError(f"tritonserver exited (code {self.process.returncode}) before it was ready: "
                         f"{self.failure_reason()}")

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def failure_reason(self) -> str:
        """The first model-load error in the log (pedit's own message when a pedit model refused to load)."""
        return failure_reason(self.log_text(), self.log_path)

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, grace: float = 15.0) -> None:
        """SIGTERM to the whole process group (server and Python-backend stubs), SIGKILL after `grace` s."""
        if self.process is None:
            return
        pgid = self.process.pid  # start_new_session: the group id is the server's pid
        _signal_group(pgid, signal.SIGTERM)
        try:
            self.process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            pass
        _signal_group(pgid, signal.SIGKILL)  # stubs that outlive the server, or a server that hung
        if self.process.poll() is None:
            self.process.wait(timeout=10)
        deadline = time.monotonic() + 10
        while _group_alive(pgid) and time.monotonic() < deadline:
            time.sleep(0.1)

    def __enter__(self):
        return self.start() if self.process is None else self

    def __exit__(self, *exc):
        self.stop()


def _signal_group(pgid: int, sig) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except (ProcessLookupError, PermissionError):
        return False


def failure_reason(log: str, log_path: Path | None = None) -> str:
    """pedit's own message (a line `pedit: ...` that a pedit model logged when it refused to load),
    else Triton's first 'failed to load' line, else the log's last line."""
    for line in log.splitlines():
        if "pedit-refused:" in line:
            return line.split("pedit-refused:", 1)[1].strip().strip('"').strip()
    for line in log.splitlines():
        if "failed to load" in line or line.startswith("error:"):
            return line.strip()[-400:]
    last = [line for line in log.splitlines() if line.strip()]
    where = f" (log: {log_path})" if log_path else ""
    return (last[-1][-300:] if last else "no output") + where


def _answers_ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status == 200
    except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
        return False


def read_json(url: str, headers: dict | None = None, timeout: float = 10) -> dict:
    request = urllib.request.Request(url, headers=headers or {})
    with urllib.request.urlopen(request, timeout=timeout) as r:
        return json.loads(r.read())
