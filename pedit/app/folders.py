"""One temporary folder per web-app request, removed once its files have been handed over.

A request writes its upload copy, results and archives into its own folder (random name, mode 0700),
so two users never see each other's files. A failed request's folder goes at once; a finished one
is kept `keep_s` seconds, long enough for the web server to copy the files it returns into its own
cache, then removed by the next request's sweep or by `close()` at shutdown.
"""

from __future__ import annotations

import shutil
import tempfile
import threading
import time
from pathlib import Path

from pedit.validate import check_number


class RequestFolders:
    """Per-request folders under one root of this process (`root`: where to make it; None → the system temp)."""

    def __init__(self, root: str | Path | None = None, keep_s: float = 120.0,
                 clock=time.monotonic):
        check_number("keep_s", keep_s, 0, 86_400)
        self.root = Path(tempfile.mkdtemp(prefix="pedit-app-", dir=root))
        self.keep_s = keep_s
        self._clock = clock
        self._released: dict[Path, float] = {}  # finished folder → when it finished
        self._lock = threading.Lock()  # requests of several queue workers share one registry

    def new(self) -> Path:
        """A fresh empty folder for one request (sweeping the expired ones first)."""
        self.sweep()
        return Path(tempfile.mkdtemp(prefix="req-", dir=self.root))

    def release(self, folder: Path, failed: bool = False) -> None:
        """The request is over: a failed one's folder goes now, a finished one after keep_s."""
        if failed:
            shutil.rmtree(folder, ignore_errors=True)
            return
        with self._lock:
            self._released[folder] = self._clock()

    def sweep(self) -> None:
        """Remove the finished folders older than keep_s."""
        now = self._clock()
        with self._lock:
            expired = [f for f, done in self._released.items() if now - done >= self.keep_s]
            for folder in expired:
                del self._released[folder]
        for folder in expired:
            shutil.rmtree(folder, ignore_errors=True)

    def close(self) -> None:
        """Remove every folder of this process (the server is stopping)."""
        with self._lock:
            self._released.clear()
        shutil.rmtree(self.root, ignore_errors=True)
