"""The files of an engines folder: one export at a time, graphs built aside and moved in whole.

    lock            `exclusive(out)`: an advisory lock on out/.export.lock (flock), held for a whole
                    export. A second export into the folder fails at once (`pedit export`) or waits
                    (a backend filling its cache); the kernel drops the lock when its holder dies,
                    so a killed export never leaves the folder locked.
    temp folders    every graph is exported into `.NAME.HOST-PID-HEX.pedit-tmp/` inside the folder
                    (pedit.files.temp_path's naming), converted there and only then moved into place;
                    parity failures, Ctrl-C and errors remove it. What a killed export left (temp
                    folders, old-style `.x.onnx.PID.tmp` files) is removed by the next export there:
                    those of processes gone from this host (a live writer's temps stay).
    shapes          every graph declares the spec's input and output shapes (`finish_graph`).
    external data   a graph whose weights pass `external_bytes` is saved as `<name>.onnx` + one
                    `<name>.onnx.data` (protobuf cannot hold more than 2 GiB: the SD 1.5 U-Net is
                    about 3.4 GB in fp32). torch's exporter writes one file per tensor for such
                    models; they are gathered into the one data file in the temp folder.
    records         {file, sha256, stat[, data: {file, sha256, stat}]}: graph and data hashed.
"""

from __future__ import annotations

import os
import re
import shutil
from contextlib import contextmanager
from pathlib import Path

from pedit.cache import file_sha256, stat_key
from pedit.errors import OutputError, PeditError
from pedit.files import TMP_SUFFIX, LockBusy, held_lock, process_alive, temp_path

LOCK = ".export.lock"
_HOST = temp_path(Path("x")).name.split(".")[2].rsplit("-", 2)[0]  # this host, as temp_path writes it
_TEMP = re.compile(rf"\..+\.(?P<host>[A-Za-z0-9-]+)-(?P<pid>\d+)-[0-9a-f]+{re.escape(TMP_SUFFIX)}")
# Old exports named their temps ".unet.onnx.1234.tmp", ".manifest.json.1234.tmp", "unet.plan.tmp".
_OLD_TEMP = re.compile(r"\..+\.(?P<pid>\d+)\.tmp|(unet|image_projector|text_encoder|vae_encoder|vae_decoder)\.plan\.tmp")


class GraphFilesError(PeditError):
    """An engines folder whose graph or data file is missing or differs from its manifest."""


@contextmanager
def exclusive(out: Path, wait: bool = False):
    """Hold `out`'s export lock for the block (OutputError when another export holds it and not `wait`)."""
    try:
        with held_lock(out / LOCK, wait):
            yield
    except LockBusy as busy:
        raise OutputError(f"Another pedit export (pid {busy.holder}) is writing into {out}; wait for it to finish, "
                          "or export into another folder.") from None


def clean_debris(out: Path) -> list[Path]:
    """Remove what killed exports left in `out` (temp folders and files of dead processes on this
    host: `-o .` may share a folder with other pedit writers, whose live temps stay)."""
    removed = []
    for p in Path(out).iterdir():
        m = _TEMP.fullmatch(p.name) or _OLD_TEMP.fullmatch(p.name)
        if m is None:
            continue
        pid = m.groupdict().get("pid")
        if pid is not None and (m.groupdict().get("host", _HOST) != _HOST or process_alive(int(pid))):
            continue
        try:
            shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
            removed.append(p)
        except OSError:
            pass
    return removed


@contextmanager
def staging(out: Path, stem: str):
    """A temp folder inside `out` for one graph; removed on exit whatever happened."""
    folder = temp_path(out / stem)
    folder.mkdir()
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def data_name(graph: str) -> str:
    return f"{graph}.data"


def finish_graph(graph: Path, spec, external_bytes: int) -> bool:
    """Declare the spec's input/output shapes in `graph` (in its staging folder) and, when its weights
    pass `external_bytes` (or torch already wrote them apart), put them all in one `<graph>.data`
    beside it; True when it did.

    The exporter declares some static dims symbolically (the VAE encoder's h and w: traced through
    `.shape` reads); the spec's shapes ("B" the one dynamic axis) are what the graph computes, and
    parity checks them against torch."""
    import onnx

    folder = graph.parent
    loose = [p for p in folder.iterdir() if p != graph]
    large = bool(loose) or graph.stat().st_size > external_bytes
    model = onnx.load(str(graph), load_external_data=large)
    shapes = {t.name: t.shape for t in (*spec.inputs, *spec.outputs)}
    for value in (*model.graph.input, *model.graph.output):
        dims = value.type.tensor_type.shape.dim
        for dim, want in zip(dims, shapes.get(value.name, ())):
            if isinstance(want, int):
                dim.dim_value = want  # clears dim_param (a oneof)
            else:
                dim.dim_param = want
    for p in loose:
        p.unlink()
    graph.unlink()
    if not large:
        onnx.save_model(model, str(graph))
        return False
    # Small constants stay inline: ONNX Runtime needs shape-like ones (Unsqueeze axes) in the graph.
    onnx.save_model(model, str(graph), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=data_name(graph.name), size_threshold=1024, convert_attribute=True)
    # onnx creates the data file with mode 0600; give it the graph's (the umask's) so both read alike
    os.chmod(graph.with_name(data_name(graph.name)), graph.stat().st_mode & 0o777)
    return True


def record(path: Path, data: bool) -> dict:
    """The manifest's record of a graph (and its data file)."""
    rec = {"file": path.name, "sha256": file_sha256(path), "stat": stat_key(path.stat())}
    if data:
        d = path.with_name(data_name(path.name))
        rec["data"] = {"file": d.name, "sha256": file_sha256(d), "stat": stat_key(d.stat())}
    return rec


def move_into_place(staged: Path, out: Path, data: bool) -> Path:
    """Move a staged graph (data first, then the graph) into `out`; a stale old data file goes."""
    final = out / staged.name
    old_data = out / data_name(staged.name)
    if data:
        os.replace(staged.with_name(data_name(staged.name)), old_data)
    else:
        old_data.unlink(missing_ok=True)
    os.replace(staged, final)
    return final


def _intact_file(out: Path, rec: dict) -> str | None:
    """None when `rec`'s file is there with the recorded bytes, else what is wrong."""
    path = out / str(rec.get("file", ""))
    if not rec.get("file") or not path.is_file():
        return f"{path} is missing"
    if rec.get("stat") == stat_key(path.stat()):
        return None  # unchanged since it was hashed (a multi-GB file is not re-read in every process)
    if file_sha256(path) != rec.get("sha256"):
        return f"{path} differs from the one exported (its sha256 is not the manifest's)"
    return None


def problem(out: Path, rec: dict | None) -> str | None:
    """What is wrong with a recorded graph and its data file, or None when both are intact."""
    if not rec:
        return "no graph is recorded"
    return _intact_file(out, rec) or (_intact_file(out, rec["data"]) if "data" in rec else None)


def check_intact(out: Path, rec: dict, fix: str) -> None:
    """GraphFilesError (one line, with `fix`) unless the recorded graph and data are intact."""
    if (why := problem(out, rec)) is not None:
        raise GraphFilesError(f"{why}; {fix}")
