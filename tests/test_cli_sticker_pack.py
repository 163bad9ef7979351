"""`pedit sticker-pack` end to end through the command line.

The offline path (the bundled toon model, a toon portrait: DreamBooth and cartoon skipped) runs once
for the module and is checked the way an app would check the files; the full path (augment →
DreamBooth LoRA → cartoon → edit → pack) runs on the tiny random models of conftest.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from pedit.cli import cli
from pedit.stickers.matte import make_sticker
from conftest import TEST_DEVICE  # PEDIT_TEST_DEVICE, default cpu

ROOT = Path(__file__).resolve().parents[1]
TOON = ROOT / "examples" / "toon.png"
ASTRONAUT = ROOT / "examples" / "astronaut.png"
EXPRESSIONS = ("angry", "shocked", "laughing", "crying")
ENV = {"COLUMNS": "1000", "PEDIT_DEBUG": None}


def run(*args):
    return CliRunner().invoke(cli, ["sticker-pack", *map(str, args)], env=ENV)


def assert_clean_failure(result, *needles: str) -> None:
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output and result.stdout == ""
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1, result.stderr
    for needle in needles:
        assert needle in errors[0], errors[0]


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


@pytest.fixture(scope="module")
def toon_pack(tmp_path_factory) -> tuple[Path, object]:
    out = tmp_path_factory.mktemp("toon") / "pack"
    result = run(TOON, "-o", out, "--steps", "4", "--device", TEST_DEVICE)
    return out, result


def test_offline_pack_has_every_file(toon_pack):
    out, result = toon_pack
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == str(out)
    names = [f"{i + 1:02d}_{e}" for i, e in enumerate(EXPRESSIONS)]
    expected = {"manifest.json", "config.json", "preview.png", "contents.json", "whatsapp.wastickers",
                "whatsapp/cover.png", "whatsapp/title.txt", "whatsapp/author.txt", "whatsapp/emoji.txt",
                "telegram/cover.png", "telegram/title.txt", "telegram/emoji.txt"}
    for n in names:
        expected |= {f"stickers/{n}.png", f"stickers/{n}.webp", f"whatsapp/{n}.webp", f"telegram/{n}.png"}
    found = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    assert found == expected
    assert leftovers(out.parent) == []  # no temporary folder left beside it


def test_offline_stickers_are_512_rgba_keyed_and_outlined(toon_pack):
    out, _ = toon_pack
    for path in sorted((out / "stickers").iterdir()):
        with Image.open(path) as im:
            assert im.size == (512, 512) and im.mode == "RGBA", path
            rgba = np.asarray(im)
        alpha = rgba[..., 3]
        assert alpha[0, 0] == 0 and alpha[0, -1] == 0 and alpha[256, 256] == 255
        assert 0.3 < (alpha > 127).mean() < 0.9  # the subject, not the whole square, not nothing
        soft = ((alpha > 0) & (alpha < 255)).mean()
        assert 0 < soft < 0.05  # a soft edge, and only an edge
        row = rgba[200]  # through the head: the first opaque pixels from the left are the white outline
        first = int(np.argmax(row[:, 3] == 255))
        assert row[first, :3].min() >= 250  # white (WebP is lossy)


def test_offline_app_folders_keep_the_limits(toon_pack):
    out, _ = toon_pack
    contents = json.loads((out / "contents.json").read_text(encoding="utf-8"))
    pack = contents["sticker_packs"][0]
    assert pack["identifier"] == "whatsapp" and pack["name"] == "pedit stickers" and pack["publisher"] == "pedit"
    assert 3 <= len(pack["stickers"]) <= 30 and pack["tray_image_file"] == "cover.png"
    assert [s["emojis"] for s in pack["stickers"]] == [["😠"], ["😲"], ["😂"], ["😢"]]
    for s in pack["stickers"]:
        path = out / "whatsapp" / s["image_file"]
        assert path.stat().st_size <= 100_000
        with Image.open(path) as im:
            assert im.format == "WEBP" and im.size == (512, 512) and im.mode == "RGBA"
    with Image.open(out / "whatsapp" / "cover.png") as im:
        assert im.format == "PNG" and im.size == (96, 96)
    assert (out / "whatsapp" / "cover.png").stat().st_size <= 50_000
    for path in (out / "telegram").glob("0*.png"):
        with Image.open(path) as im:
            assert 512 in im.size and max(im.size) == 512
        assert path.stat().st_size <= 512_000
    with Image.open(out / "telegram" / "cover.png") as im:
        assert im.size == (100, 100)
    emoji = json.loads((out / "telegram" / "emoji.txt").read_text(encoding="utf-8"))
    assert emoji == {f"{i + 1:02d}_{e}": s for i, (e, s) in enumerate(zip(EXPRESSIONS, "😠😲😂😢"))}
    from pedit.stickers.formats import wastickers_problems

    assert wastickers_problems(out / "whatsapp.wastickers") == []


def test_offline_manifest_records_the_run(toon_pack):
    out, _ = toon_pack
    manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    assert "skipped" in manifest["cartoon"]
    assert manifest["model"] == "bundled toon-fast model"  # the default edit model (pedit.model.paths)
    assert len(manifest["selfie"]["sha256"]) == 64
    entries = manifest["files"]["stickers"]
    assert [e["name"] for e in entries] == list(EXPRESSIONS)
    for e in entries:
        assert e["seed"] == 0 and e["steps"] == 4 and e["prompts"]["p_b"].endswith(f"{e['name']} expression")
        assert 0 < e["edited_fraction"] < 0.6  # the mask-guided edit touched part of the portrait
        assert e["whatsapp"]["bytes"] <= e["whatsapp"]["limit"]
    if manifest["identity_note"]:  # no face model: scores are recorded as null, with the reason
        assert all(e["identity_distance"] is None for e in entries)


def test_offline_edits_change_the_face_and_keep_the_rest(toon_pack):
    """Each sticker against the unedited portrait made into a sticker the same way."""
    out, _ = toon_pack
    with Image.open(TOON) as im:
        neutral = np.asarray(make_sticker(im.convert("RGB").resize((512, 512), Image.Resampling.LANCZOS)), float)
    for path in sorted((out / "stickers").glob("*.png")):
        with Image.open(path) as im:
            sticker = np.asarray(im, float)
        moved = np.abs(sticker - neutral).max(axis=-1) > 32  # a change anyone sees
        # eyes and mouth of examples/toon.png: the expression masks are tight (the learned refiners: angry
        # redraws brows and mouth, about 10 % of this box), so the share of visibly changed pixels is checked
        face = moved[180:330, 170:340].mean()
        body = np.abs(sticker - neutral)[440:500, 100:400].mean()  # the shirt, far from any expression
        assert face > 0.05 and body < 2, (path.name, face, body)


# --- bad inputs: one Error line, nothing written -------------------------------------------------------


def test_unreadable_selfie(tmp_path):
    bad = tmp_path / "selfie.png"
    bad.write_text("not an image")
    assert_clean_failure(run(bad, "-o", tmp_path / "out"), "not an image pedit can read")
    assert not (tmp_path / "out").exists() and leftovers(tmp_path) == []


def test_missing_selfie(tmp_path):
    assert_clean_failure(run(tmp_path / "nope.jpg", "-o", tmp_path / "out"), "No such file")
    assert not (tmp_path / "out").exists()


def test_existing_output_needs_overwrite(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "mine.txt").write_text("keep me")
    assert_clean_failure(run(TOON, "-o", out, "--steps", "1"), "already exists", "--overwrite")
    assert [p.name for p in out.iterdir()] == ["mine.txt"]


def test_output_under_a_file_fails_before_any_work(tmp_path):
    (tmp_path / "file").write_text("x")
    assert_clean_failure(run(TOON, "-o", tmp_path / "file" / "out"), "is a file")


def test_a_style_with_brackets_is_shown_verbatim(tmp_path):
    # The config line is rich markup: an unescaped "[/b]" in a prompt would crash it.
    (tmp_path / "out").mkdir()
    result = run(TOON, "-o", tmp_path / "out", "--style", "a [/b] cartoon of {subject}")
    assert_clean_failure(result, "already exists")
    assert "a [/b] cartoon" in result.stderr


def test_overwrite_replaces_a_previous_pack(tmp_path, toon_pack):
    import shutil

    out = tmp_path / "out"
    shutil.copytree(toon_pack[0], out)
    result = run(TOON, "-o", out, "--steps", "1", "--overwrite", "--expressions", "angry,shocked,crying")
    assert result.exit_code == 0, result.output
    assert (out / "stickers" / "03_crying.png").exists() and not (out / "stickers" / "04_crying.png").exists()
    assert json.loads((out / "manifest.json").read_text(encoding="utf-8"))["config"]["steps"] == 1
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("extra", ["notes.txt", "stickers/holiday.jpg"])
def test_overwrite_refuses_a_pack_holding_other_files(tmp_path, toon_pack, extra):
    import shutil

    out = tmp_path / "out"
    shutil.copytree(toon_pack[0], out)
    (out / extra).write_text("keep me")
    before = sorted(p.relative_to(out).as_posix() for p in out.rglob("*"))
    assert_clean_failure(run(TOON, "-o", out, "--steps", "1", "--overwrite"), "not the previous sticker pack", extra)
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*")) == before
    assert (out / extra).read_text() == "keep me" and leftovers(tmp_path) == []


def test_overwrite_refuses_a_foreign_folder(tmp_path):
    """`-o ~/Pictures --overwrite` must never delete the user's folder: it is refused, untouched."""
    out = tmp_path / "Pictures"
    (out / "2024").mkdir(parents=True)
    (out / "2024" / "beach.jpg").write_text("a photo")
    (out / "manifest.json").write_text('{"not": "a pack"}')  # even a manifest.json not written by pedit
    assert_clean_failure(run(TOON, "-o", out, "--steps", "1", "--overwrite"), "not a previous sticker pack")
    assert (out / "2024" / "beach.jpg").read_text() == "a photo"
    assert sorted(p.name for p in out.iterdir()) == ["2024", "manifest.json"] and leftovers(tmp_path) == []


def test_overwrite_refuses_files_put_there_while_the_pack_was_made(tmp_path, toon_pack, monkeypatch):
    import shutil

    from pedit.stickers import pipeline

    out = tmp_path / "out"
    shutil.copytree(toon_pack[0], out)
    real_write = pipeline._write

    def write_after_a_user_file(cfg, out_, *args):
        (out / "added-meanwhile.txt").write_text("keep me")
        return real_write(cfg, out_, *args)

    monkeypatch.setattr(pipeline, "_write", write_after_a_user_file)
    assert_clean_failure(run(TOON, "-o", out, "--steps", "1", "--overwrite"), "added-meanwhile.txt")
    assert (out / "added-meanwhile.txt").read_text() == "keep me" and (out / "stickers" / "04_crying.png").exists()
    assert leftovers(tmp_path) == []


def test_require_face_without_a_face(tmp_path):
    plain = tmp_path / "plain.png"
    Image.new("RGB", (200, 200), (90, 140, 200)).save(plain)
    assert_clean_failure(run(plain, "-o", tmp_path / "out", "--require-face"), "No face found")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("expressions,needle", [("angry,shocked", "3 to 120"), ("angry,shocked,grumpy", "grumpy")])
def test_bad_expression_lists(tmp_path, expressions, needle):
    assert_clean_failure(run(TOON, "-o", tmp_path / "out", "--expressions", expressions), needle)
    assert not (tmp_path / "out").exists()


def test_a_photo_with_a_trained_model_needs_a_base(tmp_path, random_model):
    assert_clean_failure(run(ASTRONAUT, "-o", tmp_path / "out", "-m", random_model, "--device", TEST_DEVICE),
                         "--base", "--skip-cartoonize")


def test_a_failure_while_packing_leaves_nothing(tmp_path, monkeypatch):
    from pedit.errors import OutputError
    from pedit.stickers import pipeline

    def broken(*args, **kwargs):
        raise OutputError("disk full (simulated)")

    monkeypatch.setattr(pipeline, "write_pack", broken)
    assert_clean_failure(run(TOON, "-o", tmp_path / "out", "--steps", "1"), "disk full")
    assert not (tmp_path / "out").exists() and leftovers(tmp_path) == []


# --- the full path on tiny random models ---------------------------------------------------------------


def test_full_path_trains_once_and_honours_pick(tmp_path, random_model, tiny_base):
    common = ["-m", random_model, "--base", tiny_base, "--device", TEST_DEVICE, "--steps", "2", "--views", "2",
              "--train-steps", "2", "--candidates", "2", "--cartoon-steps", "2", "--cache-dir", tmp_path / "cache",
              "--expressions", "angry,shocked,crying"]
    first = run(ASTRONAUT, "-o", tmp_path / "a", *common)
    assert first.exit_code == 0, first.output
    manifest = json.loads((tmp_path / "a" / "manifest.json").read_text(encoding="utf-8"))
    cartoon = manifest["cartoon"]
    assert len(cartoon["candidates"]) == 2 and cartoon["picked_by"] == "score"
    assert "sks person" in cartoon["prompt"]
    lora = Path(cartoon["lora"]["folder"]) / "pytorch_lora_weights.safetensors"
    stamp = lora.stat().st_mtime_ns
    assert len(list((tmp_path / "a" / "stickers").glob("*.png"))) == 3

    # Another style and a pick: the LoRA comes from the cache, untouched.
    second = run(ASTRONAUT, "-o", tmp_path / "b", *common, "--style", "a flat cartoon of {subject}", "--pick", "1")
    assert second.exit_code == 0, second.output
    again = json.loads((tmp_path / "b" / "manifest.json").read_text(encoding="utf-8"))["cartoon"]
    assert again["lora"]["key"] == cartoon["lora"]["key"] and lora.stat().st_mtime_ns == stamp
    assert again["picked"] == 1 and again["picked_by"] == "--pick"
    assert again["prompt"] == "a flat cartoon of sks person"
    assert "cached" in second.stderr


# --- the selfie is cropped exactly as `pedit edit` crops it --------------------------------------------


class _OneFace:
    """A detector that finds one face with landmarks, its eyes placed so that the eye-framed crop
    differs from the box-framed one."""

    def __init__(self):
        from pedit.faces import Face

        eyes = np.array([[262.0, 200.0], [250.0, 200.0], [190.0, 200.0], [202.0, 200.0], [226.0, 240.0]])
        self.face = Face(box=(150, 120, 330, 330), score=1.0, landmarks=eyes)

    def detect(self, rgb):
        return [self.face]


def test_selfie_is_cropped_like_pedit_edit(tmp_path, monkeypatch):
    from pedit import faces
    from pedit.photos.portrait import edit_photo, face_box, portrait_crop_box
    from pedit.stickers.pipeline import StickerConfig, _selfie_portrait

    asked = []
    monkeypatch.setattr(faces, "get_detector", lambda name="default": asked.append(name) or _OneFace())
    selfie = tmp_path / "selfie.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (480, 640, 3), dtype=np.uint8)).save(selfie)
    cfg = StickerConfig(selfie=str(selfie), output=str(tmp_path / "out"), detector="hog")
    photo, box, square, record = _selfie_portrait(cfg)

    edited = edit_photo(photo.rgb, lambda sq: (sq, Image.new("L", sq.size)), 64, _OneFace())
    assert asked == ["hog"]  # --detector reaches the detector
    assert record["crop"] == {"x": edited.crop.x, "y": edited.crop.y, "w": edited.crop.w, "h": edited.crop.h}
    assert edited.crop != portrait_crop_box(photo.rgb.size, face_box(_OneFace().face))  # framed from the eyes
    assert box == face_box(_OneFace().face) and square.size == (512, 512)


def test_detector_option_is_validated(tmp_path):
    result = run(TOON, "-o", tmp_path / "out", "--detector", "eyes")
    assert result.exit_code == 2 and "eyes" in result.output


def test_expressions_are_edited_with_the_folders_settings_for_them(tmp_path, monkeypatch):
    """Each expression gets the model folder's settings for its task (pedit.json "mask_by_task": the
    bundled models' expression refiner; its sampler), at the pack's steps and seed."""
    from pedit.edit.editor import Editor
    from pedit.stickers.pipeline import StickerConfig, _edit_expressions

    editor = Editor.from_pretrained("toon-fast", device="cpu")
    seen = []
    real = Editor.edit_many
    monkeypatch.setattr(Editor, "edit_many", lambda self, sq, ds, options, **kw: seen.append(options) or real(self, sq, ds, options, **kw))
    cfg = StickerConfig(selfie=str(TOON), output=str(tmp_path / "out"), steps=3, seed=7)
    directions = [editor.direction(d) for d in ("angry", "laughing")]
    shown = []
    _edit_expressions(cfg, editor, directions, Image.open(TOON).convert("RGB").resize((512, 512)), shown.append)
    [options] = seen
    done = [(p.done, p.total) for p in shown]  # the progress bar: never past its total, ends full
    assert all(d <= t == 2 * 3 for d, t in done) and done[-1] == (6, 6) and done == sorted(done)
    for d, o in zip(directions, options):
        want = editor.default_options(d)
        assert o.mask == want.mask and o.mask.refine == "learned"  # the expression task's, not the folder's generic "mask"
        assert (o.steps, o.seed, o.scheduler, o.guidance_interval) == (3, 7, want.scheduler, want.guidance_interval)
