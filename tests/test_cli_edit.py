"""`pedit edit` end to end through the command line: real photos in, nothing lost.

Every test runs the real command (`click.testing.CliRunner`) on files written here, with the tiny
untrained MCDM of conftest.py (`random_model`, 32 px) and 2 steps / 2 mask noises so the whole file
stays fast. What is checked is what a user would check: which files appear (and which do not), their
size, format, alpha, EXIF, the bytes outside the edited crop, and exact exit codes and `Error:` lines
(the exit codes: 0 success, 1 an explained failure on stderr with no traceback, 2 bad usage).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from pedit.model.sampling_settings import SamplingSettings
from click.testing import CliRunner
from PIL import Image

from pedit.cli import cli
from pedit.faces import get_detector
from pedit.photos.portrait import Box, face_box, face_crop_box, portrait_crop_box
from conftest import TEST_DEVICE  # PEDIT_TEST_DEVICE, default cpu

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "astronaut.png"
FAST = ["--steps", "2", "--mask-noises", "2", "--device", TEST_DEVICE]
# Rich wraps stderr at 80 columns when it is not a terminal; a wide console keeps long tmp paths
# on one line so the messages can be matched. PEDIT_DEBUG would turn errors into tracebacks.
ENV = {"COLUMNS": "1000", "PEDIT_DEBUG": None}


# --- helpers ---------------------------------------------------------------------------------------


def run_edit(model: Path, *args: str | Path):
    return CliRunner().invoke(cli, ["edit", *map(str, args), "-m", str(model), *FAST], env=ENV)


def files_in(folder: Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*")}


def assert_clean_failure(result, *needles: str, stdout: str = "") -> str:
    """Exit 1 from a PeditError: one `Error: ...` line on stderr holding `needles`, no traceback.

    stdout lists only the files written (none, unless a batch partly succeeded)."""
    assert result.exit_code == 1, result.output
    # CliRunner catches crashes and reports them as exit code 1 too; a clean failure is a SystemExit.
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    assert result.stdout == stdout
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1, result.stderr
    for needle in needles:
        assert needle in errors[0], errors[0]
    return errors[0]


def assert_ok(result) -> None:
    assert result.exit_code == 0, result.output
    assert result.exception is None
    assert "Error:" not in result.stderr


def pixels(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def outside(arr: np.ndarray, box: Box) -> np.ndarray:
    """A copy of `arr` with `box` blanked: equal copies mean equal pixels everywhere outside it."""
    arr = arr.copy()
    arr[box.y : box.y + box.h, box.x : box.x + box.w] = 0
    return arr


def photo(size=(80, 48), seed=0) -> Image.Image:
    """A small RGB picture with detail everywhere (no face: the centred square is edited)."""
    rng = np.random.default_rng(seed)
    w, h = size
    yy, xx = np.mgrid[:h, :w]
    base = np.stack([xx * 255 // w, yy * 255 // h, (xx + yy) * 127 // (w + h)], axis=-1)
    return Image.fromarray(np.clip(base + rng.integers(-20, 21, (h, w, 3)), 0, 255).astype(np.uint8))


def centred_square(size) -> Box:
    return portrait_crop_box(size, None)


def exif_bytes(orientation: int | None = None) -> bytes:
    exif = Image.Exif()
    exif[0x010F] = "PeditPhone"  # Make
    if orientation is not None:
        exif[0x0112] = orientation
    exif.get_ifd(0x8769)[0x9003] = "2024:05:01 12:00:00"  # DateTimeOriginal, in the Exif sub-IFD
    return exif.tobytes()


@pytest.fixture(autouse=True)
def no_temp_files_left(tmp_path):
    """Atomic writes go through `.NAME.xxxx.tmp` files in the output folder; none may remain."""
    yield
    left = [p for p in tmp_path.rglob(".*")]
    assert not left, left


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """On a busy machine, torch's intra-op threads spin against each other: a 32 px edit that takes
    0.2 s on one thread takes 2-10 s on two. The model is tiny, so one thread loses nothing."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def model(random_model) -> Path:
    return random_model


# --- the astronaut: face-aware crop and paste-back -------------------------------------------------


@pytest.fixture(scope="module")
def astronaut_run(model, tmp_path_factory):
    """One edit of a copy of examples/astronaut.png, with mask, overlay and comparison sheet."""
    folder = tmp_path_factory.mktemp("astronaut")
    src = Path(shutil.copy(EXAMPLE, folder / "astronaut.png"))
    result = run_edit(model, src, "-d", "royal", "--save-mask", "--compare")
    return folder, src, result


@pytest.fixture(scope="module")
def astronaut_crop() -> Box:
    with Image.open(EXAMPLE) as im:
        face = get_detector().detect(np.asarray(im.convert("RGB")))[0]  # what `pedit edit` uses by default
    box = face_box(face)
    for got, want in zip((box.x, box.y, box.w, box.h), (177, 70, 92, 92)):  # Haar: (177, 66, 97); HOG: (175, 76, 91)
        assert abs(got - want) <= 8
    return face_crop_box((512, 512), face)


def test_astronaut_output_goes_next_to_the_input_named_by_direction(astronaut_run):
    folder, src, result = astronaut_run
    assert_ok(result)
    out = folder / "astronaut_royal.png"
    assert result.stdout == f"{out}\n"  # stdout: only the written path, machine-readable
    assert files_in(folder) == {
        "astronaut.png", "astronaut_royal.png", "astronaut_royal_mask.png", "astronaut_royal_overlay.png",
        "astronaut_royal_compare.png",
    }
    assert "No face found" not in result.stderr
    assert src.read_bytes() == EXAMPLE.read_bytes()  # the input itself is never touched
    with Image.open(out) as im:
        assert im.format == "PNG" and im.size == (512, 512) and im.mode == "RGB"


def test_astronaut_pixels_outside_the_face_crop_are_identical(astronaut_run, astronaut_crop):
    folder, src, _ = astronaut_run
    crop = astronaut_crop
    assert crop.w == crop.h and 250 <= crop.w <= 300 and crop.y < 30  # head and shoulders, not the photo
    before, after = pixels(src), pixels(folder / "astronaut_royal.png")
    assert np.array_equal(outside(before, crop), outside(after, crop))
    changed = (before != after).any(axis=2)
    assert changed.sum() > 100  # the model did edit something, inside the crop
    ys, xs = np.nonzero(changed)
    assert crop.x <= xs.min() and xs.max() < crop.x + crop.w and ys.max() < crop.y + crop.h


def test_save_mask_writes_the_blend_weight_and_an_overlay(astronaut_run, astronaut_crop):
    folder, src, _ = astronaut_run
    with Image.open(folder / "astronaut_royal_mask.png") as im:
        assert im.size == (512, 512) and im.mode == "L"  # one grey channel
        mask = np.asarray(im)
    crop = astronaut_crop
    assert mask.max() > 0 and not outside(mask, crop).any()  # weight only inside the edited crop
    before, after = pixels(src), pixels(folder / "astronaut_royal.png")
    # The mask is the weight actually used: where it is 0, the output is the input, byte for byte.
    assert np.array_equal(before[mask == 0], after[mask == 0])
    overlay = pixels(folder / "astronaut_royal_overlay.png")
    assert overlay.shape == (512, 512, 3)
    assert np.array_equal(overlay[mask == 0], before[mask == 0])
    assert (overlay[mask == 255] != before[mask == 255]).any(axis=-1).all()  # tinted where edited


def test_compare_writes_three_panels_side_by_side(astronaut_run):
    folder, _, _ = astronaut_run
    with Image.open(folder / "astronaut_royal_compare.png") as im:
        assert im.format == "PNG" and im.mode == "RGB"
        width, height = im.size
        sheet = np.asarray(im)
    pad = 4
    assert width == 3 * 512 + 4 * pad  # input | mask overlay | output at the input's height
    assert 512 + pad < height < 512 + 100  # plus a label row
    label_h = height - 512 - pad
    first = sheet[label_h : label_h + 512, pad : pad + 512]
    last = sheet[label_h : label_h + 512, pad + 2 * (512 + pad) : pad + 2 * (512 + pad) + 512]
    assert np.array_equal(first, pixels(EXAMPLE))
    assert np.array_equal(last, pixels(folder / "astronaut_royal.png"))


def test_face_out_of_range_says_how_many_faces_were_found(model, tmp_path):
    src = Path(shutil.copy(EXAMPLE, tmp_path / "astronaut.png"))
    result = run_edit(model, src, "-d", "royal", "--face", "3")
    assert_clean_failure(result, "3 is out of range", "found 1 face", "valid: 0 to 0")
    assert files_in(tmp_path) == {"astronaut.png"}


def test_face_index_named_in_the_error_is_an_accepted_flag(model, tmp_path):
    # The range error (pedit.photos.portrait) names "--face-index"; the CLI must accept that spelling too.
    src = Path(shutil.copy(EXAMPLE, tmp_path / "astronaut.png"))
    assert_clean_failure(run_edit(model, src, "-d", "royal", "--face-index", "1"), "--face-index 1 is out of range")
    assert_ok(run_edit(model, src, "-d", "royal", "--face-index", "0"))
    assert files_in(tmp_path) == {"astronaut.png", "astronaut_royal.png"}


@pytest.fixture
def flat(tmp_path) -> Path:
    path = tmp_path / "wall.png"
    Image.new("RGB", (200, 200), (90, 140, 200)).save(path)
    return path


def test_require_face_fails_on_a_photo_without_a_face(model, tmp_path, flat):
    result = run_edit(model, flat, "-d", "royal", "--require-face")
    assert_clean_failure(result, "No face found", "--require-face")
    assert files_in(tmp_path) == {"wall.png"}


def test_without_require_face_the_centred_square_is_edited_with_a_note(model, tmp_path, flat):
    result = run_edit(model, flat, "-d", "royal")
    assert_ok(result)
    assert f"No face found in {flat}; edited the centred square." in result.stderr
    assert result.stdout == f"{tmp_path / 'wall_royal.png'}\n"
    with Image.open(tmp_path / "wall_royal.png") as im:
        assert im.size == (200, 200)


# --- every kind of input -----------------------------------------------------------------------------


FORMATS = {".jpg": "JPEG", ".png": "PNG", ".webp": "WEBP", ".bmp": "BMP", ".tif": "TIFF"}


@pytest.mark.parametrize("ext", FORMATS)
def test_each_input_format_is_edited_in_its_own_format(model, tmp_path, ext):
    src = tmp_path / f"pic{ext}"
    photo().save(src)
    assert_ok(run_edit(model, src, "-d", "santa"))
    out = tmp_path / f"pic_santa{ext}"
    assert files_in(tmp_path) == {src.name, out.name}
    with Image.open(out) as im:
        assert im.format == FORMATS[ext] and im.size == (80, 48)
    if ext in (".png", ".bmp", ".tif"):  # lossless: the columns beside the centred square are the input's
        box = centred_square((80, 48))
        assert np.array_equal(outside(pixels(src), box), outside(pixels(out), box))


@pytest.mark.parametrize("name, fmt", [("out.webp", "WEBP"), ("out.jpeg", "JPEG"), ("out.TIF", "TIFF")])
def test_output_format_follows_the_output_extension(model, tmp_path, name, fmt):
    src = tmp_path / "pic.png"
    photo().save(src)
    assert_ok(run_edit(model, src, "-d", "santa", "-o", tmp_path / name))
    assert files_in(tmp_path) == {"pic.png", name}
    with Image.open(tmp_path / name) as im:
        assert im.format == fmt and im.size == (80, 48)


@pytest.fixture(scope="module")
def phone_run(model, tmp_path_factory):
    """A phone JPEG stored 120 wide x 80 high with EXIF orientation 6 (display rotated 90° clockwise)."""
    folder = tmp_path_factory.mktemp("phone")
    stored = photo((120, 80), seed=1)
    stored.save(folder / "IMG_0001.jpg", exif=exif_bytes(orientation=6), quality=95)
    return folder, run_edit(model, folder / "IMG_0001.jpg", "-d", "angry")


def test_exif_orientation_is_applied(phone_run):
    folder, result = phone_run
    assert_ok(result)
    assert files_in(folder) == {"IMG_0001.jpg", "IMG_0001_angry.jpg"}
    with Image.open(folder / "IMG_0001_angry.jpg") as im:
        assert im.format == "JPEG" and im.size == (80, 120)  # upright: the rotated dimensions
        assert im.getexif()[0x0112] == 1  # already upright, so no viewer rotates it again


def test_exif_is_kept_in_a_jpeg_output(phone_run):
    folder, _ = phone_run
    with Image.open(folder / "IMG_0001_angry.jpg") as im:
        exif = im.getexif()
    assert exif[0x010F] == "PeditPhone"
    assert exif.get_ifd(0x8769)[0x9003] == "2024:05:01 12:00:00"


def test_rgba_png_keeps_its_alpha_channel_byte_identical(model, tmp_path):
    rgb = photo()
    alpha = Image.fromarray(np.tile(np.arange(80, dtype=np.uint8) * 3, (48, 1)))  # a transparency ramp
    src = tmp_path / "sticker.png"
    Image.merge("RGBA", (*rgb.split(), alpha)).save(src)
    assert_ok(run_edit(model, src, "-d", "flower"))
    with Image.open(tmp_path / "sticker_flower.png") as im:
        assert im.mode == "RGBA" and im.size == (80, 48)
        assert im.getchannel("A").tobytes() == alpha.tobytes()
        out_rgb = np.asarray(im.convert("RGB"))
    box = centred_square((80, 48))
    assert np.array_equal(outside(np.asarray(rgb), box), outside(out_rgb, box))


def gray(path: Path) -> np.ndarray:
    Image.fromarray(np.asarray(photo())[..., 0]).save(path)
    return np.repeat(np.asarray(photo())[..., :1], 3, axis=2)


def palette(path: Path) -> np.ndarray:
    im = photo().quantize(16)
    im.save(path)
    return np.asarray(im.convert("RGB"))


def sixteen_bit(path: Path) -> np.ndarray:
    values = (np.asarray(photo())[..., 1].astype(np.uint16) * 257)  # 0..65535, full 16-bit range
    Image.fromarray(values).save(path)  # mode I;16
    with Image.open(path) as im:
        assert im.mode.startswith("I")
    return np.repeat(np.asarray(photo())[..., 1:2], 3, axis=2)


def cmyk(path: Path) -> None:
    Image.new("CMYK", (80, 48), (0, 255, 255, 0)).save(path, quality=95)
    return None


@pytest.mark.parametrize("make, name", [(gray, "gray.png"), (palette, "palette.png"), (sixteen_bit, "deep.png"),
                                        (cmyk, "print.jpg")])
def test_unusual_colour_modes_are_edited(model, tmp_path, make, name):
    src = tmp_path / name
    expected = make(src)
    assert_ok(run_edit(model, src, "-d", "royal"))
    out = tmp_path / name.replace(".", "_royal.")
    with Image.open(out) as im:
        assert im.mode == "RGB" and im.size == (80, 48)
        got = np.asarray(im)
    if expected is None:  # CMYK red → sRGB red, within JPEG error, beside the edited square
        assert got[:, :8, 0].min() > 200 and got[:, :8, 1:].max() < 50
    else:
        box = centred_square((80, 48))
        assert np.array_equal(outside(expected, box), outside(got, box))


def test_large_photo_is_written_at_full_size_with_untouched_pixels(model, tmp_path):
    width, height = 6000, 4000
    rng = np.random.default_rng(0)
    canvas = rng.integers(60, 190, (height, width, 3), dtype=np.uint8)
    with Image.open(EXAMPLE) as im:
        face = im.convert("RGB").resize((1536, 1536), Image.Resampling.LANCZOS)
    canvas[1000:2536, 2000:3536] = np.asarray(face)
    src = tmp_path / "big.tif"  # uncompressed both ways: the test is about size, not codecs
    Image.fromarray(canvas).save(src)

    face = get_detector().detect(canvas)[0]
    assert abs(face.box[0] - (2000 + 3 * 177)) < 40
    crop = face_crop_box((width, height), face)
    assert crop.w < 1000  # only the portrait, a small part of the photo, went to the model

    assert_ok(run_edit(model, src, "-d", "royal"))
    after = pixels(tmp_path / "big_royal.tif")
    assert after.shape == (height, width, 3)
    changed = (after != canvas).any(axis=2)
    assert changed.any()
    changed[crop.y : crop.y + crop.h, crop.x : crop.x + crop.w] = False
    assert not changed.any()


def test_file_names_with_brackets_are_reported_as_they_are(model, tmp_path):
    # Rich reads "[draft]" as markup; the CLI must show a user's file names verbatim.
    good, bad = tmp_path / "[draft] me.png", tmp_path / "[v2] broken.jpg"
    photo().save(good)
    truncated_jpeg(bad)
    result = run_edit(model, good, bad, "-d", "royal")
    out = tmp_path / "[draft] me_royal.png"
    assert_clean_failure(result, "1 of 2 inputs failed", stdout=f"{out}\n")
    assert files_in(tmp_path) == {good.name, bad.name, out.name}
    assert f"No face found in {good}; edited the centred square." in result.stderr
    assert f"{good} → {out}" in result.stderr
    assert f"failed {bad}: {bad} is damaged or incomplete" in result.stderr


# --- batches -----------------------------------------------------------------------------------------


def truncated_jpeg(path: Path) -> None:
    with Image.open(EXAMPLE) as im:
        im.convert("RGB").save(path, quality=95)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def test_batch_folder_with_a_broken_photo_edits_the_rest_and_exits_1(model, tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    photo(seed=1).save(folder / "a.png")
    photo(seed=2).save(folder / "b.jpg")
    photo(seed=3).save(folder / "c.webp")
    truncated_jpeg(folder / "d_bad.jpg")
    result = CliRunner().invoke(cli, ["edit", str(folder), "-d", "royal", "-m", str(model), *FAST], env=ENV)

    outputs = [folder / "a_royal.png", folder / "b_royal.jpg", folder / "c_royal.webp"]
    stdout = "".join(f"{p}\n" for p in outputs)  # one line per written file
    error = assert_clean_failure(result, stdout=stdout)
    assert error == "Error: 1 of 4 inputs failed (see above)."
    assert files_in(folder) == {"a.png", "b.jpg", "c.webp", "d_bad.jpg", "a_royal.png", "b_royal.jpg", "c_royal.webp"}
    assert "3 edited, 1 failed" in result.stderr
    failed = [line for line in result.stderr.splitlines() if line.startswith("failed ")]
    assert len(failed) == 1
    assert failed[0].startswith(f"failed {folder / 'd_bad.jpg'}: ") and "damaged or incomplete" in failed[0]
    for p in outputs:
        with Image.open(p) as im:
            assert im.size == (80, 48)


def test_several_inputs_with_an_output_folder(model, tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    for i, name in enumerate(("one.png", "two.jpg")):
        photo(seed=i).save(inputs / name)
    out = tmp_path / "out" / "edited"  # created, parents too
    result = run_edit(model, inputs / "one.png", inputs / "two.jpg", "-d", "sheep", "-o", out)
    assert_ok(result)
    assert files_in(inputs) == {"one.png", "two.jpg"}  # nothing written beside the inputs
    assert files_in(out) == {"one_sheep.png", "two_sheep.jpg"}
    assert result.stdout.splitlines() == [str(out / "one_sheep.png"), str(out / "two_sheep.jpg")]
    assert "2 edited, 0 failed" in result.stderr


# --- output safety -----------------------------------------------------------------------------------


@pytest.fixture
def small(tmp_path) -> Path:
    path = tmp_path / "pic.png"
    photo().save(path)
    return path


def test_existing_output_is_kept_without_overwrite(model, tmp_path, small):
    existing = tmp_path / "pic_royal.png"
    Image.new("RGB", (10, 10), (1, 2, 3)).save(existing)
    old = existing.read_bytes()
    result = run_edit(model, small, "-d", "royal")
    assert_clean_failure(result, str(existing), "already exists", "--overwrite")
    assert existing.read_bytes() == old
    assert files_in(tmp_path) == {"pic.png", "pic_royal.png"}


def test_existing_mask_is_checked_before_any_output_is_written(model, tmp_path, small):
    (tmp_path / "pic_royal_mask.png").write_bytes(b"mine")
    assert_clean_failure(run_edit(model, small, "-d", "royal", "--save-mask"), "pic_royal_mask.png", "--overwrite")
    assert files_in(tmp_path) == {"pic.png", "pic_royal_mask.png"}
    assert (tmp_path / "pic_royal_mask.png").read_bytes() == b"mine"


def test_overwrite_replaces_the_existing_output(model, tmp_path, small):
    existing = tmp_path / "pic_royal.png"
    Image.new("RGB", (10, 10), (1, 2, 3)).save(existing)
    assert_ok(run_edit(model, small, "-d", "royal", "--overwrite"))
    with Image.open(existing) as im:
        assert im.size == (80, 48)
    assert files_in(tmp_path) == {"pic.png", "pic_royal.png"}


def test_a_failed_sibling_write_removes_the_item_s_outputs_and_a_rerun_works(model, tmp_path, small, monkeypatch):
    """The edit is written first, then mask and overlay: when the overlay fails, the item is reported
    failed and nothing of it stays behind, so the same command run again does not say "already exists"."""
    from pedit.errors import OutputError
    from pedit.photos import photo

    real_stage = photo.stage

    def overlay_fails(path, *args, **kwargs):  # each file of an item is staged before any takes its name
        if Path(path).name.endswith("_overlay.png"):
            raise OutputError(f"Could not write {path}: disk full (simulated)")
        return real_stage(path, *args, **kwargs)

    monkeypatch.setattr(photo, "stage", overlay_fails)
    assert_clean_failure(run_edit(model, small, "-d", "royal", "--save-mask"), "disk full")
    assert files_in(tmp_path) == {"pic.png"}
    monkeypatch.setattr(photo, "stage", real_stage)
    result = run_edit(model, small, "-d", "royal", "--save-mask")
    assert_ok(result)
    assert files_in(tmp_path) == {"pic.png", "pic_royal.png", "pic_royal_mask.png", "pic_royal_overlay.png"}


def test_a_crashing_identity_check_is_its_verdict_not_a_failed_edit(model, tmp_path, small, monkeypatch):
    from pedit.photos import edit_files

    def broken_check(*args):
        raise RuntimeError("dlib exploded (simulated)")

    monkeypatch.setattr(edit_files, "identity_detector", lambda: object())
    monkeypatch.setattr(edit_files, "check_identity", broken_check)
    items = edit_files.edit_files(edit_files.EditFilesConfig(inputs=(str(small),), direction="royal", model=str(model),
                                                             sampling=SamplingSettings(steps=2, mask_noises=2),
                                                             device=TEST_DEVICE))
    (item,) = items
    assert item.error is None and item.output == tmp_path / "pic_royal.png" and item.output.exists()
    assert item.identity.distance is None and "identity check failed" in item.identity.verdict
    assert "dlib exploded" in item.identity.verdict


def test_output_folder_that_is_a_file_fails_and_writes_nothing(model, tmp_path, small):
    (tmp_path / "blocker").write_text("a file, not a folder")
    result = run_edit(model, small, "-d", "royal", "-o", tmp_path / "blocker" / "out.png")
    assert_clean_failure(result, "Cannot save", "blocker", "is a file")
    assert files_in(tmp_path) == {"pic.png", "blocker"}
    assert (tmp_path / "blocker").read_text() == "a file, not a folder"


def test_several_inputs_into_an_output_that_is_a_file(model, tmp_path, small):
    other = tmp_path / "other.png"
    photo(seed=5).save(other)
    (tmp_path / "blocker").write_text("x")
    result = run_edit(model, small, other, "-d", "royal", "-o", tmp_path / "blocker")
    assert_clean_failure(result, "2 of 2 inputs failed")
    assert "is a file, but 2 photos need an output folder" in result.stderr
    assert files_in(tmp_path) == {"pic.png", "other.png", "blocker"}


def test_unknown_output_extension_lists_the_known_ones(model, tmp_path, small):
    result = run_edit(model, small, "-d", "royal", "-o", tmp_path / "out.gif")
    assert_clean_failure(result, "unknown extension '.gif'", ".jpg", ".png", ".webp")
    assert files_in(tmp_path) == {"pic.png"}


# --- bad inputs: exit 1, an Error line, no traceback, no output ------------------------------------


def bad_input(kind: str, folder: Path) -> Path:
    if kind == "missing":
        return folder / "nope.jpg"
    if kind == "empty-folder":
        (folder / "empty").mkdir()
        (folder / "empty" / "notes.txt").write_text("no photos here")
        return folder / "empty"
    path = folder / {"text": "fake.jpg", "truncated": "half.jpg", "zero": "zero.png", "tiny": "dot.png"}[kind]
    if kind == "text":
        path.write_text("this is not a photo\n")
    elif kind == "truncated":
        truncated_jpeg(path)
    elif kind == "zero":
        path.write_bytes(b"")
    elif kind == "tiny":
        Image.new("RGB", (1, 1)).save(path)
    return path


@pytest.mark.parametrize(
    "kind, needles",
    [
        ("missing", ["No such file or folder", "nope.jpg"]),
        ("empty-folder", ["No images found in folder", "empty"]),
        ("text", ["fake.jpg is not an image pedit can read", "holds text"]),
        ("truncated", ["half.jpg is damaged or incomplete", "JPEG, 512x512"]),
        ("zero", ["zero.png is empty (0 bytes)"]),
        ("tiny", ["dot.png is only 1x1 pixels", "at least 16"]),
    ],
    ids=["missing", "empty-folder", "text-as-jpg", "truncated-jpeg", "zero-bytes", "1x1"],
)
def test_bad_input(model, tmp_path, kind, needles):
    src = bad_input(kind, tmp_path)
    before = files_in(tmp_path)
    assert_clean_failure(run_edit(model, src, "-d", "royal"), *needles)
    assert files_in(tmp_path) == before


def test_image_above_max_pixels(model, tmp_path, small):
    result = run_edit(model, small, "-d", "royal", "--max-pixels", "3000")
    assert_clean_failure(result, "80x48 = 3,840 pixels", "limit of 3,000 pixels", "--max-pixels")
    assert files_in(tmp_path) == {"pic.png"}


def test_unknown_direction_lists_the_available_ones(model, tmp_path, small):
    result = run_edit(model, small, "-d", "pirate")
    assert_clean_failure(
        result, "Unknown direction 'pirate'. Available: angry, crying, flower, laughing, royal, santa, sheep, shocked."
    )
    assert files_in(tmp_path) == {"pic.png"}


def test_model_folder_missing_its_unet(model, tmp_path, small):
    broken = Path(shutil.copytree(model, tmp_path / "model"))
    shutil.rmtree(broken / "unet")
    result = run_edit(broken, small, "-d", "royal")
    assert_clean_failure(result, f"Model folder {broken} is missing unet")
    assert not (tmp_path / "pic_royal.png").exists()


def test_model_folder_with_mismatched_shapes(model, tmp_path, small):
    import json

    broken = Path(shutil.copytree(model, tmp_path / "model"))
    config_file = broken / "image_projector" / "config.json"
    config = json.loads(config_file.read_text())
    assert config["num_tokens"] == 5  # 1 class token + 2x2 patches of the tiny image encoder
    config["num_tokens"] = 10  # 1 + 3x3: a valid projector, but not for this image encoder
    config_file.write_text(json.dumps(config))
    result = run_edit(broken, small, "-d", "royal")
    assert_clean_failure(result, "has mismatched shapes", "image_projector num_tokens 10 != image encoder tokens 5")
    assert not (tmp_path / "pic_royal.png").exists()


def test_model_folder_with_a_projector_of_another_width(model, tmp_path, small):
    import json

    broken = Path(shutil.copytree(model, tmp_path / "model"))
    config_file = broken / "image_projector" / "config.json"
    config = json.loads(config_file.read_text())
    config["text_width"] = 2 * config["text_width"]  # the saved weights no longer fit the config
    config_file.write_text(json.dumps(config))
    result = run_edit(broken, small, "-d", "royal")
    assert_clean_failure(result, "Image projector in", "could not be loaded")
    assert not (tmp_path / "pic_royal.png").exists()


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--steps", "0"], "Invalid value for '--steps'"),
        (["--face", "-1"], "Invalid value for '--face"),
        (["--scheduler", "plms"], "Invalid value for '--scheduler'"),
        ([], "Missing option '-d' / '--direction'"),
    ],
    ids=["steps-0", "face-negative", "unknown-scheduler", "no-direction"],
)
def test_bad_usage_exits_2(tmp_path, small, args, needle):
    direction = [] if not args else ["-d", "royal"]
    result = CliRunner().invoke(cli, ["edit", str(small), *direction, *args], env=ENV)
    assert result.exit_code == 2, result.output
    assert needle in result.stderr and "Traceback" not in result.output
    assert files_in(tmp_path) == {"pic.png"}


# --- determinism ---------------------------------------------------------------------------------------


def test_same_seed_gives_the_same_bytes(model, tmp_path, small):
    for name, seed in (("a.png", "3"), ("b.png", "3"), ("c.png", "4")):
        assert_ok(run_edit(model, small, "-d", "royal", "--seed", seed, "-o", tmp_path / name))
    a, b, c = ((tmp_path / n).read_bytes() for n in ("a.png", "b.png", "c.png"))
    assert a == b
    assert a != c  # the seed does reach the sampler


# --- the model's own mask settings ----------------------------------------------------------------------


@pytest.fixture
def model_with_mask_settings(model, tmp_path) -> Path:
    """A copy of the random model whose pedit.json asks for 3 noise draws for the editing mask."""
    folder = Path(shutil.copytree(model, tmp_path / "model"))
    meta = json.loads((folder / "pedit.json").read_text())
    (folder / "pedit.json").write_text(json.dumps({**meta, "mask": {"n_noise": 3}}))
    return folder


@pytest.mark.parametrize("flag,expected", [([], 3), (["--mask-noises", "2"], 2)])
def test_mask_noises_from_pedit_json_unless_the_flag_is_given(model_with_mask_settings, tmp_path, small, monkeypatch,
                                                              flag, expected):
    from pedit.edit.editor import Editor

    seen = []
    real_edit = Editor.edit_many  # what pedit edit calls, one or several directions

    def spy(self, image, directions, options, **kwargs):
        seen.extend(o.mask.n_noise for o in options)
        return real_edit(self, image, directions, options, **kwargs)

    monkeypatch.setattr(Editor, "edit_many", spy)
    args = ["edit", str(small), "-d", "royal", "-m", str(model_with_mask_settings), "--steps", "2", "--device", TEST_DEVICE,
            "-o", str(tmp_path / "out.png"), *flag]
    assert_ok(CliRunner().invoke(cli, args, env=ENV))
    assert seen == [expected]
