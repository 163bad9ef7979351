"""Pair folders are untrusted (pedit.data.pairs): paths that leave the folder are refused, every problem is
reported with its row, field and path before training starts, and the writer is atomic, resumable
and shardable (pedit.data.gen_pairs)."""

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pedit.toon import world as toon
from pedit.data.directions import BUILTIN
from pedit.errors import PairFolderError
from pedit.data.gen_pairs import GenPairsConfig, generate_pairs
from pedit.data.pairs import PairWriter, read_pairs

TAIL = ". Fix or remove those rows."


def _rows(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "metadata.jsonl").read_text().splitlines()]


def _write_rows(folder: Path, rows: list) -> None:
    lines = [r if isinstance(r, str) else json.dumps(r) for r in rows]
    (folder / "metadata.jsonl").write_text("".join(line + "\n" for line in lines))


def _set(folder: Path, index: int, **changes) -> None:
    rows = _rows(folder)
    rows[index].update(changes)
    _write_rows(folder, rows)


def _problems(folder: Path, check_images: bool = True) -> str:
    with pytest.raises(PairFolderError) as e:
        read_pairs(folder, check_images=check_images)
    return str(e.value)


def _one(folder: Path, problem: str) -> str:
    return f"Pair folder {folder} has 1 problem(s): {problem}{TAIL}"


def _png(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.array(im)


# ---------------------------------------------------------------- a valid folder


def test_a_generated_folder_reads_back_in_row_order(tiny_pairs):
    seen = []
    pairs = read_pairs(tiny_pairs, progress=lambda done, total: seen.append((done, total)))
    assert [p.id for p in pairs] == [f"{i:06d}" for i in range(8)]
    assert [p.row for p in pairs] == list(range(1, 9))
    assert [p.seed for p in pairs] == list(range(8))
    assert [p.direction for p in pairs] == list(BUILTIN)
    assert [(p.p_a, p.p_b) for p in pairs] == [(d.p_a, d.p_b) for d in BUILTIN.values()]
    root = tiny_pairs.resolve()
    assert pairs[2].x_B == root / "images" / "000002_x_B.png" and pairs[2].mask == root / "images" / "000002_mask.png"
    assert sorted(pairs[0].extra) == ["imperfection", "p", "source", "task"]
    assert seen == [(i, 8) for i in range(1, 9)]


# ---------------------------------------------------------------- unsafe paths


def test_a_parent_path_leaves_the_pair_folder(tiny_pairs_copy):
    _set(tiny_pairs_copy, 0, x_A="../outside.png")
    assert _problems(tiny_pairs_copy) == _one(
        tiny_pairs_copy, "row 1 (id '000000'): x_A '../outside.png' leaves the pair folder (only paths inside it are allowed)")


def test_an_absolute_path_leaves_the_pair_folder(tiny_pairs_copy, tmp_path):
    outside = tmp_path / "outside.png"
    shutil.copy(tiny_pairs_copy / "images" / "000000_x_A.png", outside)  # a perfectly good image, but not ours
    _set(tiny_pairs_copy, 3, x_B=str(outside))
    assert _problems(tiny_pairs_copy) == _one(
        tiny_pairs_copy, f"row 4 (id '000003'): x_B '{outside}' leaves the pair folder (only paths inside it are allowed)")


def test_a_link_inside_the_folder_that_points_outside_is_refused(tiny_pairs_copy, tmp_path):
    outside = tmp_path / "outside.png"
    shutil.copy(tiny_pairs_copy / "images" / "000000_x_A.png", outside)
    (tiny_pairs_copy / "images" / "evil.png").symlink_to(outside)
    _set(tiny_pairs_copy, 0, x_A="images/evil.png")
    assert _problems(tiny_pairs_copy) == _one(
        tiny_pairs_copy, "row 1 (id '000000'): x_A 'images/evil.png' is a link that points outside the pair folder")


def test_a_linked_images_folder_that_points_outside_is_refused(tiny_pairs_copy, tmp_path):
    shutil.move(tiny_pairs_copy / "images", tmp_path / "elsewhere")
    (tiny_pairs_copy / "images").symlink_to(tmp_path / "elsewhere")
    msg = _problems(tiny_pairs_copy)
    assert msg.startswith(f"Pair folder {tiny_pairs_copy} has 8 problem(s): ")
    assert " row 1 (id '000000'): x_A 'images/000000_x_A.png' is a link that points outside the pair folder | " in msg


def test_a_link_that_stays_inside_is_allowed(tiny_pairs_copy):
    (tiny_pairs_copy / "alias.png").symlink_to(Path("images") / "000001_x_A.png")
    _set(tiny_pairs_copy, 0, x_A="alias.png")
    assert read_pairs(tiny_pairs_copy)[0].x_A == (tiny_pairs_copy / "images" / "000001_x_A.png").resolve()


@pytest.mark.parametrize("value", ["", None, 5])
def test_an_image_field_that_is_not_a_path(tiny_pairs_copy, value):
    _set(tiny_pairs_copy, 1, mask=value)
    assert _problems(tiny_pairs_copy) == _one(
        tiny_pairs_copy, f"row 2 (id '000001'): mask must be a non-empty relative path, got {value!r}")


# ---------------------------------------------------------------- malformed rows


def test_a_missing_field_is_named(tiny_pairs_copy):
    rows = _rows(tiny_pairs_copy)
    del rows[1]["seed"], rows[1]["p_b"]
    _write_rows(tiny_pairs_copy, rows)
    assert _problems(tiny_pairs_copy) == _one(tiny_pairs_copy, "row 2 (id '000001'): missing p_b, seed")


def test_a_bad_json_line_is_reported_with_its_row(tiny_pairs_copy):
    rows = _rows(tiny_pairs_copy)
    rows[3] = "{not json"
    rows[4] = "[1, 2]"
    _write_rows(tiny_pairs_copy, rows)
    assert _problems(tiny_pairs_copy) == (
        f"Pair folder {tiny_pairs_copy} has 2 problem(s): "
        "row 4: not a JSON object (Expecting property name enclosed in double quotes: line 1 column 2 (char 1)) | "
        "row 5: not a JSON object (not a JSON object)" + TAIL
    )


@pytest.mark.parametrize("seed", ["abc", None, [1]])
def test_a_seed_that_is_not_an_integer(tiny_pairs_copy, seed):
    _set(tiny_pairs_copy, 0, seed=seed)
    assert _problems(tiny_pairs_copy) == _one(tiny_pairs_copy, f"row 1 (id '000000'): seed must be an integer, got {seed!r}")


def test_blank_lines_are_skipped_but_rows_keep_their_line_numbers(tiny_pairs_copy):
    rows = _rows(tiny_pairs_copy)
    _write_rows(tiny_pairs_copy, [rows[0], "", "   ", *rows[1:]])
    pairs = read_pairs(tiny_pairs_copy)
    assert len(pairs) == 8 and [p.row for p in pairs[:2]] == [1, 4]


# ---------------------------------------------------------------- broken images


def test_a_missing_image_names_row_field_and_path(tiny_pairs_copy):
    (tiny_pairs_copy / "images" / "000002_x_B.png").unlink()
    assert _problems(tiny_pairs_copy) == _one(
        tiny_pairs_copy, "row 3 (id '000002'): x_B 'images/000002_x_B.png' is missing")


def test_a_truncated_png_names_row_field_and_path(tiny_pairs_copy):
    png = tiny_pairs_copy / "images" / "000005_x_A.png"
    data = png.read_bytes()
    png.write_bytes(data[: len(data) // 2])
    assert _problems(tiny_pairs_copy) == _one(
        tiny_pairs_copy, "row 6 (id '000005'): x_A 'images/000005_x_A.png' is not a readable image (OSError)")


def test_images_are_not_opened_when_checks_are_off(tiny_pairs_copy):
    (tiny_pairs_copy / "images" / "000002_x_B.png").unlink()
    assert len(read_pairs(tiny_pairs_copy, check_images=False)) == 8


def test_several_problems_are_reported_together_in_order(tiny_pairs_copy):
    (tiny_pairs_copy / "images" / "000007_mask.png").unlink()
    rows = _rows(tiny_pairs_copy)
    rows[0]["x_A"] = "../x.png"
    del rows[2]["direction"]
    rows[4]["seed"] = "five"
    _write_rows(tiny_pairs_copy, rows)
    assert _problems(tiny_pairs_copy) == (
        f"Pair folder {tiny_pairs_copy} has 4 problem(s): "
        "row 1 (id '000000'): x_A '../x.png' leaves the pair folder (only paths inside it are allowed) | "
        "row 3 (id '000002'): missing direction | "
        "row 5 (id '000004'): seed must be an integer, got 'five' | "
        "row 8 (id '000007'): mask 'images/000007_mask.png' is missing" + TAIL
    )


def test_more_than_ten_problems_are_summarised(tiny_pairs_copy):
    for f in (tiny_pairs_copy / "images").glob("*_x_[AB].png"):
        f.unlink()
    msg = _problems(tiny_pairs_copy)
    assert msg.startswith(f"Pair folder {tiny_pairs_copy} has 16 problem(s): ")
    assert msg.count(" is missing") == 10
    assert msg.endswith(" | ... and 6 more" + TAIL) and "\n" not in msg


# ---------------------------------------------------------------- missing or empty folders


@pytest.mark.parametrize("content", ["", "\n\n  \n"])
def test_empty_metadata_is_an_error(tiny_pairs_copy, content):
    (tiny_pairs_copy / "metadata.jsonl").write_text(content)
    assert _problems(tiny_pairs_copy) == f"Pair folder {tiny_pairs_copy} has no pairs (metadata.jsonl is empty)."


def test_a_missing_folder_points_to_gen_pairs(tmp_path):
    assert _problems(tmp_path / "nope") == (
        f"Pair folder {tmp_path / 'nope'} does not exist (make one with `pedit gen-pairs -o {tmp_path / 'nope'}`).")


def test_a_folder_without_metadata_points_to_gen_pairs(tmp_path):
    assert _problems(tmp_path) == f"{tmp_path} has no metadata.jsonl; a pair folder is what `pedit gen-pairs` writes."


# ---------------------------------------------------------------- the writer


def _row(i: int) -> dict:
    d = BUILTIN["santa"]
    return {"id": f"{i:06d}", "direction": d.name, "p_a": d.p_a, "p_b": d.p_b, "seed": i}


def _images(i: int) -> dict:
    return {"x_A": np.full((8, 8, 3), i, np.uint8), "x_B": np.full((8, 8, 3), 255 - i, np.uint8)}


def test_the_writer_is_resumable(tmp_path):
    w = PairWriter(tmp_path / "p")
    for i in range(3):
        w.write(_row(i), _images(i))
    again = PairWriter(tmp_path / "p")
    assert [again.has(f"{i:06d}") for i in range(4)] == [True, True, True, False]
    pairs = read_pairs(tmp_path / "p")
    assert [p.id for p in pairs] == ["000000", "000001", "000002"]
    assert (_png(pairs[1].x_A) == 1).all() and (_png(pairs[1].x_B) == 254).all()
    assert sorted(f.name for f in (tmp_path / "p" / "images").iterdir()) == [
        f"{i:06d}_{f}.png" for i in range(3) for f in ("x_A", "x_B")]  # no temp files left


def test_a_row_cut_off_by_an_interruption_is_written_again(tmp_path):
    cfg = GenPairsConfig(str(tmp_path / "p"), n=3, resolution=32)
    generate_pairs(cfg)
    meta = tmp_path / "p" / "metadata.jsonl"
    full = meta.read_text()
    meta.write_text(full[:-40])  # the last row lost its end (and its newline)
    w = PairWriter(tmp_path / "p")
    assert [w.has(f"{i:06d}") for i in range(3)] == [True, True, False]
    generate_pairs(cfg)
    assert meta.read_text() == full  # the cut line is gone, the row is whole again, nothing doubled
    assert [p.id for p in read_pairs(tmp_path / "p")] == ["000000", "000001", "000002"]


def test_generating_twice_writes_no_duplicate_rows(tmp_path):
    cfg = GenPairsConfig(str(tmp_path / "p"), n=4, resolution=32)
    generate_pairs(cfg)
    first = (tmp_path / "p" / "metadata.jsonl").read_text()
    generate_pairs(cfg)
    assert (tmp_path / "p" / "metadata.jsonl").read_text() == first
    assert len(first.splitlines()) == 4
    assert json.loads((tmp_path / "p" / "config.json").read_text())["n"] == 4


def test_two_shards_into_one_folder_make_the_unsharded_set(tmp_path, tiny_pairs):
    out = tmp_path / "p"
    generate_pairs(GenPairsConfig(str(out), n=8, resolution=32, shard=(1, 2)))
    assert [r["id"] for r in _rows(out)] == ["000001", "000003", "000005", "000007"]
    generate_pairs(GenPairsConfig(str(out), n=8, resolution=32, shard=(0, 2)))
    rows = _rows(out)
    assert len(rows) == 8 and len({r["id"] for r in rows}) == 8
    # The seed of a pair depends on its index alone: the shards' rows and images are the unsharded ones.
    assert sorted(rows, key=lambda r: r["id"]) == _rows(tiny_pairs)
    for r in rows:
        for f in ("x_A", "x_B", "mask"):
            assert (out / r[f]).read_bytes() == (tiny_pairs / r[f]).read_bytes()


def test_exact_pairs_match_the_ground_truth(tmp_path):
    out = generate_pairs(GenPairsConfig(str(tmp_path / "p"), n=8, resolution=32, seed=100, exact=True))
    for r in _rows(out):
        assert r["imperfection"] == {"shift_x": 0, "shift_y": 0, "face_width": 1.0, "color_drift": [0, 0, 0]}
        truth = toon.make_pair(r["seed"], r["direction"], 32)
        assert np.array_equal(_png(out / r["x_A"]), truth.x_A)
        assert np.array_equal(_png(out / r["x_B"]), truth.x_B_exact)
        mask = _png(out / r["mask"])
        assert set(np.unique(mask)) <= {0, 255} and mask.any()
        assert np.array_equal(mask == 255, truth.mask)
    assert [r["seed"] for r in _rows(out)] == list(range(100, 108))


def test_imperfect_rows_record_their_imperfection(tiny_pairs):
    rows = _rows(tiny_pairs)
    for i, r in enumerate(rows):
        expected = toon.sample_imperfection(np.random.default_rng([0, i, 1]), 2, 0.06, 6)
        assert r["imperfection"] == expected.to_dict()
        # x_B is exactly the edit rendered with the recorded imperfection, the mask the exact one's.
        truth = toon.make_pair(r["seed"], r["direction"], 32, toon.Imperfection.from_dict(r["imperfection"]))
        assert np.array_equal(_png(tiny_pairs / r["x_B"]), truth.x_B)
        assert np.array_equal(_png(tiny_pairs / r["mask"]) == 255, truth.mask)
    assert sum(not toon.Imperfection.from_dict(r["imperfection"]).is_exact() for r in rows) >= 6


def test_the_fixture_folder_is_untouched_by_these_tests(tiny_pairs):
    assert len(_rows(tiny_pairs)) == 8
    assert not any(os.path.islink(p) for p in (tiny_pairs / "images").iterdir())


def test_resuming_gen_pairs_with_other_settings_is_refused(tmp_path):
    from pedit.errors import ConfigError
    from pedit.data.gen_pairs import GenPairsConfig, generate_pairs

    generate_pairs(GenPairsConfig(str(tmp_path / "p"), n=2, resolution=32))
    generate_pairs(GenPairsConfig(str(tmp_path / "p"), n=2, resolution=32, shard=(1, 2)))  # same set: fine
    with pytest.raises(ConfigError) as e:
        generate_pairs(GenPairsConfig(str(tmp_path / "p"), n=2, resolution=64, exact=True))
    assert str(e.value) == (f"{tmp_path / 'p'} was written with other settings (exact, resolution differ); "
                            "use a new -o folder, or the same options to resume.")
    assert len((tmp_path / "p" / "metadata.jsonl").read_text().splitlines()) == 2
