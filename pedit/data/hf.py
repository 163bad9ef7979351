"""Hugging Face `datasets` as training data: a saved dataset folder (`save_to_disk`) or a hub id,
read through a column map into a pair folder that `pedit train` validates and caches like any other.

The other way needs no code here: a pair folder's rows carry `x_A_file_name`-style keys
(pedit.data.pairs), so `datasets.load_dataset("imagefolder", data_dir=DIR)` reads it directly.

Column map (`--columns`): `x_A=input_image,x_B=edited_image,p_b=edit_prompt` — the InstructPix2Pix
training script's layout, the default when the dataset has those columns; a dataset made from a pair
folder (columns x_A, x_B, p_a, p_b, direction) needs no map either. `p_a` and `direction` come from a
column or a quoted constant (`p_a="a photo of a person"`); unmapped, p_a is the empty prompt and the
direction is "edit". `mask` may name a mask image column.

The dataset becomes a pair folder once, under pedit's cache (`$PEDIT_CACHE/datasets/<key>/`, the
key hashing the dataset's fingerprint, split and column map): the images' encoded bytes are written
as they are (no re-encoding), so a second run, and the latent cache inside that folder, are reused.
Disk: about the size of the dataset's images once more.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path

from pedit.errors import ConfigError, PairFolderError

MAPPABLE = ("x_A", "x_B", "p_a", "p_b", "direction", "mask")
REQUIRED = ("x_A", "x_B", "p_b")
IMAGE_COLUMNS = ("x_A", "x_B", "mask")
DEFAULTS = {"p_a": ("const", ""), "direction": ("const", "edit")}
INSTRUCT_PIX2PIX = {"x_A": "input_image", "x_B": "edited_image", "p_b": "edit_prompt"}
PAIR_FOLDER_LAYOUT = ("x_A", "x_B", "p_a", "p_b", "direction", "mask")
FORMAT = 2  # bump when the written folder changes for the same inputs (2: its record, ENTRY)


@dataclass(frozen=True)
class ColumnMap:
    """field → ("column", name) or ("const", text), for every field a pair needs."""

    fields: tuple[tuple[str, tuple[str, str]], ...]

    def get(self, field: str) -> tuple[str, str] | None:
        return dict(self.fields).get(field)

    def text(self) -> str:
        return ",".join(f"{f}={v}" if kind == "column" else f"{f}={json.dumps(v, ensure_ascii=False)}"
                        for f, (kind, v) in self.fields)


def _split_top(text: str) -> list[str]:
    """Split on commas outside double quotes."""
    parts, cur, quoted = [], [], False
    for ch in text:
        if ch == '"':
            quoted = not quoted
        if ch == "," and not quoted:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    if quoted:
        raise ConfigError(f"--columns {text!r} has an unclosed quote.")
    return [*parts, "".join(cur)]


def parse_columns(text: str) -> dict[str, tuple[str, str]]:
    """`x_A=input_image,x_B=edited_image,p_b=edit_prompt,p_a="a photo"` → field → (kind, value)."""
    found: dict[str, tuple[str, str]] = {}
    for item in (part.strip() for part in _split_top(text)):
        if not item:
            continue
        field, sep, value = (s.strip() for s in item.partition("="))
        if not sep or not field or not value:
            raise ConfigError(f"--columns entry {item!r} is not FIELD=COLUMN; write e.g. "
                              "--columns x_A=input_image,x_B=edited_image,p_b=edit_prompt.")
        if field not in MAPPABLE:
            raise ConfigError(f"--columns names {field!r}; the fields are {', '.join(MAPPABLE)}.")
        if field in found:
            raise ConfigError(f"--columns maps {field} twice.")
        if len(value) >= 2 and value[0] == value[-1] == '"':
            if field in IMAGE_COLUMNS:
                raise ConfigError(f"--columns {field} must name an image column, not a constant.")
            found[field] = ("const", value[1:-1])
        else:
            found[field] = ("column", value)
    if not found:
        raise ConfigError("--columns is empty; write e.g. --columns x_A=input_image,x_B=edited_image,p_b=edit_prompt.")
    return found


def column_map(given: dict[str, tuple[str, str]] | None, columns: list[str]) -> ColumnMap:
    """The full map for a dataset with `columns`: the given one, else a known layout; every required
    field present, every named column in the dataset (PairFolderError listing its columns)."""
    if given is None:
        if all(c in columns for c in INSTRUCT_PIX2PIX.values()):
            given = {f: ("column", c) for f, c in INSTRUCT_PIX2PIX.items()}
        elif all(c in columns for c in REQUIRED):
            given = {f: ("column", f) for f in PAIR_FOLDER_LAYOUT if f in columns}
        else:
            raise PairFolderError(f"The dataset's columns are {', '.join(columns)}; pass --columns to say which are "
                                  "x_A, x_B and p_b, e.g. --columns x_A=input_image,x_B=edited_image,p_b=edit_prompt.")
    missing = [f for f in REQUIRED if f not in given]
    if missing:
        raise ConfigError(f"--columns must map {', '.join(missing)} (x_A, x_B and p_b are required).")
    absent = [f"{f}={v}" for f, (kind, v) in given.items() if kind == "column" and v not in columns]
    if absent:
        raise PairFolderError(f"The dataset has no column for {', '.join(absent)}; its columns are {', '.join(columns)}.")
    full = {**DEFAULTS, **given}
    return ColumnMap(tuple((f, full[f]) for f in MAPPABLE if f in full))


def is_saved_dataset(path: Path) -> bool:
    """A folder `Dataset.save_to_disk` or `DatasetDict.save_to_disk` wrote."""
    return path.is_dir() and ((path / "state.json").is_file() or (path / "dataset_dict.json").is_file())


_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]{0,95}/[\w.-]{1,96}")


def looks_like_hub_id(data: str) -> bool:
    """`owner/name` that is no local path: read from the hub (or its local cache when offline)."""
    return _HUB_ID.fullmatch(data) is not None and not Path(data).exists() and ".." not in data


def load_source(data: str, split: str):
    """The `datasets.Dataset` behind --data: a saved folder, else a hub id (its split)."""
    try:
        import datasets
    except ImportError:
        raise ConfigError(f"{data} is not a pair folder; reading a datasets folder or hub id needs the `datasets` "
                          "package: pip install 'pedit[datasets]'.") from None
    path = Path(data)
    if _saved_without_rows(path, split):  # datasets' own loader fails on it with an IndexError
        raise PairFolderError(f"The dataset {data!r} has no rows; give a dataset with at least one pair.")
    try:
        if is_saved_dataset(path):
            ds = datasets.load_from_disk(str(path))
        elif path.exists():
            raise PairFolderError(f"{data} is neither a pair folder (no metadata.jsonl) nor a saved datasets folder "
                                  "(no state.json or dataset_dict.json from save_to_disk).")
        else:
            ds = datasets.load_dataset(data, split=split)
    except PairFolderError:
        raise
    except Exception as e:  # datasets raises many types: not found, offline, bad files
        where = "" if path.exists() else f" (there is no folder {data} here, so it was read as a hub id)"
        first = (str(e).splitlines() or [""])[0][:300]
        raise PairFolderError(f"Could not load the dataset {data!r}{where}: {type(e).__name__}: {first}") from None
    if isinstance(ds, datasets.DatasetDict):
        if split not in ds:
            raise PairFolderError(f"The dataset {data!r} has no split {split!r}; its splits are {', '.join(ds)}. "
                                  "Pass --split.")
        ds = ds[split]
    if len(ds) == 0:
        raise PairFolderError(f"The dataset {data!r} has no rows{'' if path.exists() else f' in split {split!r}'}; "
                              "give a dataset with at least one pair.")
    return ds


def _saved_without_rows(path: Path, split: str) -> bool:
    """A save_to_disk folder (or its `split`) whose state.json lists no data files: a dataset of no rows."""
    for state in (path / "state.json", path / split / "state.json"):
        try:
            files = json.loads(state.read_text(encoding="utf-8")).get("_data_files")
        except (OSError, ValueError, AttributeError):
            continue
        return files == []
    return False


def _check_types(ds, cmap: ColumnMap) -> None:
    """Image fields must be image columns and prompts string columns, before any row is read."""
    import datasets

    problems = []
    for field, (kind, name) in cmap.fields:
        if kind != "column":
            continue
        feature = ds.features[name]
        if field in IMAGE_COLUMNS and not isinstance(feature, datasets.Image):
            problems.append(f"{field}={name} is {feature!r}, not an image column")
        elif field not in IMAGE_COLUMNS and not (isinstance(feature, datasets.Value)
                                                and feature.dtype in ("string", "large_string")):
            problems.append(f"{field}={name} is {feature!r}, not a string column")
    if problems:
        raise PairFolderError("The column map does not fit the dataset: " + "; ".join(problems) + ".")


def _suffix(data: bytes) -> str:
    if data.startswith(b"\x89PNG"):
        return ".png"
    if data.startswith(b"\xff\xd8"):
        return ".jpg"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return ".webp"
    return ".img"  # read_pairs reports it when PIL cannot open it


ENTRY = ".pedit-dataset.json"  # the pair folder's record: its cache key and its files' content hash


def entry_problem(folder: Path, key: str) -> str | None:
    """None when the cached pair folder is the one written for `key`, its files as written (issue 27)."""
    from pedit.cache import entry_problem as files_problem

    try:
        record = json.loads((folder / ENTRY).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        record = None
    if not isinstance(record, dict):
        return f"{folder / ENTRY} is missing or unreadable (its record of what it was written from)"
    if record.get("key") != key:
        return "it was written from another dataset, split or column map"
    return files_problem(folder, record.get("files"), record.get("content"))


def materialize(ds, cmap: ColumnMap, folder: Path, progress=None, chunk: int = 256, key: str = "") -> None:
    """Write `ds` as a pair folder at `folder` (absent): images' bytes as stored, one row a pair.

    Rows are read as Arrow slices of the mapped columns (an image is its stored struct {bytes,
    path}): nothing is decoded, cast or copied into a new cache file."""
    arrow = ds.with_format("arrow")
    needed = sorted({v for _, (kind, v) in cmap.fields if kind == "column"})
    tmp = folder.parent / f".{folder.name}.tmp-{secrets.token_hex(4)}"
    (tmp / "images").mkdir(parents=True)
    problems = []
    try:
        with open(tmp / "metadata.jsonl", "w", encoding="utf-8") as fh:
            for start in range(0, len(ds), chunk):
                for i, rec in enumerate(arrow[start:start + chunk].select(needed).to_pylist(), start=start):
                    row, why = _row(i, rec, cmap, tmp)
                    if why:
                        problems.append(f"dataset row {i}: {why}")
                        continue
                    fh.write(json.dumps(row, ensure_ascii=False) + "\n")
                if progress is not None:
                    progress(min(start + chunk, len(ds)), len(ds))
        if problems:
            from pedit.data.pairs import problem_list

            raise PairFolderError(f"The dataset has {problem_list(problems)}. Fix or remove those rows.")
        from pedit.cache import seal

        files = sorted(str(p.relative_to(tmp)) for p in tmp.rglob("*") if p.is_file())
        (tmp / ENTRY).write_text(json.dumps({"key": key, "files": files, "content": seal(tmp, files)}))
        try:
            os.rename(tmp, folder)
        except OSError:
            if not (folder / "metadata.jsonl").is_file():  # not another process's finished copy
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _row(i: int, rec: dict, cmap: ColumnMap, tmp: Path) -> tuple[dict, str | None]:
    row: dict = {"id": f"{i:08d}", "source_row": i, "seed": 0}
    for field, (kind, value) in cmap.fields:
        got = value if kind == "const" else rec[value]
        if field in IMAGE_COLUMNS:
            data = got.get("bytes") if isinstance(got, dict) else None
            if not data:
                return {}, f"{field} ({value}) holds no image bytes" + (" (a path-only image)" if got else "")
            rel = f"images/{i:08d}_{field}{_suffix(data)}"
            (tmp / rel).write_bytes(data)
            row[field] = row[field + "_file_name"] = rel
        elif not isinstance(got, str):
            return {}, f"{field} ({value}) is {got!r}, not a string"
        else:
            row[field] = got
    if not row["direction"].strip():
        return {}, "direction is empty"
    return row, None


def dataset_pair_folder(data: str, columns: str | None, split: str = "train", say=lambda s: None,
                        progress=None) -> Path:
    """The pair folder for --data DATASET (written once, then reused): validated types first."""
    from pedit.cache import cache_root

    ds = load_source(data, split)
    cmap = column_map(parse_columns(columns) if columns else None, list(ds.column_names))
    _check_types(ds, cmap)
    key = hashlib.sha256(json.dumps([FORMAT, ds._fingerprint, split, len(ds), cmap.text()]).encode()).hexdigest()
    folder = cache_root() / "datasets" / key[:20]
    if os.path.lexists(folder):
        if (why := entry_problem(folder, key)) is not None:
            raise PairFolderError(f"The cached pair folder {folder} of dataset {data} is damaged ({why}); delete "
                                  "it to write it again.")
        say(f"dataset {data} ({len(ds)} rows, {cmap.text()}): pair folder {folder} (cached)")
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    say(f"dataset {data} ({len(ds)} rows, {cmap.text()}): writing pair folder {folder}")
    materialize(ds, cmap, folder, progress, key=key)
    return folder
