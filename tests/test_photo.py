"""pedit.photos.photo (loading phone photos, writing atomically) and pedit.photos.portrait (finding the
face, cropping, pasting the edit back).

The portrait is skimage's astronaut (public domain, 512x512, also saved as examples/astronaut.png);
every other image is drawn here. No torch, no network: the model is a plain function.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pytest
import skimage.data
from PIL import Image, ImageCms

from pedit.photos import portrait as portrait_module
from pedit import files as files_module
from pedit.errors import InputImageError, OutputError
from pedit.faces import Face, HaarDetector
from pedit.photos.photo import (
    IMAGE_EXTENSIONS,
    MIN_SIDE,
    BatchItem,
    default_output_path,
    find_images,
    load_photo,
    run_batch,
    save_image_atomic,
)
from pedit.photos.portrait import Box, edit_photo, face_box, face_crop_box, portrait_crop_box

ASTRONAUT_FACE = Box(177, 66, 95, 95)
EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "astronaut.png"


@pytest.fixture(scope="module")
def astronaut() -> Image.Image:
    return Image.fromarray(skimage.data.astronaut())


@pytest.fixture(scope="module")
def haar() -> HaarDetector:
    return HaarDetector()


# Built once: each createProfile call stamps a new creation time into the bytes.
SRGB_ICC = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


def exif_with(orientation: int | None = None, make: str = "PeditPhone") -> bytes:
    exif = Image.Exif()
    exif[0x010F] = make
    if orientation is not None:
        exif[0x0112] = orientation
    exif.get_ifd(0x8769)[0x9003] = "2024:05:01 12:00:00"  # DateTimeOriginal, in the Exif sub-IFD
    return exif.tobytes()


def invert_with_disc(square: Image.Image) -> tuple[Image.Image, Image.Image]:
    """A stand-in model: inverted colours, mask 255 in a centred disc of radius side/4, 0 elsewhere."""
    n = square.width
    yy, xx = np.mgrid[:n, :n]
    disc = ((yy - n / 2) ** 2 + (xx - n / 2) ** 2) < (n / 4) ** 2
    return Image.fromarray(255 - np.asarray(square)), Image.fromarray((disc * 255).astype(np.uint8))


def assert_identical_where_weight_is_zero(before: np.ndarray, after: np.ndarray, weight: np.ndarray) -> None:
    # Elementwise rather than boolean indexing, which copies and is slow on a 6000x4000 photo.
    changed = (before != after).any(axis=2)
    assert not (changed & (weight == 0)).any()


class FixedDetector:
    """Reports the given boxes (no landmarks), in the given order."""

    name = "fixed"

    def __init__(self, boxes: list[Box], landmarks: list[np.ndarray | None] | None = None):
        self.faces = [Face((b.x, b.y, b.x + b.w, b.y + b.h), 1.0, lm)
                      for b, lm in zip(boxes, landmarks or [None] * len(boxes))]

    def detect(self, rgb: np.ndarray) -> list[Face]:
        return list(self.faces)


def test_example_is_the_astronaut(astronaut):
    assert np.array_equal(np.asarray(Image.open(EXAMPLE)), np.asarray(astronaut))


@pytest.mark.parametrize("ext", IMAGE_EXTENSIONS)
def test_every_format_round_trips(tmp_path, astronaut, ext):
    path = save_image_atomic(astronaut, tmp_path / f"a{ext}", exif=exif_with(), icc_profile=SRGB_ICC)
    loaded = load_photo(path)
    assert loaded.rgb.mode == "RGB" and loaded.rgb.size == (512, 512)
    assert loaded.alpha is None and loaded.path == path
    diff = np.abs(np.asarray(loaded.rgb, dtype=int) - np.asarray(astronaut, dtype=int))
    if ext in (".jpg", ".jpeg", ".webp"):
        assert diff.mean() < 3
    else:
        assert diff.max() == 0
    with Image.open(path) as written:
        if ext != ".bmp":  # BMP holds neither EXIF nor an ICC profile
            assert written.getexif()[0x010F] == "PeditPhone"
            assert written.info["icc_profile"] == SRGB_ICC
            assert loaded.icc_profile == SRGB_ICC


def test_jpeg_is_saved_without_chroma_subsampling(tmp_path, astronaut):
    from PIL import JpegImagePlugin

    with Image.open(save_image_atomic(astronaut, tmp_path / "a.jpg")) as im:
        assert JpegImagePlugin.get_sampling(im) == 0  # 4:4:4


def test_exif_orientation_6_is_applied_and_reset(tmp_path):
    # Stored 64 wide x 32 high with a blue block top-left; orientation 6 says "rotate 90° clockwise
    # to display", so the upright photo is 32 x 64 with the block top-right.
    stored = Image.new("RGB", (64, 32), (200, 30, 30))
    stored.paste((20, 20, 220), (0, 0, 16, 16))
    path = tmp_path / "phone.jpg"
    stored.save(path, exif=exif_with(orientation=6), quality=95)

    loaded = load_photo(path)
    assert loaded.rgb.size == (32, 64)
    r, g, b = loaded.rgb.getpixel((32 - 8, 8))
    assert b > 180 and r < 60
    assert loaded.rgb.getpixel((8, 8))[0] > 150  # red: the old bottom-left

    exif = Image.Exif()
    exif.load(loaded.exif)
    assert exif[0x0112] == 1 and exif[0x010F] == "PeditPhone"
    assert exif.get_ifd(0x8769)[0x9003] == "2024:05:01 12:00:00"

    # Written back, the upright pixels and orientation 1 display the same way in any viewer.
    out = save_image_atomic(loaded.rgb, tmp_path / "out.jpg", exif=loaded.exif)
    with Image.open(out) as im:
        assert im.size == (32, 64) and im.getexif()[0x0112] == 1


def test_rgba_alpha_is_kept_in_png_and_dropped_in_jpeg(tmp_path, astronaut):
    alpha = Image.fromarray(np.tile(np.linspace(0, 255, 512).astype(np.uint8), (512, 1)))
    rgba = astronaut.copy()
    rgba.putalpha(alpha)
    rgba.save(tmp_path / "in.png")

    loaded = load_photo(tmp_path / "in.png")
    assert loaded.rgb.mode == "RGB" and loaded.alpha.mode == "L"
    assert np.array_equal(np.asarray(loaded.alpha), np.asarray(alpha))
    assert np.array_equal(np.asarray(loaded.rgb), np.asarray(astronaut))  # colours under alpha kept

    for ext in (".png", ".webp", ".tif"):
        with Image.open(save_image_atomic(loaded.rgb, tmp_path / f"out{ext}", alpha=loaded.alpha)) as im:
            assert im.mode == "RGBA"
            if ext != ".webp":
                assert np.array_equal(np.asarray(im.getchannel("A")), np.asarray(alpha))
    for ext in (".jpg", ".bmp"):
        with Image.open(save_image_atomic(loaded.rgb, tmp_path / f"out{ext}", alpha=loaded.alpha)) as im:
            assert im.mode == "RGB"


def test_la_and_palette_transparency_give_alpha(tmp_path):
    la = Image.merge("LA", [Image.new("L", (32, 32), 100), Image.new("L", (32, 32), 7)])
    la.save(tmp_path / "la.png")
    loaded = load_photo(tmp_path / "la.png")
    assert loaded.rgb.getpixel((0, 0)) == (100, 100, 100) and loaded.alpha.getpixel((0, 0)) == 7

    pal = Image.new("P", (32, 32), 1)
    pal.putpalette([0, 0, 0, 250, 10, 10] + [0] * 762)
    pal.paste(0, (0, 0, 16, 32))
    pal.save(tmp_path / "p.png", transparency=0)
    loaded = load_photo(tmp_path / "p.png")
    assert loaded.alpha.getpixel((0, 0)) == 0 and loaded.alpha.getpixel((20, 0)) == 255
    assert loaded.rgb.getpixel((20, 0)) == (250, 10, 10)


def test_grayscale_bilevel_and_palette_become_rgb(tmp_path):
    Image.new("L", (32, 32), 77).save(tmp_path / "l.png")
    assert load_photo(tmp_path / "l.png").rgb.getpixel((3, 3)) == (77, 77, 77)

    Image.new("1", (32, 32), 1).save(tmp_path / "bw.bmp")
    assert load_photo(tmp_path / "bw.bmp").rgb.getpixel((3, 3)) == (255, 255, 255)

    pal = Image.new("P", (32, 32), 2)
    pal.putpalette([0, 0, 0, 0, 0, 0, 10, 200, 30] + [0] * 759)
    pal.save(tmp_path / "p.png")
    loaded = load_photo(tmp_path / "p.png")
    assert loaded.rgb.getpixel((3, 3)) == (10, 200, 30) and loaded.alpha is None


def test_sixteen_bit_png_is_scaled_to_eight_bit(tmp_path):
    values = np.array([[0, 257 * 128, 65535, 65535]], dtype=np.uint16).repeat(16, axis=0).repeat(8, axis=1)
    Image.fromarray(values).save(tmp_path / "deep.png")
    with Image.open(tmp_path / "deep.png") as im:
        assert im.mode == "I;16"
    rgb = np.asarray(load_photo(tmp_path / "deep.png").rgb)
    assert rgb.dtype == np.uint8
    assert rgb[0, 0].tolist() == [0, 0, 0]
    assert rgb[0, 8].tolist() == [128, 128, 128]
    assert rgb[0, -1].tolist() == [255, 255, 255]


def test_float_tiff_in_unit_range_is_scaled(tmp_path):
    Image.fromarray(np.full((16, 16), 0.5, dtype=np.float32)).save(tmp_path / "f.tif")
    assert load_photo(tmp_path / "f.tif").rgb.getpixel((0, 0)) == (128, 128, 128)


def test_cmyk_jpeg_becomes_rgb(tmp_path):
    Image.new("CMYK", (32, 32), (0, 255, 255, 0)).save(tmp_path / "print.jpg")
    loaded = load_photo(tmp_path / "print.jpg")
    r, g, b = loaded.rgb.getpixel((16, 16))
    assert loaded.rgb.mode == "RGB" and r > 240 and g < 15 and b < 15
    assert loaded.icc_profile is None


def test_multi_picture_jpeg_from_a_phone_loads_its_main_image(tmp_path):
    main = Image.new("RGB", (64, 48), (10, 200, 30))
    main.save(tmp_path / "phone.jpg", format="MPO", save_all=True, append_images=[Image.new("RGB", (32, 24))])
    with Image.open(tmp_path / "phone.jpg") as im:
        assert im.format == "MPO" and im.n_frames == 2
    loaded = load_photo(tmp_path / "phone.jpg")
    assert loaded.rgb.size == (64, 48) and loaded.rgb.getpixel((5, 5))[1] > 190


def test_missing_file(tmp_path):
    with pytest.raises(InputImageError, match="No such file.*nope.jpg"):
        load_photo(tmp_path / "nope.jpg")


def test_directory_is_not_an_image(tmp_path):
    with pytest.raises(InputImageError, match="is a folder, not an image file"):
        load_photo(tmp_path)


def test_zero_byte_file(tmp_path):
    (tmp_path / "empty.jpg").write_bytes(b"")
    with pytest.raises(InputImageError, match=r"empty \(0 bytes\)"):
        load_photo(tmp_path / "empty.jpg")


def test_text_file_named_jpg(tmp_path):
    (tmp_path / "notes.jpg").write_text("shopping list: eggs, milk\n")
    with pytest.raises(InputImageError, match="not an image pedit can read") as info:
        load_photo(tmp_path / "notes.jpg")
    assert "holds text" in str(info.value) and "JPEG, PNG, WebP, BMP and TIFF" in str(info.value)


def test_truncated_jpeg(tmp_path, astronaut):
    astronaut.save(tmp_path / "full.jpg", quality=95)
    data = (tmp_path / "full.jpg").read_bytes()
    (tmp_path / "half.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(InputImageError, match="damaged or incomplete") as info:
        load_photo(tmp_path / "half.jpg")
    assert "JPEG, 512x512" in str(info.value) and "download it again" in str(info.value)


def test_unsupported_format_is_named(tmp_path):
    Image.new("RGB", (32, 32)).save(tmp_path / "anim.gif")
    with pytest.raises(InputImageError, match="is a GIF image; pedit reads JPEG"):
        load_photo(tmp_path / "anim.gif")


def test_too_small(tmp_path):
    Image.new("RGB", (1, 1)).save(tmp_path / "dot.png")
    with pytest.raises(InputImageError, match=f"only 1x1 pixels.*at least {MIN_SIDE}"):
        load_photo(tmp_path / "dot.png")


def test_above_max_pixels_checked_on_the_header(tmp_path, astronaut, monkeypatch):
    path = tmp_path / "big.png"
    astronaut.save(path)
    decoded = []
    pil_limit = Image.MAX_IMAGE_PIXELS
    monkeypatch.setattr(Image.Image, "load", lambda self: decoded.append(1))
    # Just above the limit: pedit's own header check; far above: PIL's bomb error, same message.
    for limit, found in ((200_000, "512x512 = 262,144 pixels"), (10_000, "more than 20,000 pixels")):
        with pytest.raises(InputImageError) as info:
            load_photo(path, max_pixels=limit)
        message = str(info.value)
        assert found in message and f"limit of {limit:,} pixels" in message and "--max-pixels" in message
    assert not decoded  # refused before any pixel was decoded
    assert Image.MAX_IMAGE_PIXELS == pil_limit  # PIL's global limit is back to what it was


def test_our_limit_replaces_pils_and_pils_is_restored(tmp_path, astronaut, monkeypatch):
    astronaut.save(tmp_path / "a.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # PIL alone would refuse 512x512
    assert load_photo(tmp_path / "a.png").rgb.size == (512, 512)
    assert Image.MAX_IMAGE_PIXELS == 1000


# --- finding inputs and naming outputs ----------------------------------------------------------


def test_find_images_expands_folders_and_keeps_files(tmp_path):
    folder = tmp_path / "shoot"
    (folder / "sub").mkdir(parents=True)
    for name in ("b.JPG", "a.png", "c.tiff", "notes.txt", "._a.png", "sub/d.jpg"):
        (folder / name).write_bytes(b"x")
    odd = tmp_path / "scan.heic"
    odd.write_bytes(b"x")
    found = find_images([folder, odd, folder / "a.png"])
    assert [p.name for p in found] == ["a.png", "b.JPG", "c.tiff", "scan.heic"]


def test_find_images_errors(tmp_path):
    with pytest.raises(InputImageError, match="No such file or folder"):
        find_images([tmp_path / "missing.jpg"])
    (tmp_path / "readme.txt").write_text("hi")
    with pytest.raises(InputImageError, match="No images found in folder") as info:
        find_images([tmp_path])
    assert str(tmp_path) in str(info.value) and ".jpg" in str(info.value) and ".webp" in str(info.value)


def test_default_output_path(tmp_path):
    photo = tmp_path / "photo.jpg"
    assert default_output_path(photo, "royal") == tmp_path / "photo_royal.jpg"
    assert default_output_path(tmp_path / "x.JPEG", "royal").name == "x_royal.JPEG"
    assert default_output_path(tmp_path / "x.gif", "royal").name == "x_royal.png"
    assert default_output_path(photo, "my style/v2").name == "photo_my_style_v2.jpg"

    out_dir = tmp_path / "out"
    out_dir.mkdir()
    assert default_output_path(photo, "royal", out_dir) == out_dir / "photo_royal.jpg"
    assert default_output_path(photo, "royal", tmp_path / "custom.png") == tmp_path / "custom.png"
    made = default_output_path(photo, "royal", tmp_path / "new" / "dir", n_inputs=3)
    assert made == tmp_path / "new" / "dir" / "photo_royal.jpg" and made.parent.is_dir()
    (tmp_path / "custom.png").write_bytes(b"x")
    with pytest.raises(OutputError, match="is a file, but 2 photos need an output folder"):
        default_output_path(photo, "royal", tmp_path / "custom.png", n_inputs=2)


# --- saving --------------------------------------------------------------------------------------


def test_save_refuses_to_overwrite_and_keeps_the_original(tmp_path, astronaut):
    path = tmp_path / "out.png"
    path.write_bytes(b"precious")
    with pytest.raises(OutputError, match="already exists.*--overwrite"):
        save_image_atomic(astronaut, path)
    assert path.read_bytes() == b"precious"
    save_image_atomic(astronaut, path, overwrite=True)
    assert np.array_equal(np.asarray(Image.open(path)), np.asarray(astronaut))
    assert sorted(os.listdir(tmp_path)) == ["out.png"]


def test_save_unknown_extension_lists_supported(tmp_path, astronaut):
    with pytest.raises(OutputError, match=r"unknown extension '\.gif'.*\.jpg.*\.webp.*\.tiff"):
        save_image_atomic(astronaut, tmp_path / "x.gif")


def test_new_file_permissions_follow_umask(tmp_path, astronaut):
    old = os.umask(0o022)
    try:
        path = save_image_atomic(astronaut, tmp_path / "a.png")
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o644


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root writes through chmod 0o500")
def test_save_into_unwritable_folder(tmp_path, astronaut):
    folder = tmp_path / "locked"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        with pytest.raises(OutputError, match=f"Cannot write into folder {folder}: permission denied"):
            save_image_atomic(astronaut, folder / "a.png")
    finally:
        folder.chmod(0o700)
    assert os.listdir(folder) == []


def test_save_permission_denied_message_names_the_folder(tmp_path, astronaut, monkeypatch):
    # The same branch as the chmod test above, reachable when the tests run as root.
    def deny(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(files_module.os, "open", deny)
    with pytest.raises(OutputError, match=f"Cannot write into folder {tmp_path}: permission denied"):
        save_image_atomic(astronaut, tmp_path / "a.png")
    assert os.listdir(tmp_path) == []


def test_save_into_missing_folder_or_a_file(tmp_path, astronaut):
    (tmp_path / "plain").write_text("not a folder")
    with pytest.raises(OutputError, match=r"the folder .*plain is a file"):
        save_image_atomic(astronaut, tmp_path / "plain" / "a.png")
    with pytest.raises(OutputError, match=r"the folder .*absent does not exist"):
        save_image_atomic(astronaut, tmp_path / "absent" / "a.png")


@pytest.mark.parametrize("error", [OSError("No space left on device"), KeyboardInterrupt()])
def test_failing_save_leaves_nothing_behind(tmp_path, astronaut, monkeypatch, error):
    real_save = Image.Image.save

    def save_half_then_fail(self, fp, *args, **kwargs):
        real_save(self, fp, *args, **kwargs)  # bytes are on disk in the temporary file ...
        raise error  # ... when the write fails

    monkeypatch.setattr(Image.Image, "save", save_half_then_fail)
    expected = OutputError if isinstance(error, OSError) else KeyboardInterrupt
    with pytest.raises(expected):
        save_image_atomic(astronaut, tmp_path / "out.jpg")
    assert os.listdir(tmp_path) == []

    (tmp_path / "out.jpg").write_bytes(b"old")
    with pytest.raises(expected):
        save_image_atomic(astronaut, tmp_path / "out.jpg", overwrite=True)
    assert os.listdir(tmp_path) == ["out.jpg"] and (tmp_path / "out.jpg").read_bytes() == b"old"


# --- faces and crops -----------------------------------------------------------------------------


def contains(outer: Box, inner: Box) -> bool:
    return (
        outer.x <= inner.x
        and outer.y <= inner.y
        and inner.x + inner.w <= outer.x + outer.w
        and inner.y + inner.h <= outer.y + outer.h
    )


def test_portrait_crop_box_on_the_astronaut():
    crop = portrait_crop_box((512, 512), ASTRONAUT_FACE)
    assert crop.w == crop.h == 285 and contains(Box(0, 0, 512, 512), crop) and contains(crop, ASTRONAUT_FACE)
    assert abs((crop.x + crop.w / 2) - (177 + 95 / 2)) <= 1  # centred horizontally
    assert crop.y == 0  # the ideal top (face at 40% of the height) is above the image: shifted in


def test_portrait_crop_box_stays_inside_and_holds_the_face():
    rng = np.random.default_rng(0)
    for _ in range(500):
        width, height = (int(v) for v in rng.integers(MIN_SIDE, 3000, size=2))
        w = int(rng.integers(1, min(width, height) + 1))
        h = int(min(height, max(1, round(w * rng.uniform(0.8, 1.25)))))
        face = Box(int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1)), w, h)
        margin = float(rng.choice([0.0, 0.5, 1.0, 2.0]))
        crop = portrait_crop_box((width, height), face, margin)
        assert crop.w == crop.h >= 1
        assert contains(Box(0, 0, width, height), crop)
        if max(w, h) <= min(width, height):
            assert contains(crop, face), (width, height, face, margin, crop)


def test_portrait_crop_box_without_a_face_is_the_centred_square():
    assert portrait_crop_box((6000, 4000), None) == Box(1000, 0, 4000, 4000)
    assert portrait_crop_box((300, 500), None) == Box(0, 100, 300, 300)


def test_portrait_crop_box_face_in_a_corner_is_shifted_in():
    crop = portrait_crop_box((1000, 800), Box(950, 0, 50, 50))
    assert crop == Box(850, 0, 150, 150)
    # A face wider than the margin allows: the largest square that fits.
    assert portrait_crop_box((400, 300), Box(100, 50, 200, 200)).w == 300


# dlib-order landmarks (image-right eye corners, image-left eye corners, nose) of a face whose eye
# centres are at (100, 100) and (140, 100): 40 px apart.
EYES_40PX = np.array([[148.0, 100], [132, 100], [92, 100], [108, 100], [120, 125]])


def test_face_crop_box_frames_from_the_eyes_not_the_detector_box():
    size = (1000, 800)
    boxes = [Box(280, 270, 84, 84), Box(270, 260, 110, 100), Box(290, 285, 60, 70)]  # three detectors' opinions
    crops = {face_crop_box(size, Face((b.x, b.y, b.x + b.w, b.y + b.h), 1.0, EYES_40PX + 200)) for b in boxes}
    assert len(crops) == 1
    (crop,) = crops
    # Face width 2.1 eye distances, plus one face width each side: 3 * 84 = 252 px, centred on the eyes.
    assert crop.w == crop.h == 252 and abs(crop.x + crop.w / 2 - 320) <= 1
    # Without landmarks each box gives its own crop (the box-based framing).
    no_landmarks = [face_crop_box(size, Face((b.x, b.y, b.x + b.w, b.y + b.h), 1.0)) for b in boxes]
    assert no_landmarks == [portrait_crop_box(size, b) for b in boxes] and len(set(no_landmarks)) == 3


def test_face_crop_box_follows_the_face_when_the_photo_is_scaled_and_shifted():
    small = face_crop_box((1000, 800), Face((80, 70, 164, 154), 1.0, EYES_40PX + 300))
    for scale, shift in [(2.5, (700, 150)), (0.5, (13, 400)), (7.0, (0, 0))]:
        moved = Face((0, 0, 1, 1), 1.0, (EYES_40PX + 300) * scale + shift)
        big = face_crop_box((8000, 6000), moved)
        want = (small.x * scale + shift[0], small.y * scale + shift[1], small.w * scale)
        assert all(abs(a - b) <= 1 + scale for a, b in zip((big.x, big.y, big.w), want)), (scale, big, want)


def test_a_tilted_head_keeps_its_crop_size():
    angle = np.deg2rad(25)
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    centre = EYES_40PX[:4].mean(axis=0)
    tilted = (EYES_40PX - centre) @ rotation.T + centre
    upright = face_crop_box((1000, 800), Face((80, 70, 164, 154), 1.0, EYES_40PX + 200))
    assert abs(face_crop_box((1000, 800), Face((80, 70, 164, 154), 1.0, tilted + 200)).w - upright.w) <= 1


def test_eye_framing_matches_the_detector_box_on_the_astronaut(astronaut):
    from pedit import faces

    if not faces.face_model_available():
        pytest.skip("needs the face model")
    face = faces.HogDetector().detect(np.asarray(astronaut))[0]
    eye_framed = portrait_module._eye_framed_box(face)
    box = face_box(face)
    assert all(abs(a - b) <= 6 for a, b in zip((eye_framed.x, eye_framed.y, eye_framed.w), (box.x, box.y, box.w)))


def test_edit_photo_crops_from_the_landmarks(astronaut):
    box = Box(200, 200, 30, 30)  # a poor box: far smaller than the eyes say
    with_landmarks = edit_photo(astronaut, invert_with_disc, 64, FixedDetector([box], [EYES_40PX + 100]))
    without = edit_photo(astronaut, invert_with_disc, 64, FixedDetector([box]))
    assert with_landmarks.crop == face_crop_box((512, 512), with_landmarks.face) != without.crop
    assert with_landmarks.crop.w == 252 and without.crop.w == 90


# --- editing ------------------------------------------------------------------------------------


def test_edit_photo_keeps_untouched_pixels_byte_identical(astronaut, haar):
    received = []

    def model(square):
        received.append(square.size)
        return invert_with_disc(square)

    result = edit_photo(astronaut, model, resolution=128, detector=haar)
    assert received == [(128, 128)]
    assert result.faces_found == 1 and result.face is not None and contains(result.crop, face_box(result.face))
    assert result.image.size == result.mask.size == astronaut.size and result.mask.mode == "L"

    before, after = np.asarray(astronaut), np.asarray(result.image)
    weight = np.asarray(result.mask)
    c = result.crop
    outside = np.ones(weight.shape, bool)
    outside[c.y : c.y + c.h, c.x : c.x + c.w] = False
    assert np.all(weight[outside] == 0)
    assert_identical_where_weight_is_zero(before, after, weight)
    assert outside.any() and (weight == 0).sum() > outside.sum()  # zeros inside the crop too

    # Inside the disc the weight is full, so the pixels are inverted (up to resampling).
    cy, cx = c.y + c.h // 2, c.x + c.w // 2
    assert weight[cy, cx] == 255
    centre = slice(cy - 10, cy + 10), slice(cx - 10, cx + 10)
    assert np.abs(after[centre].astype(int) - (255 - before[centre].astype(int))).mean() < 12


def test_blend_is_exactly_the_rounded_formula():
    rng = np.random.default_rng(1)
    base = Image.fromarray(rng.integers(0, 256, (200, 300, 3), dtype=np.uint8))
    colour = (13, 250, 99)
    mask_values = rng.integers(0, 256, (64, 64), dtype=np.uint8)

    def model(square):
        return Image.new("RGB", square.size, colour), Image.fromarray(mask_values)

    result = edit_photo(base, model, resolution=64)
    w = np.asarray(result.mask, dtype=np.float64)[..., None] / 255
    expected = np.rint(np.asarray(base) * (1 - w) + np.asarray(colour) * w)
    assert np.array_equal(np.asarray(result.image), expected.astype(np.uint8))


def test_feathered_border_hides_the_seam():
    base = Image.new("RGB", (400, 300), (100, 100, 100))

    def everything(square):
        return Image.new("RGB", square.size, (0, 0, 0)), Image.new("L", square.size, 255)

    result = edit_photo(base, everything, resolution=32, detector=FixedDetector([Box(180, 100, 40, 40)]))
    c = result.crop
    weight = np.asarray(result.mask)[c.y : c.y + c.h, c.x : c.x + c.w]
    assert c.x > 0 and c.y > 0 and c.x + c.w < 400 and c.y + c.h < 300  # all four edges are seams
    assert weight[0].max() == weight[-1].max() == weight[:, 0].max() == weight[:, -1].max() == 0
    assert weight[c.h // 2, c.w // 2] == 255
    assert np.all(np.diff(weight[c.h // 2, : c.w // 2].astype(int)) >= 0)  # a monotone ramp

    # Where the crop meets the image border there is no seam, so no fade either.
    full = edit_photo(base, everything, resolution=32)
    assert full.crop == Box(50, 0, 300, 300)
    assert np.asarray(full.mask)[0, 200] == 255 and np.asarray(full.mask)[150, 50] == 0


def test_face_index_chooses_by_size_and_checks_range(astronaut):
    small, large = Box(10, 10, 30, 30), Box(200, 200, 80, 80)
    detector = FixedDetector([small, large])
    assert face_box(edit_photo(astronaut, invert_with_disc, 64, detector).face) == large
    assert face_box(edit_photo(astronaut, invert_with_disc, 64, detector, face_index=1).face) == small
    with pytest.raises(InputImageError, match=r"--face-index 2 is out of range: found 2 faces \(valid: 0 to 1"):
        edit_photo(astronaut, invert_with_disc, 64, detector, face_index=2)
    with pytest.raises(InputImageError, match="found 0 faces"):
        edit_photo(astronaut, invert_with_disc, 64, FixedDetector([]), face_index=0)


def test_require_face(astronaut):
    with pytest.raises(InputImageError, match=r"No face found.*drop --require-face to edit the centred square"):
        edit_photo(astronaut, invert_with_disc, 64, FixedDetector([]), require_face=True)
    result = edit_photo(astronaut, invert_with_disc, 64, FixedDetector([]))
    assert result.face is None and result.faces_found == 0 and result.crop == Box(0, 0, 512, 512)


def test_large_photo_only_the_crop_goes_to_the_model(astronaut, haar):
    canvas = Image.new("RGB", (6000, 4000), (180, 170, 160))
    # 6x the astronaut: about her own size again in the detector's 1024-pixel copy.
    canvas.paste(astronaut.resize((3072, 3072), Image.Resampling.LANCZOS), (2500, 600))
    received = []

    def model(square):
        received.append((square.mode, square.size))
        return invert_with_disc(square)

    result = edit_photo(canvas, model, resolution=256, detector=haar)
    assert received == [("RGB", (256, 256))]
    assert result.faces_found == 1 and contains(result.crop, face_box(result.face))
    want = Box(2500 + 6 * 177, 600 + 6 * 66, 6 * 95, 6 * 95)
    face = face_box(result.face)
    assert abs(face.x - want.x) < 40 and abs(face.y - want.y) < 40 and result.crop.w < 2000
    before, after = np.asarray(canvas), np.asarray(result.image)
    assert_identical_where_weight_is_zero(before, after, np.asarray(result.mask))
    assert not np.array_equal(after, before)

    # Without a detector: the centred 4000x4000 square.
    received.clear()
    centred = edit_photo(canvas, model, resolution=128)
    assert received == [("RGB", (128, 128))] and centred.crop == Box(1000, 0, 4000, 4000)


def test_edit_fn_returning_the_wrong_size_is_a_bug(astronaut):
    with pytest.raises(ValueError, match="expected \\(64, 64\\)"):
        edit_photo(astronaut, lambda sq: (sq.resize((32, 32)), Image.new("L", (64, 64))), 64)


# --- batches -------------------------------------------------------------------------------------


def test_run_batch_continues_after_a_broken_photo(tmp_path, astronaut):
    astronaut.save(tmp_path / "a.jpg")
    data = (tmp_path / "a.jpg").read_bytes()
    (tmp_path / "b.jpg").write_bytes(data[: len(data) // 2])
    astronaut.save(tmp_path / "c.png")
    paths = find_images([tmp_path])

    def process(path: Path) -> Path:
        loaded = load_photo(path)
        edited = edit_photo(loaded.rgb, invert_with_disc, 64)
        return save_image_atomic(edited.image, default_output_path(path, "royal"), exif=loaded.exif)

    seen: list[BatchItem] = []
    items = run_batch(paths, process, on_item=seen.append)
    assert seen == items and [i.input.name for i in items] == ["a.jpg", "b.jpg", "c.png"]
    assert [i.output.name if i.output else None for i in items] == ["a_royal.jpg", None, "c_royal.png"]
    assert items[1].error and "damaged or incomplete" in items[1].error
    assert items[0].error is None and all(i.seconds >= 0 for i in items)
    assert not (tmp_path / "b_royal.jpg").exists()


def test_run_batch_any_exception_fails_its_item_only_and_ctrl_c_stops(tmp_path):
    def process(path: Path) -> Path:
        if path.name == "b.png":
            raise ValueError("Decompressed Data Too Large")  # what PIL raises for a PNG text bomb
        if path.name == "c.png":
            raise KeyboardInterrupt
        return path

    items = run_batch([tmp_path / "a.png", tmp_path / "b.png"], process)
    assert [i.error for i in items] == [None, "unexpected ValueError: Decompressed Data Too Large"]
    assert items[1].traceback and "Decompressed Data Too Large" in items[1].traceback and items[0].traceback is None
    with pytest.raises(KeyboardInterrupt):
        run_batch([tmp_path / "c.png", tmp_path / "a.png"], process)


def test_load_from_bytes_written_by_another_app(tmp_path, astronaut):
    # A WebP with EXIF, as phones share them: metadata survives load → save.
    buffer = io.BytesIO()
    astronaut.save(buffer, format="WEBP", exif=exif_with(orientation=1), quality=90)
    (tmp_path / "shared.webp").write_bytes(buffer.getvalue())
    loaded = load_photo(tmp_path / "shared.webp")
    out = save_image_atomic(loaded.rgb, tmp_path / "out.webp", exif=loaded.exif)
    with Image.open(out) as im:
        assert im.getexif()[0x010F] == "PeditPhone"
