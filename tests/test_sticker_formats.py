"""The files the messaging apps import: the `.wastickers` archive read back with zipfile, the
converter-safe folders, the Telegram folder, packs split at 30, and --title/--author/--emoji checks."""

from __future__ import annotations

import io
import json
import re
import zipfile
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image, ImageDraw

from pedit.cli import cli
from pedit.errors import ConfigError
from pedit.stickers.formats import (check_emoji, check_pack_text, pack_emoji, pack_sizes, parse_emoji_map,
                                    split_emoji, telegram_problems, text_length, wastickers_problems)
from pedit.stickers.matte import make_sticker
from pedit.stickers.pack import write_pack
from pedit.toon.world import render

ROOT = Path(__file__).resolve().parents[1]
NAMES = ("angry", "shocked", "laughing", "crying")
TITLE, AUTHOR = "Ana's faces 🙂", "Ana Souza"


def converter_sees(folder: Path) -> list[str]:
    """The files a converter that lists a folder's stickers takes as stickers: everything but cover.*
    and *.txt (the convention of the widely used sticker converters)."""
    return sorted(p.name for p in folder.iterdir() if p.is_file() and not p.name.startswith("cover")
                  and p.suffix != ".txt")


@pytest.fixture(scope="module")
def pack(tmp_path_factory):
    root = tmp_path_factory.mktemp("pack")
    stickers = [(n, make_sticker(Image.fromarray(render(i, size=128)))) for i, n in enumerate(NAMES)]
    record = write_pack(root, stickers, TITLE, AUTHOR, {"angry": ["😡", "🤬"], "crying": ["😭"]})
    return root, record


def test_wastickers_archive_keeps_every_whatsapp_rule(pack):
    root, _ = pack
    stems = [f"{i + 1:02d}_{n}" for i, n in enumerate(NAMES)]
    with zipfile.ZipFile(root / "whatsapp.wastickers") as zf:
        assert zf.testzip() is None
        assert sorted(zf.namelist()) == sorted([f"{s}.webp" for s in stems] + ["tray.png", "title.txt", "author.txt",
                                                                                "emoji.txt"])
        for s in stems:
            info = zf.getinfo(f"{s}.webp")
            assert info.file_size <= 100_000  # decimal bytes, not 102,400
            data = zf.read(info)
            assert data == (root / "whatsapp" / f"{s}.webp").read_bytes()
            with Image.open(io.BytesIO(data)) as im:
                assert im.format == "WEBP" and im.size == (512, 512) and getattr(im, "n_frames", 1) == 1
                assert im.mode == "RGBA" and np.asarray(im)[0, 0, 3] == 0  # transparent corner
        tray = zf.read("tray.png")
        assert len(tray) <= 50_000
        with Image.open(io.BytesIO(tray)) as im:
            assert im.format == "PNG" and im.size == (96, 96)
        title, author = zf.read("title.txt").decode("utf-8"), zf.read("author.txt").decode("utf-8")
        assert (title, author) == (TITLE, AUTHOR)
        assert text_length(title) <= 128 and text_length(author) <= 128
        emoji = json.loads(zf.read("emoji.txt").decode("utf-8"))
    assert emoji == {stems[0]: "😡🤬", stems[1]: "😲", stems[2]: "😂", stems[3]: "😭"}  # given, else built in
    assert all(1 <= len(split_emoji(e)) <= 3 for e in emoji.values())
    assert wastickers_problems(root / "whatsapp.wastickers") == []


def test_folders_hold_only_stickers_and_files_a_converter_skips(pack):
    root, _ = pack
    stems = [f"{i + 1:02d}_{n}" for i, n in enumerate(NAMES)]
    assert converter_sees(root / "whatsapp") == [f"{s}.webp" for s in stems]
    assert converter_sees(root / "telegram") == [f"{s}.png" for s in stems]
    assert sorted(p.name for p in (root / "stickers").iterdir()) == sorted(
        [f"{s}.png" for s in stems] + [f"{s}.webp" for s in stems])


def test_contents_json_is_the_sample_app_layout(pack):
    root, _ = pack
    contents = json.loads((root / "contents.json").read_text(encoding="utf-8"))
    (p,) = contents["sticker_packs"]
    assert re.fullmatch(r"[\w\-.,' ]+", p["identifier"]) and ".." not in p["identifier"]  # the validator's rule
    folder = root / p["identifier"]  # assets/<identifier>/ holds the pack's files
    assert (folder / p["tray_image_file"]).is_file()
    assert p["name"] == TITLE and p["publisher"] == AUTHOR
    assert [s["emojis"] for s in p["stickers"]] == [["😡", "🤬"], ["😲"], ["😂"], ["😭"]]
    assert all((folder / s["image_file"]).is_file() for s in p["stickers"])


def test_telegram_folder_follows_the_bot_api(pack):
    root, record = pack
    folder = root / "telegram"
    stems = [f"{i + 1:02d}_{n}" for i, n in enumerate(NAMES)]
    for s in stems:
        path = folder / f"{s}.png"
        assert path.stat().st_size <= 512_000
        with Image.open(path) as im:
            assert im.format == "PNG" and max(im.size) == 512 and 512 in im.size
    with Image.open(folder / "cover.png") as im:
        assert im.format == "PNG" and im.size == (100, 100)
    assert (folder / "cover.png").stat().st_size <= 128_000
    emoji = json.loads((folder / "emoji.txt").read_text(encoding="utf-8"))
    assert emoji == {stems[0]: "😡🤬", stems[1]: "😲", stems[2]: "😂", stems[3]: "😭"}
    assert (folder / "title.txt").read_text(encoding="utf-8") == TITLE
    assert record["telegram"]["emoji"] == {f"{s}.png": e for s, e in emoji.items()}  # the manifest says the same
    assert telegram_problems(folder, stems) == []


def flat_sticker(i: int) -> Image.Image:
    """A quick-to-encode sticker: a coloured disc on transparency."""
    im = Image.new("RGBA", (512, 512), (0, 0, 0, 0))
    ImageDraw.Draw(im).ellipse((64, 64, 448, 448), fill=(40 + 6 * i, 120, 200, 255))
    return im


def test_pack_sizes_are_at_most_30_and_at_least_3():
    assert pack_sizes(4) == [4] and pack_sizes(30) == [30]
    assert pack_sizes(31) == [16, 15]  # 30 + 1 would leave a pack WhatsApp refuses
    assert pack_sizes(61) == [21, 20, 20]
    for n in range(3, 121):
        sizes = pack_sizes(n)
        assert sum(sizes) == n and all(3 <= s <= 30 for s in sizes) and len(sizes) == -(-n // 30)


def test_more_than_30_stickers_split_into_valid_packs(tmp_path):
    stickers = [(f"e{i}", flat_sticker(i)) for i in range(31)]
    record = write_pack(tmp_path, stickers, "Big", "me")
    assert [p["identifier"] for p in record["whatsapp"]["packs"]] == ["whatsapp-1", "whatsapp-2"]
    assert not (tmp_path / "whatsapp").exists() and not (tmp_path / "whatsapp.wastickers").exists()
    seen = []
    for k, size in ((1, 16), (2, 15)):
        archive = tmp_path / f"whatsapp-{k}.wastickers"
        assert wastickers_problems(archive) == []
        with zipfile.ZipFile(archive) as zf:
            webps = sorted(n for n in zf.namelist() if n.endswith(".webp"))
            assert len(webps) == size and zf.read("title.txt").decode() == f"Big ({k}/2)"
        seen += webps
        assert converter_sees(tmp_path / f"whatsapp-{k}") == webps
    assert seen == sorted(f"{i + 1:02d}_e{i}.webp" for i in range(31))  # every sticker once, in order
    contents = json.loads((tmp_path / "contents.json").read_text(encoding="utf-8"))
    assert [len(p["stickers"]) for p in contents["sticker_packs"]] == [16, 15]
    assert len(converter_sees(tmp_path / "telegram")) == 31  # one Telegram set takes up to 120


def zip_of(tmp_path: Path, entries: dict[str, bytes]) -> Path:
    path = tmp_path / "x.wastickers"
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    return path


def image_bytes(size, fmt, **kw) -> bytes:
    buf = io.BytesIO()
    Image.new("RGBA", size, (200, 0, 0, 255)).save(buf, format=fmt, **kw)
    return buf.getvalue()


def test_the_archive_check_finds_each_broken_rule(tmp_path):
    good = {f"0{i}.webp": image_bytes((512, 512), "WEBP") for i in range(3)}
    good |= {"tray.png": image_bytes((96, 96), "PNG"), "title.txt": b"t", "author.txt": b"a",
             "emoji.txt": json.dumps({f"0{i}": "\U0001F600" for i in range(3)}).encode()}
    assert wastickers_problems(zip_of(tmp_path, good)) == []
    cases = {
        "2 stickers": {k: v for k, v in good.items() if k != "02.webp"},
        "expected a still WEBP 512": {**good, "01.webp": image_bytes((512, 500), "WEBP")},
        "tray.png is PNG 100": {**good, "tray.png": image_bytes((100, 100), "PNG")},
        "title.txt must hold": {**good, "title.txt": ("x" * 129).encode()},
        "00.webp needs 1 to 3 emoji": {**good, "emoji.txt": json.dumps({"01": "🙂", "02": "🙂"}).encode()},
        "PNG entries": {**good, "extra.png": image_bytes((96, 96), "PNG")},
    }
    for needle, entries in cases.items():
        problems = wastickers_problems(zip_of(tmp_path, entries))
        assert any(needle in p for p in problems), (needle, problems)
    over = wastickers_problems(zip_of(tmp_path, good), sticker_max=len(good["00.webp"]) - 1)
    assert any("bytes (limit" in p for p in over)


# --- emoji, title, author --------------------------------------------------------------------------


@pytest.mark.parametrize("text,expected", [
    ("😠", ["😠"]), ("😲😮", ["😲", "😮"]), ("👩\u200d👩\u200d👧", ["👩\u200d👩\u200d👧"]),  # a ZWJ family: one
    ("👍🏽", ["👍🏽"]), ("🇫🇷🇩🇪", ["🇫🇷", "🇩🇪"]), ("❤️", ["❤️"]), ("1️⃣", ["1️⃣"]),
    ("🏴\U000E0067\U000E0062\U000E0073\U000E0063\U000E0074\U000E007F", ["🏴\U000E0067\U000E0062\U000E0073\U000E0063\U000E0074\U000E007F"]),
    ("a", None), ("😠 ", None), (":)", None), ("1", None), ("😠x", None),
])
def test_split_emoji(text, expected):
    assert split_emoji(text) == expected


def test_parse_emoji_map():
    assert parse_emoji_map("angry=😠, shocked=😲😮") == {"angry": "😠", "shocked": "😲😮"}
    for bad, needle in [("angry", "not NAME=EMOJI"), ("=😠", "not NAME=EMOJI"), ("angry=", "not NAME=EMOJI"),
                        ("angry=😠,angry=😡", "twice"), (",", "empty")]:
        with pytest.raises(ConfigError, match=needle):
            parse_emoji_map(bad)


def test_emoji_are_checked_against_the_pack():
    assert pack_emoji({"angry": "😡🤬"}, NAMES) == {"angry": ["😡", "🤬"]}
    assert check_emoji("angry", "👩\u200d👩\u200d👧😡🤬") == ["👩\u200d👩\u200d👧", "😡", "🤬"]  # 3 emoji, many code points
    with pytest.raises(ConfigError, match="4 emoji; WhatsApp takes 1 to 3"):
        check_emoji("angry", "😠😡🤬👿")
    with pytest.raises(ConfigError, match="not a sequence of emoji"):
        check_emoji("angry", "mad")
    with pytest.raises(ConfigError, match="'happy', not among the pack's expressions"):
        pack_emoji({"happy": "😀"}, NAMES)


def test_title_and_author_limits():
    check_pack_text("x" * 64, "y" * 128)
    check_pack_text("🙂" * 32, "a")  # 32 emoji are 64 UTF-16 units: as the apps count
    for title, author, needle in [("x" * 65, "a", "--title has 65 characters; Telegram"),
                                  ("🙂" * 33, "a", "--title has 66 characters"),
                                  ("x" * 500, "a", "--title has 500 characters"),
                                  ("t", "y" * 129, "--author has 129 characters; WhatsApp"),
                                  ("  ", "a", "--title is empty"), ("a\nb", "a", "line break")]:
        with pytest.raises(ConfigError, match=needle):
            check_pack_text(title, author)


# --- the command line: one message, nothing written -------------------------------------------------


@pytest.mark.parametrize("args,needle", [
    (["--emoji", "angry=mad"], "'mad' is not a sequence of emoji"),
    (["--emoji", "angry"], "is not NAME=EMOJI"),
    (["--emoji", "happy=😀"], "'happy', not among the pack's expressions"),
    (["--emoji", "angry=😠😡🤬👿"], "has 4 emoji"),
    (["--title", "x" * 500], "--title has 500 characters"),
    (["--author", "y" * 200], "--author has 200 characters"),
    (["--title", "bad\udcff"], "--title 'bad\\udcff' is not valid Unicode text"),  # a non-UTF-8 byte from argv
    (["--author", "\ud800me"], "--author '\\ud800me' is not valid Unicode text"),
])
def test_bad_pack_options_are_one_error_and_nothing_written(tmp_path, args, needle):
    out = tmp_path / "out"
    result = CliRunner().invoke(cli, ["sticker-pack", str(ROOT / "examples" / "toon.png"), "-o", str(out), *args],
                                env={"COLUMNS": "1000", "PEDIT_DEBUG": None})
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output and result.stdout == ""
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1 and needle in errors[0], result.stderr
    assert list(tmp_path.iterdir()) == []  # no output, no temporary folder
