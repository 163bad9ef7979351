"""The pair folder: what every gen-pairs source writes and what train and eval read.

`metadata.jsonl`, one JSON object a line, with at least `id`, `x_A`, `x_B` (paths relative to
the folder), `direction`, `p_a`, `p_b`, `seed`; optional `mask` (ground truth, toon only) and
per-pair scores. Each image path is also written as `x_A_file_name`, `x_B_file_name`,
`mask_file_name` (after the plain keys): the keys Hugging Face `datasets`' imagefolder loader turns
into image columns named `x_A`, `x_B`, `mask`, so `load_dataset("imagefolder", data_dir=DIR)` reads
a pair folder as is. Rows with only the plain keys (folders written before) or only the
`*_file_name` keys are read the same; where a row has both, pedit reads the plain key. Pair folders get shared, so they are untrusted: a path that leaves the folder
(`../`, absolute, a link pointing outside) is rejected, and every image is checked before
training starts, not at step 10,000.
"""

from __future__ import annotations

import json
import os
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

from pedit.data.directions import without_subject
from pedit.errors import PairFolderError
from pedit.files import regular_file_problem, write_atomic

try:
    import fcntl
except ImportError:  # Windows: no flock; concurrent writers to one folder are not supported there
    fcntl = None

METADATA = "metadata.jsonl"
REQUIRED_FIELDS = ("id", "x_A", "x_B", "direction", "p_a", "p_b", "seed")
TEXT_FIELDS = ("direction", "p_a", "p_b")  # and, when present, the optional "task" and "p"
SEED_LIMIT = 2**63  # seeds are non-negative and fit numpy's and torch's generators
IMAGE_FIELDS = ("x_A", "x_B", "mask")
FILE_NAME = "_file_name"  # datasets' imagefolder: `<column>_file_name` → an image column <column>
MAX_REPORTED = 10


@dataclass(frozen=True)
class Pair:
    id: str
    x_A: Path
    x_B: Path
    direction: str
    p_a: str
    p_b: str
    seed: int
    row: int  # 1-based line of metadata.jsonl, for messages
    mask: Path | None = None
    extra: dict = field(default_factory=dict, compare=False)


def direction_of(pair: Pair) -> dict:
    """The direction a pair was made for, as Direction fields (task and p from the row when present).

    The prompts are the direction's template, with "person" where gen-pairs put this pair's subject
    ("an old man, santa claus costume" was made from "a person, santa claus costume"): the row's
    "template" when it has one; for an older SD folder, its prompts with the recorded "subject"
    put back to "person"; else (toon pairs) the row's own prompts."""
    p = pair.extra.get("p", pair.p_a)
    prompts = {"p_a": pair.p_a, "p_b": pair.p_b, "p": p}
    template, subject = pair.extra.get("template"), pair.extra.get("subject")
    if isinstance(template, dict) and all(isinstance(template.get(k), str) and template[k] for k in prompts):
        prompts = {k: template[k] for k in prompts}
    elif isinstance(subject, str) and subject:
        prompts = {k: without_subject(v, subject) for k, v in prompts.items()}
    return {"name": pair.direction, "task": pair.extra.get("task", "custom"), **prompts}


def safe_path(root: Path, rel, what: str) -> Path:
    """`rel` resolved inside `root`, or PairFolderError: absolute paths, `..` and escaping links are refused."""
    if not isinstance(rel, str) or not rel:
        raise PairFolderError(f"{what} must be a non-empty relative path, got {rel!r}")
    p = Path(rel)
    if p.is_absolute() or rel.startswith(("/", "\\")) or ".." in p.parts:
        raise PairFolderError(f"{what} {rel!r} leaves the pair folder (only paths inside it are allowed)")
    full = (root / p).resolve()
    if not full.is_relative_to(root.resolve()):
        raise PairFolderError(f"{what} {rel!r} is a link that points outside the pair folder")
    return full


def _check_image(path: Path) -> tuple[str | None, tuple[int, int] | None]:
    """(None, size) if `path` is a readable image, else (what is wrong with it, None)."""
    if (why := regular_file_problem(path)) is not None:  # a FIFO named like an image would hang the open
        return why, None
    try:
        with Image.open(path) as im:
            im.verify()
        with Image.open(path) as im:
            im.load()  # verify() does not decode; a truncated PNG fails only here
            size = im.size
    except Exception as e:  # PIL raises many types for broken files
        return f"is not a readable image ({type(e).__name__})", None
    return None, size


def row_path(rec: dict, field: str):
    """The path a row gives for image `field`: `field`, else `field_file_name` (None when neither)."""
    return rec.get(field, rec.get(field + FILE_NAME))


def _image_keys(rec: dict) -> dict:
    """field → relative path for each image the row names: the plain key where it has one (what
    pedit has always read, and what the path checks and messages name), else `field_file_name`."""
    return {f: row_path(rec, f) for f in IMAGE_FIELDS if f in rec or f + FILE_NAME in rec}


def _row_problem(rec: dict) -> str | None:
    """What is wrong with the types of a row's fields (a list as direction, null as a prompt), or None."""
    if isinstance(rec["id"], bool) or not isinstance(rec["id"], (str, int)) or rec["id"] == "":
        return f"id must be a non-empty string or an integer, got {rec['id']!r}"
    for f in TEXT_FIELDS + tuple(f for f in ("task", "p") if f in rec):
        if not isinstance(rec[f], str):
            return f"{f} must be a string, got {rec[f]!r}"
    if not rec["direction"].strip():
        return "direction must not be empty"
    seed = rec["seed"]
    if isinstance(seed, bool) or not isinstance(seed, int):
        return f"seed must be an integer, got {seed!r}"
    if not 0 <= seed < SEED_LIMIT:
        return f"seed must be from 0 to 2**63 - 1, got {seed!r}"
    return None


def problem_list(problems: list[str]) -> str:
    """'N problem(s): a | b | ... and K more': the first MAX_REPORTED of a folder's or dataset's problems,
    on one line (an `Error:` is one line, whatever it lists)."""
    more = f" | ... and {len(problems) - MAX_REPORTED} more" if len(problems) > MAX_REPORTED else ""
    return f"{len(problems)} problem(s): " + " | ".join(problems[:MAX_REPORTED]) + more


def read_pairs(folder: str | Path, check_images: bool = True, progress: Callable[[int, int], None] | None = None) -> list[Pair]:
    """Every pair of a pair folder, validated. All problems are collected and reported at once."""
    root = Path(folder)
    if not root.is_dir():
        raise PairFolderError(f"Pair folder {root} does not exist (make one with `pedit gen-pairs -o {root}`).")
    meta = root / METADATA
    if not meta.exists():
        raise PairFolderError(f"{root} has no {METADATA}; a pair folder is what `pedit gen-pairs` writes.")
    if (why := regular_file_problem(meta)) is not None:
        raise PairFolderError(f"{meta} {why}; it must be a regular file.")
    safe_path(root, METADATA, METADATA)  # a link to a file elsewhere is not this folder's metadata
    pairs, problems, first_row = [], [], {}
    lines = meta.read_bytes().splitlines()
    for row, raw in enumerate(lines, start=1):
        where = f"row {row}"
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            problems.append(f"{where}: not UTF-8 text (byte 0x{raw[e.start]:02x} at column {e.start + 1})")
            continue
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            if not isinstance(rec, dict):
                raise ValueError("not a JSON object")
        except ValueError as e:
            problems.append(f"{where}: not a JSON object ({e})")
            continue
        where = f"row {row} (id {rec.get('id')!r})"
        given = _image_keys(rec)
        missing = [f for f in REQUIRED_FIELDS if f not in rec and f not in given]
        if missing:
            problems.append(f"{where}: missing {', '.join(missing)}")
            continue
        try:
            paths = {f: safe_path(root, given[f], f) for f in IMAGE_FIELDS if f in given}
        except PairFolderError as e:
            problems.append(f"{where}: {e}")
            continue
        if (why := _row_problem(rec)) is not None:
            problems.append(f"{where}: {why}")
            continue
        if str(rec["id"]) in first_row:  # two writers made one pair: train would see it twice
            problems.append(f"{where}: duplicate id, first written in row {first_row[str(rec['id'])]}")
            continue
        first_row[str(rec["id"])] = row
        extra = {k: v for k, v in rec.items()
                 if k not in REQUIRED_FIELDS + IMAGE_FIELDS and k not in {f + FILE_NAME for f in IMAGE_FIELDS}}
        pairs.append(Pair(str(rec["id"]), paths["x_A"], paths["x_B"], rec["direction"], rec["p_a"], rec["p_b"],
                          rec["seed"], row, paths.get("mask"), extra))
    if check_images:
        problems += _check_images(pairs, root, progress)
    if problems:
        raise PairFolderError(f"Pair folder {root} has {problem_list(problems)}. Fix or remove those rows.")
    if not pairs:
        raise PairFolderError(f"Pair folder {root} has no pairs ({METADATA} is empty).")
    return pairs


def _check_images(pairs: list[Pair], root: Path, progress: Callable[[int, int], None] | None) -> list[str]:
    """Every image readable, and all of one size: a pair folder holds one geometry (a stray image of
    another size or aspect would be silently stretched into it by load_rgb)."""
    problems, first = [], None
    for i, pair in enumerate(pairs):
        for f in IMAGE_FIELDS:
            path = getattr(pair, f)
            if path is None:
                continue
            where = f"row {pair.row} (id {pair.id!r}): {f} '{path.relative_to(root.resolve())}'"
            why, size = _check_image(path)
            if why is None and first is None:
                first = (size, where)
            elif why is None and size != first[0]:
                why = f"is {size[0]}x{size[1]}, but {first[1]} is {first[0][0]}x{first[0][1]}; all images of a pair folder have one size"
            if why is not None:
                problems.append(f"{where} {why}")
        if progress is not None:
            progress(i + 1, len(pairs))
    return problems


def square_rgb(image: Image.Image, size: int) -> np.ndarray:
    """Any PIL image → (size, size, 3) uint8 RGB, resized with Lanczos when needed."""
    image = image.convert("RGB")
    if image.size != (size, size):
        image = image.resize((size, size), Image.LANCZOS)
    return np.array(image)  # writable: torch.from_numpy in DataLoader workers


def load_rgb(path: Path, size: int) -> np.ndarray:
    """A pair image as (size, size, 3) uint8."""
    with Image.open(path) as im:
        return square_rgb(im, size)


@contextmanager
def locked(path: Path):
    """`path` opened for reading and appending, under an exclusive lock (fcntl.flock, where the
    system has it): of the processes appending to one folder's jsonl, one at a time checks and writes."""
    with open(path, "a+b") as fh:
        if fcntl is not None:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)  # released when the file closes
        yield fh


class PairWriter:
    """Writes a pair folder atomically and resumably.

    Under the lock, images go to a temp file then are renamed; the metadata row is appended (one
    write, flushed) only after its images exist, so an interrupted run leaves no row without images, and a rerun
    skips the ids already written. Several processes (`--shard I/N`, or two runs on one folder)
    may append to one folder: each append happens under a lock on metadata.jsonl, after reading
    the rows the others added since, so an id is written once however many processes make it.
    """

    def __init__(self, folder: str | Path):
        self.root = Path(folder)
        (self.root / "images").mkdir(parents=True, exist_ok=True)
        self.meta = self.root / METADATA
        self.done: set[str] = set()
        self._read_to = 0  # metadata.jsonl up to this byte has been read into `done`
        if self.meta.exists():
            with locked(self.meta) as fh:
                self._catch_up(fh)

    def _catch_up(self, fh) -> None:
        """Read the rows appended since the last look (under the lock). A last line without its
        newline is a write cut by an interruption (a row and its newline go out in one write, under
        the lock): cut it off, or the next row would be glued onto it."""
        fh.seek(0, os.SEEK_END)
        if fh.tell() < self._read_to:  # replaced under us (not by a PairWriter): read it afresh
            self._read_to = 0
        fh.seek(self._read_to)
        data = fh.read()
        end = data.rfind(b"\n") + 1
        for line in data[:end].decode("utf-8", errors="replace").splitlines():
            try:
                self.done.add(str(json.loads(line)["id"]))
            except (ValueError, KeyError, TypeError):
                continue  # a line cut by an interruption: its pair is written again
        self._read_to += end
        if end < len(data):
            fh.truncate(self._read_to)

    def has(self, pair_id: str) -> bool:
        return pair_id in self.done

    def _save_png(self, arr: np.ndarray, rel: str) -> None:
        # Replacing is right here: an image without its row is what an interrupted run left behind.
        write_atomic(self.root / rel, lambda f: Image.fromarray(arr).save(f, format="PNG"), overwrite=True)

    def write(self, row: dict, images: dict[str, np.ndarray]) -> bool:
        """`images` maps a field (x_A, x_B, mask) to a uint8 array; paths go to images/<id>_<field>.png.
        Returns False when another process wrote this id meanwhile (its row and images stay, ours are dropped).

        The lock is taken first: images written before it could replace those of a process whose row
        for this id is already in (a row scored on one run's images, beside the other run's images)."""
        row = dict(row)
        with locked(self.meta) as fh:
            self._catch_up(fh)
            if str(row["id"]) in self.done:
                return False
            for f, arr in images.items():
                rel = f"images/{row['id']}_{f}.png"
                self._save_png(arr, rel)  # under the lock: no row names it yet, so replacing is safe
                row[f] = rel
            for f in images:  # after every plain key: imagefolder lets the later key name the column's type
                row[f + FILE_NAME] = row[f]
            line = (json.dumps(row) + "\n").encode("utf-8")
            fh.seek(0, os.SEEK_END)
            fh.write(line)
            fh.flush()
            os.fsync(fh.fileno())
            self._read_to += len(line)
        self.done.add(str(row["id"]))
        return True
