"""Hugging Face `datasets` both ways, with `datasets` itself as the oracle (no network):
a pair folder loads with the imagefolder loader; a saved dataset or hub id trains through a column map."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from pedit.cli import cli
from pedit.data.hf import dataset_pair_folder, parse_columns
from pedit.data.pairs import METADATA, read_pairs
from pedit.errors import ConfigError

datasets = pytest.importorskip("datasets")
ENV = {"COLUMNS": "1000", "PEDIT_DEBUG": None}


def pixels(image) -> np.ndarray:
    return np.asarray(image.convert("RGB"))


def png_file(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return pixels(im)


def imagefolder(folder: Path, cache: Path):
    return datasets.load_dataset("imagefolder", data_dir=str(folder), split="train", cache_dir=str(cache))


def test_a_pair_folder_loads_with_the_imagefolder_loader(tiny_pairs, tmp_path):
    ds = imagefolder(tiny_pairs, tmp_path / "hf")
    for name in ("x_A", "x_B", "mask"):
        assert isinstance(ds.features[name], datasets.Image), ds.features
    for name in ("p_a", "p_b", "direction", "id"):
        assert ds.features[name] == datasets.Value("string")
    pairs = {p.id: p for p in read_pairs(tiny_pairs)}
    assert sorted(ds["id"]) == sorted(pairs) and len(ds) == 8
    for row in ds:
        pair = pairs[row["id"]]
        assert (row["p_a"], row["p_b"], row["direction"]) == (pair.p_a, pair.p_b, pair.direction)
        for name in ("x_A", "x_B", "mask"):
            assert np.array_equal(pixels(row[name]), png_file(getattr(pair, name))), name


def test_old_rows_without_file_name_keys_read_the_same(tiny_pairs, tiny_pairs_copy):
    lines = (tiny_pairs_copy / METADATA).read_text().splitlines()
    rows = [json.loads(line) for line in lines]
    assert all(r["x_A_file_name"] == r["x_A"] for r in rows)  # what gen-pairs writes now
    old = [{k: v for k, v in r.items() if not k.endswith("_file_name")} for r in rows]
    (tiny_pairs_copy / METADATA).write_text("".join(json.dumps(r) + "\n" for r in old))
    strip = lambda ps: [(p.id, p.x_A.name, p.x_B.name, p.mask.name, p.p_b, p.extra) for p in ps]  # noqa: E731
    assert strip(read_pairs(tiny_pairs_copy)) == strip(read_pairs(tiny_pairs))
    new_only = [{k: v for k, v in r.items() if k not in ("x_A", "x_B", "mask")} for r in rows]
    (tiny_pairs_copy / METADATA).write_text("".join(json.dumps(r) + "\n" for r in new_only))
    assert strip(read_pairs(tiny_pairs_copy)) == strip(read_pairs(tiny_pairs))
    rows[1]["x_A_file_name"] = rows[2]["x_A"]  # both keys: pedit reads the plain one, as it always has
    (tiny_pairs_copy / METADATA).write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert read_pairs(tiny_pairs_copy)[1].x_A.name == Path(rows[1]["x_A"]).name


def edit_dataset(n: int = 4, size: int = 32, seed: int = 0, **columns):
    """A tiny InstructPix2Pix-layout dataset: input_image, edited_image (PIL images) and edit_prompt."""
    rng = np.random.default_rng(seed)
    a = [rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in range(n)]
    b = [255 - x for x in a]
    data = {"input_image": [Image.fromarray(x) for x in a], "edited_image": [Image.fromarray(x) for x in b],
            "edit_prompt": [f"make it {i}" for i in range(n)], **columns}
    features = {"input_image": datasets.Image(), "edited_image": datasets.Image(), "edit_prompt": datasets.Value("string"),
                **{k: datasets.Value("string") for k in columns}}
    return datasets.Dataset.from_dict(data, features=datasets.Features(features)), a, b


def test_a_saved_instruct_pix2pix_dataset_becomes_a_pair_folder(tmp_path):
    ds, a, b = edit_dataset()
    ds.save_to_disk(str(tmp_path / "saved"))
    folder = dataset_pair_folder(str(tmp_path / "saved"), None)  # its layout needs no map
    pairs = read_pairs(folder)
    assert [p.p_b for p in pairs] == [f"make it {i}" for i in range(4)]
    assert {p.p_a for p in pairs} == {""} and {p.direction for p in pairs} == {"edit"}
    for p, x_A, x_B in zip(pairs, a, b):
        assert np.array_equal(png_file(p.x_A), x_A) and np.array_equal(png_file(p.x_B), x_B)
    logs = []
    assert dataset_pair_folder(str(tmp_path / "saved"), None, say=logs.append) == folder  # cached: written once
    assert "(cached)" in logs[0]


def test_constants_and_columns_for_p_a_and_direction(tmp_path):
    ds, _, _ = edit_dataset(source=["a photo of a cat"] * 4)
    ds.save_to_disk(str(tmp_path / "saved"))
    folder = dataset_pair_folder(str(tmp_path / "saved"),
                                 'x_A=input_image,x_B=edited_image,p_b=edit_prompt,p_a=source,direction="cat, edited"')
    pairs = read_pairs(folder)
    assert {p.p_a for p in pairs} == {"a photo of a cat"} and {p.direction for p in pairs} == {"cat, edited"}
    other = dataset_pair_folder(str(tmp_path / "saved"), 'x_A=edited_image,x_B=input_image,p_b=edit_prompt')
    assert other != folder  # another map is another pair folder
    assert np.array_equal(png_file(read_pairs(other)[0].x_A), png_file(pairs[0].x_B))


def test_a_pair_folder_round_trips_through_datasets(tiny_pairs, tmp_path):
    ds = imagefolder(tiny_pairs, tmp_path / "hf")
    ds.save_to_disk(str(tmp_path / "saved"))
    folder = dataset_pair_folder(str(tmp_path / "saved"), None)  # x_A, x_B, p_a, p_b, direction, mask columns
    back = {(p.direction, p.p_a, p.p_b): p for p in read_pairs(folder)}
    for p in read_pairs(tiny_pairs):
        q = back[(p.direction, p.p_a, p.p_b)]
        for name in ("x_A", "x_B", "mask"):
            assert np.array_equal(png_file(getattr(q, name)), png_file(getattr(p, name))), name


@pytest.mark.parametrize("text,needle", [
    ("x_A", "not FIELD=COLUMN"), ("x_A=a,x_A=b", "maps x_A twice"), ("colour=a", "the fields are"),
    ('x_A="a"', "must name an image column"), ('p_a="open', "unclosed quote"),
])
def test_malformed_column_maps(text, needle):
    with pytest.raises(ConfigError, match=needle):
        parse_columns(text)


def run_train(data, out, base, *args):
    return CliRunner().invoke(cli, ["train", "--data", str(data), "-o", str(out), "--base", str(base), "--max-steps", "2",
                                    "--batch-size", "2", "--validate-every", "0", "-q", *map(str, args)], env=ENV)


def assert_one_error(result, needle):
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1 and needle in result.stderr, result.stderr
    assert result.stderr.strip() == errors[0], result.stderr  # one line: nothing before or after it (issue 27)


def test_train_on_a_saved_dataset_and_reuse_its_folder(tmp_path, tiny_base):
    ds, _, _ = edit_dataset()
    ds.save_to_disk(str(tmp_path / "saved"))
    cols = "x_A=input_image,x_B=edited_image,p_b=edit_prompt"
    result = run_train(tmp_path / "saved", tmp_path / "m1", tiny_base, "--columns", cols)
    assert result.exit_code == 0, result.output
    meta = json.loads((tmp_path / "m1" / "pedit.json").read_text())
    assert "edit" in json.dumps(meta["directions"])
    folder = dataset_pair_folder(str(tmp_path / "saved"), cols)
    assert (folder / ".pedit-cache").is_dir()  # the latent cache lives in the dataset's pair folder
    before = sorted(p.name for p in (folder / ".pedit-cache").iterdir())
    assert run_train(tmp_path / "saved", tmp_path / "m2", tiny_base, "--columns", cols).exit_code == 0
    assert sorted(p.name for p in (folder / ".pedit-cache").iterdir()) == before  # the same cache, not a second


@pytest.mark.parametrize("cols,needle", [
    ("x_A=input_image,x_B=nope,p_b=edit_prompt", "no column for x_B=nope; its columns are input_image, edited_image, edit_prompt"),
    ("x_A=edit_prompt,x_B=edited_image,p_b=edit_prompt", "x_A=edit_prompt is Value"),
    ("x_A=input_image,x_B=edited_image,p_b=input_image", "p_b=input_image is Image"),
    ("x_A=input_image,x_B=edited_image", "must map p_b"),
    ("x_A", "not FIELD=COLUMN"),
])
def test_bad_maps_are_one_message_and_nothing_written(tmp_path, tiny_base, cols, needle):
    ds, _, _ = edit_dataset()
    ds.save_to_disk(str(tmp_path / "saved"))
    assert_one_error(run_train(tmp_path / "saved", tmp_path / "m", tiny_base, "--columns", cols), needle)
    assert not (tmp_path / "m").exists()


def test_bad_rows_fail_before_step_one(tmp_path, tiny_base):
    ds, _, _ = edit_dataset()
    rows = ds.cast_column("input_image", datasets.Image(decode=False)).to_list()
    rows[1]["input_image"] = {"bytes": b"\x89PNG not really", "path": None}
    rows[2]["edit_prompt"] = None
    bad = datasets.Dataset.from_list(rows, features=ds.cast_column("input_image", datasets.Image(decode=False)).features)
    bad.save_to_disk(str(tmp_path / "saved"))
    result = run_train(tmp_path / "saved", tmp_path / "m", tiny_base)
    assert_one_error(result, "dataset row 2: p_b (edit_prompt) is None, not a string")
    assert not (tmp_path / "m").exists()
    rows[2]["edit_prompt"] = "fine"
    datasets.Dataset.from_list(rows, features=bad.features).save_to_disk(str(tmp_path / "saved2"))
    assert_one_error(run_train(tmp_path / "saved2", tmp_path / "m", tiny_base), "is not a readable image")
    assert not (tmp_path / "m").exists()


def test_images_of_two_sizes_are_refused_like_a_pair_folder(tmp_path, tiny_base):
    small, _, _ = edit_dataset(2, size=32)
    large, _, _ = edit_dataset(2, size=48, seed=1)
    datasets.concatenate_datasets([small, large]).save_to_disk(str(tmp_path / "saved"))
    assert_one_error(run_train(tmp_path / "saved", tmp_path / "m", tiny_base), "all images of a pair folder have one size")


def test_splits_columns_on_a_pair_folder_and_offline_hub_ids(tmp_path, tiny_base, tiny_pairs):
    ds, _, _ = edit_dataset()
    datasets.DatasetDict({"validation": ds}).save_to_disk(str(tmp_path / "saved"))
    assert_one_error(run_train(tmp_path / "saved", tmp_path / "m", tiny_base), "no split 'train'; its splits are validation")
    assert run_train(tmp_path / "saved", tmp_path / "m", tiny_base, "--split", "validation").exit_code == 0
    assert_one_error(run_train(tiny_pairs, tmp_path / "m2", tiny_base, "--columns", "x_A=a,x_B=b,p_b=c"),
                     "a pair folder needs no map")
    assert_one_error(run_train("nobody-here/no-such-dataset", tmp_path / "m3", tiny_base), "Could not load the dataset")
    assert not (tmp_path / "m2").exists() and not (tmp_path / "m3").exists()


def test_an_empty_dataset_is_one_error_line(tmp_path, tiny_base):
    ds, _, _ = edit_dataset()
    ds.select([]).save_to_disk(str(tmp_path / "saved"))
    assert_one_error(run_train(tmp_path / "saved", tmp_path / "m", tiny_base), "has no rows")
    assert not (tmp_path / "m").exists()


def test_unusable_rows_are_one_error_line_naming_each_row(tmp_path, tiny_base):
    """Null prompts in two rows and an undecodable image: one line naming each row's problem, never a
    multi-line list or a traceback (the undecodable image alone: test_bad_rows_fail_before_step_one)."""
    ds, _, _ = edit_dataset(6)
    features = ds.cast_column("input_image", datasets.Image(decode=False)).features
    rows = ds.cast_column("input_image", datasets.Image(decode=False)).to_list()
    rows[0]["input_image"] = {"bytes": b"not an image at all", "path": None}
    rows[1]["edit_prompt"] = None
    rows[4]["edit_prompt"] = None
    datasets.Dataset.from_list(rows, features=features).save_to_disk(str(tmp_path / "saved"))
    result = run_train(tmp_path / "saved", tmp_path / "m", tiny_base)
    assert_one_error(result, "has 2 problem(s): dataset row 1: p_b (edit_prompt) is None, not a string | dataset row 4")
    assert not (tmp_path / "m").exists()


def test_a_cached_pair_folder_whose_images_changed_is_refused(tmp_path):
    """Issue 27, class 1: the dataset's pair folder in pedit's cache is checked against the record written with
    it; an image replaced there since is one error line, never trained on as if it were the dataset's."""
    from pedit.errors import PairFolderError

    ds, _, _ = edit_dataset()
    ds.save_to_disk(str(tmp_path / "saved"))
    folder = dataset_pair_folder(str(tmp_path / "saved"), None)
    image = sorted((folder / "images").iterdir())[0]
    with Image.open(image) as im:
        swapped = Image.eval(im.convert("RGB"), lambda v: 255 - v)
    swapped.save(image)
    with pytest.raises(PairFolderError, match="is damaged \\(its files are not the ones it was written with"):
        dataset_pair_folder(str(tmp_path / "saved"), None)
