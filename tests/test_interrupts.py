"""Stopped or failing half-way, an item keeps all its files or none (issue 19, items 3 and 10).

SIGTERM (what `timeout`, systemd and container runtimes send) must stop a batch edit as Ctrl-C
does; a failure on an item's last file must leave the earlier result of `--overwrite` in place.
"""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from pedit.cli import cli
from pedit.errors import OutputError
from pedit.files import TMP_SUFFIX, commit_all, stage

ROOT = Path(__file__).resolve().parents[1]
FAST = ["--steps", "2", "--mask-noises", "2", "--device", "cpu", "--no-identity-check", "-q"]
ENV = {"COLUMNS": "1000", "PEDIT_DEBUG": None}


def _photo(path: Path, seed: int) -> Path:
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(path)
    return path


# The edit runs in a child process, whose Image.save sends SIGTERM to the process itself while it
# writes the second file of the first item (its mask): the moment a real `timeout` could hit.
_CHILD = textwrap.dedent("""
    import os, signal, sys
    from PIL import Image
    saves = []
    real_save = Image.Image.save
    def save(self, fp, *args, **kwargs):
        saves.append(fp)
        if len(saves) == 2:
            os.kill(os.getpid(), signal.SIGTERM)
        return real_save(self, fp, *args, **kwargs)
    Image.Image.save = save
    from pedit.cli.main import main
    main(sys.argv[1:])
""")


def test_sigterm_during_an_item_leaves_none_of_its_files(random_model, tmp_path):
    inputs = [_photo(tmp_path / f"{n}.png", i) for i, n in enumerate("ab")]
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "1000"}
    env.pop("PEDIT_DEBUG", None)
    child = subprocess.run([sys.executable, "-c", _CHILD, "edit", *map(str, inputs), "-d", "royal", "-o", str(out),
                            "--save-mask", "-m", str(random_model), *FAST],
                           env=env, capture_output=True, text=True, timeout=300)
    assert child.returncode != 0, child.stderr  # it was stopped, and says so
    assert "Traceback" not in child.stderr
    left = sorted(os.listdir(out)) if out.exists() else []
    assert left == [], left  # not a_royal.png without its mask and overlay, and no temp file


def test_a_failure_on_an_items_last_file_keeps_the_earlier_overwritten_result(random_model, tmp_path, monkeypatch):
    src = _photo(tmp_path / "pic.png", 0)
    args = ["edit", str(src), "-d", "royal", "--save-mask", "-m", str(random_model), *FAST]
    assert CliRunner().invoke(cli, args, env=ENV).exit_code == 0
    names = ["pic_royal.png", "pic_royal_mask.png", "pic_royal_overlay.png"]
    before = {n: (tmp_path / n).read_bytes() for n in names}

    real_save, saves = Image.Image.save, []

    def disk_full_on_the_overlay(self, fp, *a, **kw):
        saves.append(fp)
        if len(saves) == 3:  # edit, mask, overlay: the item's last file
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(self, fp, *a, **kw)

    monkeypatch.setattr(Image.Image, "save", disk_full_on_the_overlay)
    r = CliRunner().invoke(cli, [*args, "--overwrite", "--seed", "7"], env=ENV)
    assert r.exit_code == 1 and "No space left on device" in r.stderr, r.output
    assert {n: (tmp_path / n).read_bytes() for n in names} == before  # the earlier result, whole
    assert not list(tmp_path.glob(f"*{TMP_SUFFIX}"))


def test_commit_all_puts_back_the_earlier_files_when_a_rename_fails(tmp_path, monkeypatch):
    paths = [tmp_path / n for n in ("a.png", "b.png", "c.png")]
    for p in paths:
        p.write_bytes(b"old " + p.name.encode())
    staged = [(stage(p, lambda f, p=p: f.write(b"new " + p.name.encode())), p) for p in paths]
    real_replace = os.replace

    def third_rename_fails(src, dst):
        if Path(src) == staged[2][0]:  # the new c.png
            raise OSError(errno.EIO, "Input/output error")
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", third_rename_fails)
    with pytest.raises(OSError):
        commit_all(staged, overwrite=True)
    assert [p.read_bytes() for p in paths] == [b"old a.png", b"old b.png", b"old c.png"]
    assert sorted(os.listdir(tmp_path)) == ["a.png", "b.png", "c.png"]  # no backup or temp left


def test_commit_all_without_overwrite_never_removes_a_file_it_did_not_write(tmp_path):
    mine, theirs = tmp_path / "mine.png", tmp_path / "theirs.png"
    staged = [(stage(mine, lambda f: f.write(b"mine")), mine), (stage(theirs, lambda f: f.write(b"mine too")), theirs)]
    theirs.write_bytes(b"theirs")  # another process took the name meanwhile
    with pytest.raises(OutputError, match="already exists"):
        commit_all(staged, overwrite=False)
    assert not mine.exists() and theirs.read_bytes() == b"theirs"


def test_ctrl_c_during_the_renames_waits_until_the_item_is_whole(tmp_path):
    # In a fresh process whose Ctrl-C raises KeyboardInterrupt, whatever the test runner's disposition: a
    # suite started in the background by a non-interactive shell (`nohup make test &`) has SIGINT ignored,
    # inherited, and then no Ctrl-C interrupts anything (pedit rightly keeps an ignored signal ignored).
    code = f"""
import os, signal, sys
from pathlib import Path
from pedit.files import commit_all, stage

signal.signal(signal.SIGINT, signal.default_int_handler)  # as in an interactive terminal

paths = [Path({str(tmp_path / 'a.png')!r}), Path({str(tmp_path / 'b.png')!r})]
staged = [(stage(p, lambda f: f.write(b"x")), p) for p in paths]
real_link = os.link

def link_then_ctrl_c(src, dst):
    real_link(src, dst)
    if Path(dst) == paths[0]:
        signal.raise_signal(signal.SIGINT)  # Ctrl-C between the item's two renames

os.link = link_then_ctrl_c
try:
    commit_all(staged, overwrite=False)
except KeyboardInterrupt:
    print("interrupted after", sorted(p.name for p in paths if p.exists()))
    sys.exit(0)
print("not interrupted")
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr
    # The interrupt came after both renames, not between them: the item is whole.
    assert done.stdout.strip() == "interrupted after ['a.png', 'b.png']"
    assert all(p.read_bytes() == b"x" for p in (tmp_path / "a.png", tmp_path / "b.png"))


def test_eval_photos_overwrite_keeps_the_earlier_report_when_the_new_one_fails(tmp_path, monkeypatch):
    args = ["eval", "--photos", str(ROOT / "examples" / "astronaut.png"), "-d", "royal", "-o", str(tmp_path / "r"),
            "--steps", "1", "--device", "cpu", "-q"]
    assert CliRunner().invoke(cli, args, env=ENV).exit_code == 0
    before = {p.name: p.read_bytes() for p in (tmp_path / "r").iterdir()}
    real_replace = os.replace

    def grid_rename_fails(src, dst):
        if Path(dst).name == "grid.png" and "grid.png" in Path(src).name and TMP_SUFFIX in str(src) \
                and Path(src).read_bytes() != before["grid.png"]:  # the new grid, not the backup put back
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", grid_rename_fails)
    r = CliRunner().invoke(cli, [*args, "--overwrite", "--seed", "5"], env=ENV)
    assert r.exit_code == 1 and "No space left on device" in r.stderr, r.output
    assert {p.name: p.read_bytes() for p in (tmp_path / "r").iterdir()} == before  # whole, and no temp


def test_the_temp_folder_of_a_killed_sticker_pack_is_removed_by_the_next_run(tmp_path):
    from pedit.files import clean_stale_temps, temp_path

    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()  # a process that no longer exists, as a kill -9 leaves it
    half = tmp_path / temp_path(tmp_path / "pack").name.replace(f"-{os.getpid()}-", f"-{child.pid}-")
    (half / "stickers").mkdir(parents=True)
    (half / "stickers" / "laughing.png").write_bytes(b"half a pack")
    live = temp_path(tmp_path / "other-pack")  # this process's own: a live writer's, kept
    live.mkdir()
    assert clean_stale_temps(tmp_path) == [half]
    assert not half.exists() and live.is_dir()
