"""Nothing lost (pedit.files, load_photo): exclusive final writes, stale temps, hostile input files."""

from __future__ import annotations

import os
import subprocess
import sys
import threading

import numpy as np
import pytest
from PIL import Image, PngImagePlugin

from pedit.errors import InputImageError, OutputError
from pedit.files import TMP_SUFFIX, clean_stale_temps, temp_path, write_atomic
from pedit.photos.photo import load_photo, save_image_atomic


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_of_two_writers_racing_for_one_name_exactly_one_wins(tmp_path):
    target = tmp_path / "out.png"
    both_written = threading.Barrier(2)
    results = {}

    def writer(tag: bytes):
        def write(f):
            f.write(tag)
            both_written.wait(timeout=10)  # both have passed every check and hold a finished temp file
        try:
            write_atomic(target, write)
            results[tag] = "won"
        except OutputError as e:
            results[tag] = str(e)

    threads = [threading.Thread(target=writer, args=(t,)) for t in (b"first", b"second")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    winners = [tag for tag, r in results.items() if r == "won"]
    assert len(winners) == 1, results
    loser = ({b"first", b"second"} - set(winners)).pop()
    assert results[loser] == f"{target} already exists. Pass --overwrite to replace it, or choose another -o."
    assert target.read_bytes() == winners[0]  # the winner's file, not replaced by the loser's
    assert sorted(os.listdir(tmp_path)) == ["out.png"]  # and no temp left by either


def test_a_name_that_appears_during_the_write_is_kept(tmp_path, monkeypatch):
    target = tmp_path / "out.png"

    def write(f):
        f.write(b"mine")
        target.write_bytes(b"theirs")  # another process got there while this one was encoding

    with pytest.raises(OutputError, match="already exists"):
        write_atomic(target, write)
    assert target.read_bytes() == b"theirs" and os.listdir(tmp_path) == ["out.png"]
    write_atomic(target, lambda f: f.write(b"mine"), overwrite=True)  # --overwrite replaces, explicitly
    assert target.read_bytes() == b"mine"


def test_without_hard_links_the_name_is_still_taken_exclusively(tmp_path, monkeypatch):
    import errno

    def no_links(src, dst):
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_links)
    write_atomic(tmp_path / "a.png", lambda f: f.write(b"one"))
    with pytest.raises(OutputError, match="already exists"):
        write_atomic(tmp_path / "a.png", lambda f: f.write(b"two"))
    assert (tmp_path / "a.png").read_bytes() == b"one" and os.listdir(tmp_path) == ["a.png"]


def test_temps_of_killed_processes_are_removed_by_the_next_write_live_ones_are_kept(tmp_path):
    dead = tmp_path / temp_path(tmp_path / "x.png").name.replace(f"-{os.getpid()}-", f"-{_dead_pid()}-")
    dead.write_bytes(b"half")
    live = temp_path(tmp_path / "y.png")  # this process: alive, perhaps writing it right now
    live.write_bytes(b"in flight")
    foreign = tmp_path / f".z.png.otherhost-1-ab12{TMP_SUFFIX}"  # another machine on a shared folder
    foreign.write_bytes(b"theirs")
    save_image_atomic(Image.new("RGB", (16, 16)), tmp_path / "new.png")
    assert not dead.exists()
    assert live.exists() and foreign.exists() and (tmp_path / "new.png").exists()
    assert clean_stale_temps(tmp_path) == []


def test_a_fifo_named_like_an_image_is_refused_without_blocking(tmp_path):
    fifo = tmp_path / "photo.png"
    os.mkfifo(fifo)
    with pytest.raises(InputImageError, match="is not a regular file"):
        load_photo(fifo)  # an open() would wait forever for a writer


def test_a_multi_page_tiff_is_refused_not_silently_cut_to_one_page(tmp_path):
    pages = [Image.new("RGB", (32, 32), c) for c in ("red", "green", "blue")]
    pages[0].save(tmp_path / "scan.tif", save_all=True, append_images=pages[1:])
    with pytest.raises(InputImageError) as e:
        load_photo(tmp_path / "scan.tif")
    assert "holds 3 pages or frames (TIFF)" in str(e.value) and "drop the other 2" in str(e.value)


def test_an_animated_png_is_refused(tmp_path):
    frames = [Image.new("RGB", (32, 32), c) for c in ("red", "green")]
    frames[0].save(tmp_path / "anim.png", save_all=True, append_images=frames[1:])
    with pytest.raises(InputImageError, match="holds 2 pages or frames"):
        load_photo(tmp_path / "anim.png")


def test_a_decoder_exception_of_any_type_is_an_input_error(tmp_path):
    # A zTXt chunk that inflates past PIL's limit: PIL raises ValueError, not an OSError.
    info = PngImagePlugin.PngInfo()
    info.add_text("comment", "x" * (PngImagePlugin.MAX_TEXT_CHUNK + 10), zip=True)
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(tmp_path / "bomb.png", pnginfo=info)
    with pytest.raises(InputImageError) as e:
        load_photo(tmp_path / "bomb.png")
    assert "could not be decoded (ValueError: Decompressed data too large" in str(e.value)
