"""Files in and out without loss: exclusive atomic writes, stale temp cleanup, regular files only.

Every final output pedit writes goes through `write_atomic`: the bytes go to a temp file in the
target folder, then the finished file takes its name in one step. Without `overwrite` that step is
a hard link, which fails when the name exists, so of two writers racing for one name exactly one
wins and the other gets an `OutputError` (a rename would silently replace the winner's file;
`--overwrite` is the only way to replace). Temp names carry the host and process id, so the first
write of a process into a folder removes the temps of processes that were killed on this host,
and never those of a live writer (once per folder and process: a scan per write would make
filling a folder quadratic).
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import secrets
import shutil
import signal
import socket
import stat
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, IO, Iterator

from pedit.errors import ConfigError, OutputError

TMP_SUFFIX = ".pedit-tmp"
_HOST = re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname())[:24] or "host"
_TMP_NAME = re.compile(rf"\..+\.(?P<host>[A-Za-z0-9-]+)-(?P<pid>\d+)-[0-9a-f]+{re.escape(TMP_SUFFIX)}")
# The image files pedit reads (photos, identity portraits, pose photos): one list for every wing.
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")
_CLEANED: set[str] = set()  # folders this process has already cleaned of stale temps
# Errors os.link gives where a filesystem has no hard links (FAT, some network and FUSE mounts).
_NO_LINKS = {errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOSYS, errno.EMLINK, errno.EXDEV}
NAME_MAX = 255  # bytes in one file name: ext4, XFS, btrfs, APFS, NTFS (in UTF-16 units) all stop there


def name_problem(path: Path) -> str | None:
    """None if the last part of `path` is a name the file system can hold, else what is wrong:
    checked before the work, since open() only says ENAMETOOLONG when the result is ready."""
    if len(os.fsencode(Path(path).name)) > NAME_MAX:
        return f"its name is {len(os.fsencode(Path(path).name))} bytes long, more than the {NAME_MAX} a file system allows"
    return None


def temp_path(path: Path) -> Path:
    """A hidden temp name beside `path`, naming this host and process (for `clean_stale_temps`).

    The target's name is shortened inside the temp name so that the temp fits NAME_MAX whenever
    the target does (a legal 249-byte name must not fail on the temp built from it)."""
    tail = f".{_HOST}-{os.getpid()}-{secrets.token_hex(4)}{TMP_SUFFIX}"
    name = path.name
    while name and len(os.fsencode(f".{name}{tail}")) > NAME_MAX:
        name = name[:-1]  # characters, not bytes: a cut never splits a UTF-8 sequence
    return path.with_name(f".{name or 'x'}{tail}")


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
    """Remove temp files (and temp folders) that processes killed on this host left in `folder`;
    returns what went."""
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
                if p.is_dir() and not p.is_symlink():  # a temp folder (a sticker pack being made)
                    shutil.rmtree(p)
                else:
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


class LockBusy(Exception):
    """Another process holds the lock (`holder`: the pid it wrote, or "?")."""

    def __init__(self, holder: str):
        super().__init__(holder)
        self.holder = holder


@contextmanager
def held_lock(path: Path, wait: bool = False) -> Iterator[None]:
    """An advisory exclusive lock (flock) on the file `path`, created if missing, for the block.

    The holder's pid is written into the file, for the message of whoever finds it taken: LockBusy
    unless `wait`, which blocks until the holder is done (or dead: the system drops a dead process's
    locks, so a killed run never leaves a lock behind). OutputError when the file cannot be made.
    Where the system has no flock (Windows) the block runs unguarded. The file stays after the block:
    unlinking it would race with the next opener."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as e:
        raise OutputError(f"Cannot write into folder {path.parent}: {e.strerror or e}.") from e
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            raise LockBusy(os.pread(fd, 32, 0).decode(errors="replace").strip() or "?") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock


@contextmanager
def interrupts_deferred() -> Iterator[None]:
    """Hold Ctrl-C and SIGTERM until the block ends, then act on them as they would have acted.

    For the few renames that put an item's finished files in place: stopped between two of them, an
    item would keep some files and lose others. Only the main thread can set handlers; elsewhere
    (a web app's worker) the block runs as it is."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[tuple[int, object]] = []
    previous = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        previous[sig] = signal.signal(sig, lambda signum, frame: caught.append((signum, frame)))
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        for signum, frame in caught[:1]:
            handler = previous[signum]
            if callable(handler):
                handler(signum, frame)  # Python's own Ctrl-C handler raises KeyboardInterrupt here
            elif handler == signal.SIG_DFL:
                signal.raise_signal(signum)  # what the signal would have done (SIGTERM: the process ends)


def commit_all(staged: list[tuple[Path, Path]], overwrite: bool) -> None:
    """Give each finished temp its name, all or none: an item's files (edit, mask, overlay) appear
    together, and with `overwrite` the earlier files stay until every new one is in place.

    `staged`: (temp, final path) pairs, the temps already written and fsynced. Without `overwrite`
    each name is taken exclusively (`commit`); when one fails, the names taken are given back. With
    `overwrite`, each earlier file is first kept under a temp name (a hard link: no copy), so that a
    failure can put it back. Ctrl-C and SIGTERM wait until the renames are done."""
    placed: list[tuple[Path, Path | None]] = []  # (final path, the earlier file's backup or None)
    with interrupts_deferred():
        try:
            for tmp, path in staged:
                backup = _keep_earlier(path) if overwrite else None
                try:
                    commit(tmp, path, overwrite)
                except BaseException:
                    _put_back(path, backup)
                    raise  # without overwrite, a name that exists is someone else's: left alone
                placed.append((path, backup))
        except BaseException:
            for path, backup in reversed(placed):
                if backup is not None:
                    _put_back(path, backup)
                else:
                    path.unlink(missing_ok=True)
            raise
        finally:
            for tmp, _ in staged:
                tmp.unlink(missing_ok=True)
    for _, backup in placed:
        if backup is not None:
            backup.unlink(missing_ok=True)


def _put_back(path: Path, backup: Path | None) -> None:
    if backup is not None:
        os.replace(backup, path)
        # A rename onto another link of the same file does nothing (POSIX), leaving the backup.
        backup.unlink(missing_ok=True)


def _keep_earlier(path: Path) -> Path | None:
    """A hard link to the file at `path` under a temp name, or None when there is none to keep."""
    if not path.exists():
        return None
    backup = temp_path(path)
    try:
        os.link(path, backup)
    except OSError as e:
        if e.errno in _NO_LINKS:
            return None  # no hard links here: the item is still all or none, the earlier file not kept
        raise
    return backup


def stage(path: Path, write: Callable[[IO[bytes]], None]) -> Path:
    """`write(f)` fills a new temp file beside `path`, flushed to disk; returns the temp's path, for
    `commit` or `commit_all`. OSErrors become OutputError; on any failure no temp file remains."""
    path = Path(path)
    folder = path.parent
    key = os.path.abspath(folder)
    if key not in _CLEANED:
        clean_stale_temps(folder)
        _CLEANED.add(key)
    if (why := name_problem(path)) is not None:
        raise OutputError(f"Cannot write {path}: {why}. Choose a shorter name.")
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
    except OSError as e:  # a full disk while writing: the same clear error
        tmp.unlink(missing_ok=True)
        raise OutputError(f"Could not write {path}: {e.strerror or e}.") from e
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp


def write_atomic(path: Path, write: Callable[[IO[bytes]], None], overwrite: bool = False) -> Path:
    """Write `path` all or nothing: `write(f)` fills a temp file that then takes the name (`commit`).

    OSErrors become OutputError; on any failure (Ctrl-C included) no temp file remains.
    """
    path = Path(path)
    tmp = stage(path, write)
    try:
        commit(tmp, path, overwrite)
    except OSError as e:
        raise OutputError(f"Could not write {path}: {e.strerror or e}.") from e
    finally:
        tmp.unlink(missing_ok=True)
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


def check_output_not_input(output: str | Path | None, inputs: dict[str, str | Path | None], what: str = "-o") -> None:
    """ConfigError, before any work, when the folder a command writes is one of its inputs, lies inside
    one, or holds one: writing (or --overwrite's clearing) there would change what is being read.

    `inputs`: flag → path (None, or a name that is not a local path, e.g. a hub id, is skipped).
    Paths are compared after resolving links (`realpath`), so a link to the input is the input."""
    if output is None:
        return
    out = Path(os.path.realpath(output))
    for flag, given in inputs.items():
        if given is None or str(given) == "" or not os.path.lexists(given):
            continue
        src = Path(os.path.realpath(given))
        if out == src:
            how = "is"
        elif out.is_relative_to(src):
            how = "is inside"
        elif src.is_relative_to(out):
            how = "holds"
        else:
            continue
        raise ConfigError(f"{what} {output} {how} {flag} {given}: a command never writes into what it reads. "
                          f"Choose another {what}.")


def write_failure(e: BaseException) -> str | None:
    """What stopped a write, when `e` is a failed write (an OSError: a full disk, a read-only or unwritable
    folder; or safetensors' own error around one), else None: the cause a one-line `Error:` names."""
    if isinstance(e, OSError):
        return e.strerror or str(e) or type(e).__name__
    if type(e).__name__ == "SafetensorError" and "I/O error" in str(e):  # safetensors wraps the OSError
        return str(e).split("I/O error:", 1)[1].strip().split(" (os error")[0]
    return None
