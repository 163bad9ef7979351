"""What the messaging apps import: the `.wastickers` archive, the app folders' side files, and the
rules both apps check (titles, authors, emoji), with a check of each archive after it is written.

Rules (WhatsApp's sample sticker app and its validator; Telegram's Bot API and @Stickers bot):
- WhatsApp pack: 3 to 30 static stickers, 512×512 WebP ≤ 100 KB each, a 96×96 PNG tray ≤ 50 KB,
  one to three emoji a sticker; name and publisher ≤ 128 characters, counted as the validator counts
  them (Java `String.length()`: UTF-16 code units, so an emoji in a title counts 2). Limits here are
  decimal bytes (100,000, not 102,400) as the strictest converters count them.
- Telegram set: 1 to 120 static stickers, PNG or WebP with one side exactly 512 px and neither over,
  ≤ 512 KB, one to twenty emoji each; a set title of 1 to 64 characters; a 100×100 thumbnail ≤ 128 KB.

Side files use the names converters already skip when they list a folder's stickers: `title.txt`,
`author.txt`, `emoji.txt` (a JSON object, sticker file stem → its emoji) and `cover.png` for the
tray or thumbnail. A `tray.png` or `contents.json` beside the stickers is read as one more sticker.
"""

from __future__ import annotations

import io
import json
import math
import zipfile
from collections.abc import Sequence
from pathlib import Path

from PIL import Image

from pedit.errors import ConfigError, OutputError

STICKER_SIDE = 512
WHATSAPP_STICKER_MAX = 100_000
WHATSAPP_TRAY_SIDE, WHATSAPP_TRAY_MAX = 96, 50_000
WHATSAPP_MIN_STICKERS, WHATSAPP_MAX_STICKERS = 3, 30
WHATSAPP_TEXT_MAX = 128  # name (title) and publisher (author)
WHATSAPP_EMOJI_MAX = 3
TELEGRAM_STICKER_MAX = 512_000
TELEGRAM_THUMB_SIDE, TELEGRAM_THUMB_MAX = 100, 128_000
TELEGRAM_MAX_STICKERS = 120  # a static set
TELEGRAM_TITLE_MAX = 64
TELEGRAM_EMOJI_MAX = 20
COVER = "cover.png"  # the tray / thumbnail inside a folder: converters skip files named cover.*
ARCHIVE_TRAY = "tray.png"  # inside the .wastickers: the importer apps take its one PNG as the tray

# --- emoji -----------------------------------------------------------------------------------------

# Code points that start an emoji (Unicode's Extended_Pictographic, folded into ranges; the standard
# library has no emoji property). Regional-indicator pairs (flags) and keycaps are handled apart.
_PICTOGRAPHIC = (
    (0x00A9, 0x00A9), (0x00AE, 0x00AE), (0x203C, 0x203C), (0x2049, 0x2049), (0x2122, 0x2122),
    (0x2139, 0x2139), (0x2194, 0x2199), (0x21A9, 0x21AA), (0x231A, 0x231B), (0x2328, 0x2328),
    (0x23CF, 0x23CF), (0x23E9, 0x23F3), (0x23F8, 0x23FA), (0x24C2, 0x24C2), (0x25AA, 0x25AB),
    (0x25B6, 0x25B6), (0x25C0, 0x25C0), (0x25FB, 0x25FE), (0x2600, 0x27BF), (0x2934, 0x2935),
    (0x2B05, 0x2B07), (0x2B1B, 0x2B1C), (0x2B50, 0x2B50), (0x2B55, 0x2B55), (0x3030, 0x3030),
    (0x303D, 0x303D), (0x3297, 0x3297), (0x3299, 0x3299), (0x1F000, 0x1F1E5), (0x1F200, 0x1F3FA),
    (0x1F400, 0x1FAFF),
)
_ZWJ, _VS16, _VS15, _KEYCAP = 0x200D, 0xFE0F, 0xFE0E, 0x20E3


def _pictographic(cp: int) -> bool:
    return any(lo <= cp <= hi for lo, hi in _PICTOGRAPHIC)


def _regional(cp: int) -> bool:
    return 0x1F1E6 <= cp <= 0x1F1FF


def split_emoji(text: str) -> list[str] | None:
    """`text` as a list of emoji (each a full sequence: ZWJ joins, skin tones, flags, keycaps,
    tag sequences); None when it holds anything that is not an emoji (letters, spaces, commas)."""
    cps = [ord(c) for c in text]
    out, i = [], 0
    while i < len(cps):
        start = i
        if i + 1 < len(cps) and _regional(cps[i]) and _regional(cps[i + 1]):
            out.append(text[i:i + 2])  # a flag: two regional indicators
            i += 2
            continue
        if chr(cps[i]) in "0123456789#*":  # a keycap: digit, optional VS16, U+20E3
            j = i + 1 + (i + 1 < len(cps) and cps[i + 1] == _VS16)
            if j < len(cps) and cps[j] == _KEYCAP:
                out.append(text[i:j + 1])
                i = j + 1
                continue
            return None
        while True:  # one pictograph with its modifiers, then more after each ZWJ
            if i >= len(cps) or not _pictographic(cps[i]):
                return None
            i += 1
            while i < len(cps) and (cps[i] in (_VS16, _VS15) or 0x1F3FB <= cps[i] <= 0x1F3FF
                                    or 0xE0020 <= cps[i] <= 0xE007F):  # presentation, skin tone, tags
                i += 1
            if i < len(cps) and cps[i] == _ZWJ:
                i += 1
                continue
            break
        out.append(text[start:i])
    return out


def parse_emoji_map(text: str) -> dict[str, str]:
    """`angry=😠,shocked=😲😮` → {"angry": "😠", "shocked": "😲😮"}; ConfigError naming the bad entry."""
    found: dict[str, str] = {}
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        name, sep, emoji = (s.strip() for s in item.partition("="))
        if not sep or not name or not emoji:
            raise ConfigError(f"--emoji entry {item!r} is not NAME=EMOJI; write e.g. --emoji angry=😠,shocked=😲😮.")
        if name in found:
            raise ConfigError(f"--emoji names {name!r} twice; give each expression one entry.")
        found[name] = emoji
    if not found:
        raise ConfigError("--emoji is empty; write e.g. --emoji angry=😠,shocked=😲😮.")
    return found


def check_emoji(name: str, emoji: str) -> list[str]:
    """The emoji of sticker `name` as a list, or ConfigError: 1 to 3 emoji (WhatsApp's limit, the
    stricter of the two apps: Telegram takes up to 20)."""
    found = split_emoji(emoji)
    if not found:
        raise ConfigError(f"--emoji {name}={emoji!r}: {emoji!r} is not a sequence of emoji (no letters, spaces "
                          f"or punctuation); write e.g. --emoji {name}=😠.")
    if len(found) > WHATSAPP_EMOJI_MAX:
        raise ConfigError(f"--emoji {name}={emoji} has {len(found)} emoji; WhatsApp takes 1 to "
                          f"{WHATSAPP_EMOJI_MAX} a sticker. Keep the {WHATSAPP_EMOJI_MAX} that fit best.")
    return found


# --- titles and authors ----------------------------------------------------------------------------


def text_length(text: str) -> int:
    """Characters as WhatsApp's validator and Telegram count them: UTF-16 code units."""
    return len(text.encode("utf-16-le")) // 2


def check_text(flag: str, text: str, limit: int, why: str) -> None:
    """A one-line, non-empty title or author of at most `limit` characters, or ConfigError."""
    if not text.strip():
        raise ConfigError(f"{flag} is empty; the apps show it on the pack. Give a short {flag[2:]}.")
    try:  # bytes that are not UTF-8 arrive from the command line as lone surrogates: no app can show them
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ConfigError(f"{flag} {ascii(text)} is not valid Unicode text (bytes that are not UTF-8, or a lone "
                          "surrogate); give it in UTF-8.") from None
    if any(ord(c) < 32 or 0x7F <= ord(c) < 0xA0 or c in "\u2028\u2029" for c in text):
        raise ConfigError(f"{flag} holds a line break or control character; give it on one line.")
    n = text_length(text)
    if n > limit:
        raise ConfigError(f"{flag} has {n} characters; {why} hold at most {limit}. Shorten it.")


def check_pack_text(title: str, author: str) -> None:
    """The pack's title and author, as both apps take them (ConfigError otherwise)."""
    for flag, value in (("--title", title), ("--author", author)):
        if not isinstance(value, str):
            raise ConfigError(f"{flag} must be text, got {value!r}.")
    # The title goes to both apps: Telegram's 64 is the binding limit (WhatsApp takes 128).
    check_text("--title", title, TELEGRAM_TITLE_MAX, "Telegram's sticker set titles")
    check_text("--author", author, WHATSAPP_TEXT_MAX, "WhatsApp's pack publishers")


def pack_emoji(given: dict[str, str], expressions: Sequence[str]) -> dict[str, list[str]]:
    """--emoji checked against the pack: each name one of `expressions`, each value 1-3 emoji."""
    if not isinstance(given, dict):
        raise ConfigError(f"emoji must be a mapping of expression → emoji, got {given!r}.")
    unknown = [name for name in given if name not in expressions]
    if unknown:
        raise ConfigError(f"--emoji names {', '.join(map(repr, unknown))}, not among the pack's expressions "
                          f"({', '.join(expressions)}).")
    return {name: check_emoji(name, emoji if isinstance(emoji, str) else "") for name, emoji in given.items()}


def pack_sizes(n: int) -> list[int]:
    """Split n stickers into WhatsApp packs of at most 30, as even as possible, so none falls under
    3 (31 → 16 + 15, not 30 + 1, which WhatsApp would refuse)."""
    packs = max(1, math.ceil(n / WHATSAPP_MAX_STICKERS))
    return [n // packs + (i < n % packs) for i in range(packs)]


def check_sticker_count(n: int) -> None:
    if not WHATSAPP_MIN_STICKERS <= n <= TELEGRAM_MAX_STICKERS:
        raise ConfigError(
            f"A sticker pack holds {WHATSAPP_MIN_STICKERS} to {TELEGRAM_MAX_STICKERS} stickers (WhatsApp needs at "
            f"least {WHATSAPP_MIN_STICKERS} a pack and takes up to {WHATSAPP_MAX_STICKERS}, more are split into "
            f"packs of up to {WHATSAPP_MAX_STICKERS}; a Telegram set takes {TELEGRAM_MAX_STICKERS}); {n} were asked "
            f"for. Choose between {WHATSAPP_MIN_STICKERS} and {TELEGRAM_MAX_STICKERS} expressions."
        )


# --- side files and the archive --------------------------------------------------------------------


def write_side_files(folder: Path, title: str | None, author: str | None, emoji: dict[str, list[str]]) -> list[Path]:
    """title.txt, author.txt (when given) and emoji.txt (stem → emoji, a JSON object) in `folder`."""
    written = []
    for name, text in (("title.txt", title), ("author.txt", author)):
        if text is not None:
            (folder / name).write_text(text, encoding="utf-8")
            written.append(folder / name)
    (folder / "emoji.txt").write_text(json.dumps({stem: "".join(e) for stem, e in emoji.items()}, indent=2,
                                                 ensure_ascii=False) + "\n", encoding="utf-8")
    return [*written, folder / "emoji.txt"]


def write_wastickers(path: Path, folder: Path, stickers: Sequence[str]) -> int:
    """Zip a written WhatsApp folder (`stickers`: its WebP names, in pack order) into `path`.

    Entries: the stickers, the cover as tray.png, title.txt, author.txt, emoji.txt. Stored flat at
    the archive's root, as the importer apps read them. Returns the archive's size in bytes.
    """
    with zipfile.ZipFile(path, "x", zipfile.ZIP_DEFLATED) as zf:
        for name in stickers:
            zf.write(folder / name, name, compress_type=zipfile.ZIP_STORED)  # WebP is already compressed
        zf.write(folder / COVER, ARCHIVE_TRAY, compress_type=zipfile.ZIP_STORED)
        for name in ("title.txt", "author.txt", "emoji.txt"):
            zf.write(folder / name, name)
    return path.stat().st_size


def _image_rule(data: bytes, fmt: str, size: tuple[int, int], limit: int, label: str) -> list[str]:
    problems = [f"{label} is {len(data):,} bytes (limit {limit:,})"] if len(data) > limit else []
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            if im.format != fmt or im.size != size or getattr(im, "n_frames", 1) != 1:
                problems.append(f"{label} is {im.format} {im.size[0]}×{im.size[1]}, {getattr(im, 'n_frames', 1)} "
                                f"frame(s); expected a still {fmt} {size[0]}×{size[1]}")
    except (OSError, ValueError) as e:
        problems.append(f"{label} does not decode: {e}")
    return problems


def wastickers_problems(path: Path, sticker_max: int = WHATSAPP_STICKER_MAX,
                        tray_max: int = WHATSAPP_TRAY_MAX) -> list[str]:
    """Every rule a `.wastickers` archive breaks (empty when it is importable): read back from the zip."""
    problems: list[str] = []
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
        if zf.testzip() is not None:
            return [f"{path.name}: a corrupt entry"]
        stickers = [n for n in names if n.lower().endswith(".webp")]
        if not WHATSAPP_MIN_STICKERS <= len(stickers) <= WHATSAPP_MAX_STICKERS:
            problems.append(f"{len(stickers)} stickers (3 to 30)")
        if len(names) != len(set(names)) or any("/" in n for n in names):
            problems.append("entries must be unique and flat")
        for n in stickers:
            problems += _image_rule(zf.read(n), "WEBP", (STICKER_SIDE,) * 2, sticker_max, n)
        pngs = [n for n in names if n.lower().endswith(".png")]
        if pngs != [ARCHIVE_TRAY]:
            problems.append(f"PNG entries {pngs}; expected the one tray, {ARCHIVE_TRAY}")
        else:
            problems += _image_rule(zf.read(ARCHIVE_TRAY), "PNG", (WHATSAPP_TRAY_SIDE,) * 2, tray_max, ARCHIVE_TRAY)
        for n in ("title.txt", "author.txt"):
            text = zf.read(n).decode("utf-8") if n in names else ""
            if not text.strip() or text_length(text) > WHATSAPP_TEXT_MAX or "\n" in text:
                problems.append(f"{n} must hold one line of 1 to {WHATSAPP_TEXT_MAX} characters")
        emoji = json.loads(zf.read("emoji.txt").decode("utf-8")) if "emoji.txt" in names else {}
        for n in stickers:
            found = split_emoji(emoji.get(Path(n).stem, ""))
            if not found or len(found) > WHATSAPP_EMOJI_MAX:
                problems.append(f"{n} needs 1 to {WHATSAPP_EMOJI_MAX} emoji in emoji.txt")
        extra = set(names) - set(stickers) - {ARCHIVE_TRAY, "title.txt", "author.txt", "emoji.txt"}
        if extra:
            problems.append(f"unexpected entries {sorted(extra)}")
    return problems


def check_wastickers(path: Path, **limits) -> None:
    """OutputError (a bug, never shipped) when the archive just written breaks any rule."""
    problems = wastickers_problems(path, **limits)
    if problems:
        path.unlink(missing_ok=True)
        raise OutputError(f"{path.name} breaks WhatsApp's rules after writing: {'; '.join(problems[:5])}. "
                          "This is a bug in pedit; please report it.")


def telegram_problems(folder: Path, stems: Sequence[str], sticker_max: int = TELEGRAM_STICKER_MAX,
                      thumb_max: int = TELEGRAM_THUMB_MAX) -> list[str]:
    """Every rule the Telegram folder breaks (empty when the bot takes it): read back from disk."""
    problems: list[str] = []
    for stem in stems:
        path = folder / f"{stem}.png"
        size = path.stat().st_size
        if size > sticker_max:
            problems.append(f"{path.name} is {size:,} bytes (limit {sticker_max:,})")
        with Image.open(path) as im:
            if im.format != "PNG" or max(im.size) != STICKER_SIDE:  # one side exactly 512, neither over
                problems.append(f"{path.name} is {im.format} {im.size}; expected PNG with a 512-px side, none over")
    problems += _image_rule((folder / COVER).read_bytes(), "PNG", (TELEGRAM_THUMB_SIDE,) * 2, thumb_max, COVER)
    emoji = json.loads((folder / "emoji.txt").read_text(encoding="utf-8"))
    if set(emoji) != set(stems):
        problems.append("emoji.txt must name every sticker and nothing else")
    for stem, text in emoji.items():
        found = split_emoji(text)
        if not found or len(found) > TELEGRAM_EMOJI_MAX:
            problems.append(f"{stem} needs 1 to {TELEGRAM_EMOJI_MAX} emoji")
    title = (folder / "title.txt").read_text(encoding="utf-8")
    if not title.strip() or text_length(title) > TELEGRAM_TITLE_MAX:
        problems.append(f"title.txt must hold 1 to {TELEGRAM_TITLE_MAX} characters")
    return problems


def check_telegram(folder: Path, stems: Sequence[str], **limits) -> None:
    problems = telegram_problems(folder, stems, **limits)
    if problems:
        raise OutputError(f"The Telegram folder breaks the Bot API's rules after writing: {'; '.join(problems[:5])}. "
                          "This is a bug in pedit; please report it.")
