"""Where pedit keeps its caches: one root, one documented variable (docs/deployment.md, "Caches"),
and the content hashes that key cache entries.

    $PEDIT_CACHE, else $XDG_CACHE_HOME/pedit, else ~/.cache/pedit
        traced/<key>/       TorchScript copies of model folders (pedit.model.traced)
        engines/<key>/      ONNX graphs / TensorRT engines exported on first use (pedit.export.backends)
        compile/            torch.compile's Inductor kernels (pedit.export.backends)
        dreambooth/<key>/   sticker-pack LoRAs (pedit.stickers)
        hashes/             each model file's sha256 with its stat, so content keys need not re-read weights

        datasets/<key>/     pair folders written from `datasets` sources (pedit.data.hf)

Every entry is rebuilt when missing, so deleting any folder (or the root) only costs time. Every entry
records the content hash of its files when it is written, and every read checks it (`seal`,
`entry_problem`): an entry replaced, altered or linked since is never used as its key's.
`PEDIT_CACHE_DIR` is read as an older name of `PEDIT_CACHE` when that is unset.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from pathlib import Path

VARIABLE = "PEDIT_CACHE"
OLD_VARIABLE = "PEDIT_CACHE_DIR"


def cache_root(sub: str = "") -> Path:
    """The cache root, or its subfolder `sub` (not created here)."""
    root = os.environ.get(VARIABLE) or os.environ.get(OLD_VARIABLE)
    if root:
        base = Path(root).expanduser()
    else:
        base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "pedit"
    return base / sub if sub else base


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


RACY_SECONDS = 2.0  # a file changed this recently may change again within one timestamp tick: not recorded


def stat_key(st) -> list:
    """What says a file is unchanged since it was hashed: size, mtime, device, inode and ctime.

    Size and mtime alone are not enough: `cp -p` and `rsync -a` write new bytes of the same size
    under the old mtime. On POSIX ctime cannot be set from user space, and every write or utime
    moves it; a replaced file has a new inode, another volume another device. A file whose key
    differs is hashed again (its bytes decide). Like git's index, a hash taken within RACY_SECONDS
    of the file's last change is not recorded (`folder_hash`): a rewrite within the same timestamp
    tick would keep the key. On Windows ctime is the creation time: a tool that rewrites a file in
    place and sets its mtime back defeats the key there."""
    return [st.st_size, st.st_mtime_ns, st.st_dev, st.st_ino, st.st_ctime_ns]


def folder_hash(root: Path, parts: tuple[str, ...], known: dict | None = None, skip: str | None = None) -> str:
    """sha256 over the relative names and bytes of every file under root/part, in sorted order.

    `known` (relative path → [*stat_key, sha256], kept in the manifest) spares re-reading
    gigabytes of unchanged weights in every process; it is updated in place. `skip`: a regular
    expression of file names left out (weight variants a loader does not read).
    """
    known = {} if known is None else known
    h = hashlib.sha256()
    for part in parts:
        base = root / part
        files = sorted(p for p in base.rglob("*") if p.is_file()) if base.is_dir() else [base]
        for p in files:
            if not p.exists() or (skip is not None and re.fullmatch(skip, p.name)):
                continue
            rel, st = str(p.relative_to(root)), p.stat()
            seen, key = known.get(rel), stat_key(st)
            if not (isinstance(seen, list) and len(seen) == len(key) + 1 and seen[:-1] == key
                    and isinstance(seen[-1], str)):
                seen = [*key, file_sha256(p)]
                if time.time() - max(st.st_mtime, st.st_ctime) > RACY_SECONDS:
                    known[rel] = seen
                else:
                    known.pop(rel, None)
            h.update(rel.encode() + b"\0" + seen[-1].encode())
    return h.hexdigest()


def content_hash(path: Path, parts: tuple[str, ...], skip: str | None = None) -> str:
    """`folder_hash` of a model folder's `parts`, remembering each file's sha256 with its stat.

    The record lives in the cache root's `hashes/` (one file per folder path), so a new process reads
    only the files that changed since, not every weight again (gigabytes for a Stable Diffusion-size
    folder). Any write to a file moves its ctime (`stat_key`). What keys the caches of model folders:
    the TorchScript cache (pedit.model.traced) and sticker-pack's LoRAs (pedit.stickers.cartoon).
    """
    from pedit.errors import OutputError
    from pedit.files import write_text_atomic

    path = Path(path)
    known_file = cache_root("hashes") / f"{hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:32]}.json"
    folder = str(path.resolve())
    known = _read_known(known_file, folder)
    before = json.dumps(known, sort_keys=True)
    content = folder_hash(path, parts, known, skip)
    for gone in [rel for rel in known if not (path / rel).is_file()]:  # files deleted since: forget them
        del known[gone]
    if json.dumps(known, sort_keys=True) != before:
        try:  # the record only saves time: a cache that cannot be written costs a re-read next time
            known_file.parent.mkdir(parents=True, exist_ok=True)
            write_text_atomic(known_file, json.dumps({"folder": folder, "files": known,
                                                      "sha256": _record_check(folder, known)}), overwrite=True)
        except (OSError, OutputError):
            pass
    return content


def _record_check(folder: str, known: dict) -> str:
    return hashlib.sha256(json.dumps([folder, known], sort_keys=True).encode()).hexdigest()


def _read_known(path: Path, folder: str) -> dict:
    """The remembered hashes of `folder`'s files; {} (everything is hashed again) when the record is of another
    folder, or was altered after pedit wrote it (its own sha256 no longer matches): a record is a cache too."""
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not (isinstance(record, dict) and record.get("folder") == folder and isinstance(record.get("files"), dict)
            and record.get("sha256") == _record_check(folder, record["files"])):
        return {}
    return record["files"]


# ---- entries: a cache entry proves it belongs to its key (issue 27) -----------------------------------
# Every cache entry records, when it is written, the content hash of its files (`seal`); every read
# checks that the entry is still those files (`entry_problem`): regular files only, no link anywhere
# in it (a link could lead to another entry's or another model's files), and the same content hash.
# Hashes are remembered with each file's stat (`content_hash`), so a read re-hashes only a file that
# was replaced or written since: the check costs a stat per file.


def links_problem(folder: Path) -> str | None:
    """None when `folder` is a real folder holding only real folders and regular files, else what is not."""
    folder = Path(folder)
    if folder.is_symlink():
        return f"{folder} is a link"
    if not folder.is_dir():
        return f"{folder} is not a folder"
    stack = [folder]
    while stack:
        with os.scandir(stack.pop()) as entries:
            for e in entries:
                if e.is_symlink():
                    return f"{e.path} is a link (a cache entry holds only the files pedit wrote)"
                if e.is_dir(follow_symlinks=False):
                    stack.append(Path(e.path))
                elif not e.is_file(follow_symlinks=False):
                    return f"{e.path} is not a regular file"
    return None


def seal(folder: Path, names: list[str]) -> str:
    """The content hash of an entry's files `names` (relative to `folder`), to record as it is written."""
    return folder_hash(Path(folder), tuple(sorted(names)))


def entry_problem(folder: Path, names, sealed) -> str | None:
    """None when the entry at `folder` is still the files it was sealed with (`seal`), else what is wrong."""
    folder = Path(folder)
    if (why := links_problem(folder)) is not None:
        return why
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names) or not isinstance(sealed, str):
        return "its record of its files is missing or malformed"
    for name in names:
        path = folder / name
        if not path.resolve().is_relative_to(folder.resolve()):
            return f"its record names {name}, outside the entry"
        if not path.is_file():
            return f"{path} is missing"
    if content_hash(folder, tuple(sorted(names))) != sealed:
        return "its files are not the ones it was written with (their content hash differs from its record)"
    return None
