"""Files in and out without loss: exclusive atomic writes, stale temp cleanup, regular files only.

Every final output pedit writes goes through `write_atomic`: the bytes go to a temp file in the
target folder, then the finished file takes its name in one step. Without `overwrite` that step is
a hard link, which fails when the name exists, so of two writers racing for one name exactly one
wins and the other gets an `OutputError` (a rename would silently replace the winner's file,
CONVENTIONS.md §17). Temp names carry the host and process id, so the first write of a process
into a folder removes the temps of processes that were killed on this host, and never those of a
live writer (once per folder and process: a scan per write would make filling a folder quadratic).
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import secrets
import socket
import stat
from pathlib import Path
from typing import Callable, IO

from pedit.errors import OutputError

TMP_SUFFIX = ".pedit-tmp"
_HOST = re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname())[:24] or "host"
_TMP_NAME = re.compile(rf"\..+\.(?P<host>[A-Za-z0-9-]+)-(?P<pid>\d+)-[0-9a-f]+{re.escape(TMP_SUFFIX)}")
# The image files pedit reads (photos, identity portraits, pose photos): one list for every wing.
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")
_CLEANED: set[str] = set()  # folders this process has already cleaned of stale temps
# Errors os.link gives where a filesystem has no hard links (FAT, some network and FUSE mounts).
_NO_LINKS = {errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOSYS, errno.EMLINK, errno.EXDEV}


def temp_path(path: Path) -> Path:
    """A hidden temp name beside `path`, naming this host and process (for `clean_stale_temps`)."""
    return path.with_name(f".{path.name}.{_HOST}-{os.getpid()}-{secrets.token_hex(4)}{TMP_SUFFIX}")


def process_alive(pid: int) -> bool:
    """Whether process `pid` exists on this machine (ours counts as alive)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except OSError:
        return True  # exists, owned by someone else
    return True


def clean_stale_temps(folder: Path) -> list[Path]:
    """Remove temp files that processes killed on this host left in `folder`; returns what went."""
    if os.name == "nt":  # os.kill(pid, 0) would terminate the process on Windows
        return []
    removed = []
    try:
        candidates = list(Path(folder).glob(f".*{TMP_SUFFIX}"))
    except OSError:
        return []
    for p in candidates:
        m = _TMP_NAME.fullmatch(p.name)
        if m and m["host"] == _HOST and not process_alive(int(m["pid"])):
            try:
                p.unlink()
                removed.append(p)
            except OSError:
                pass  # gone meanwhile, or not ours to remove
    return removed


def exists_error(path: Path) -> OutputError:
    return OutputError(f"{path} already exists. Pass --overwrite to replace it, or choose another -o.")


def commit(tmp: Path, path: Path, overwrite: bool) -> None:
    """Give the finished `tmp` the name `path`: replace it with `overwrite`, else create it or fail."""
    if overwrite:
        os.replace(tmp, path)
        return
    try:
        os.link(tmp, path)  # atomic, and fails if `path` exists: the exclusive step
    except FileExistsError:
        raise exists_error(path) from None
    except OSError as e:
        if e.errno not in _NO_LINKS:
            raise
        # No hard links here: reserve the name exclusively, then move the finished file onto it.
        try:
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        except FileExistsError:
            raise exists_error(path) from None
        os.replace(tmp, path)
    else:
        os.unlink(tmp)


def write_atomic(path: Path, write: Callable[[IO[bytes]], None], overwrite: bool = False) -> Path:
    """Write `path` all or nothing: `write(f)` fills a temp file that then takes the name (`commit`).

    OSErrors become OutputError; on any failure (Ctrl-C included) no temp file remains.
    """
    path = Path(path)
    folder = path.parent
    key = os.path.abspath(folder)
    if key not in _CLEANED:
        clean_stale_temps(folder)
        _CLEANED.add(key)
    tmp = temp_path(path)
    try:
        # Mode 0o666 lets the umask set the permissions, as for any new file (mkstemp gives 0o600).
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    except PermissionError as e:
        raise OutputError(f"Cannot write into folder {folder}: permission denied.") from e
    except OSError as e:
        raise OutputError(f"Cannot write into folder {folder}: {e.strerror or e}.") from e
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        commit(tmp, path, overwrite)
    except OSError as e:  # a full disk while writing or committing: the same clear error
        tmp.unlink(missing_ok=True)
        raise OutputError(f"Could not write {path}: {e.strerror or e}.") from e
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def write_text_atomic(path: Path, text: str, overwrite: bool = False) -> Path:
    return write_atomic(path, lambda f: f.write(text.encode("utf-8")), overwrite)


def regular_file_problem(path: Path) -> str | None:
    """None if `path` is a regular file (after links), else what it is: a FIFO or device must never
    be opened, since reading one can block forever."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return "is missing"
    except OSError as e:
        return f"cannot be read ({e.strerror or e})"
    if stat.S_ISDIR(mode):
        return "is a folder, not a file"
    if not stat.S_ISREG(mode):
        return "is not a regular file (a pipe, socket or device)"
    return None


def read_user_text(path: Path, what: str, kind: str, error: type[Exception]) -> str:
    """The UTF-8 text of a small file the user named (`what`, e.g. "Directions file"; `kind`, what
    it must be, e.g. "TOML"): missing, unreadable or not a regular file (a FIFO would block the read
    forever) → `error` with one line. A UnicodeDecodeError is the caller's: it is a parse error there."""
    if (why := regular_file_problem(path)) == "is missing":
        raise error(f"{what} {path} does not exist.")
    if why is not None:
        raise error(f"{what} {path} {why}; it must be a {kind} file.")
    try:
        return path.read_text(encoding="utf-8")
    except OSError as e:
        raise error(f"{what} {path} cannot be read ({e.strerror or e}).") from None


def image_files(folder: Path) -> list[Path]:
    """The image files directly in `folder` (IMAGE_SUFFIXES), sorted by name: regular files only
    (a FIFO named like a photo would block its reader), no dot files (macOS "._IMG.JPG" forks)."""
    return sorted(p for p in Path(folder).iterdir()
                  if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")
                  and regular_file_problem(p) is None)


def fingerprint(path: str | Path) -> dict[str, str]:
    """{file name: sha256} of a regular file, or of the regular files directly in a folder, sorted
    by name: what a folder's settings record so that changed inputs are noticed, not mixed in."""
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if regular_file_problem(p) is None)
    else:
        files = [path] if regular_file_problem(path) is None else []
    out = {}
    for f in files:
        digest = hashlib.sha256()
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
        out[f.name] = digest.hexdigest()
    return out
