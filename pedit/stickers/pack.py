"""Sticker files people can import: per-sticker PNG + WebP, WhatsApp folders and `.wastickers`
archives, a Telegram folder (the apps' rules and the archive: pedit.stickers.formats).

Every size limit is checked on disk after each write; a file over a limit is re-encoded with the
next quality step, never shipped over it, and an encoder that cannot get under a limit is an error.
Each archive and the Telegram folder are read back and checked against every rule after writing.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw

from pedit.errors import OutputError
from pedit.stickers.formats import (COVER, STICKER_SIDE, TELEGRAM_STICKER_MAX, TELEGRAM_THUMB_MAX,  # noqa: F401
                                    TELEGRAM_THUMB_SIDE, WHATSAPP_MAX_STICKERS, WHATSAPP_MIN_STICKERS,
                                    WHATSAPP_STICKER_MAX, WHATSAPP_TRAY_MAX, WHATSAPP_TRAY_SIDE, check_sticker_count,
                                    check_telegram, check_wastickers, pack_sizes, write_side_files, write_wastickers)

# Quality steps, best first. WebP: lossy qualities (alpha stays lossless-sharp at alpha_quality 100
# until the last steps). PNG: lossless, then palettes of fewer colours.
WEBP_STEPS = ((90, 100), (80, 100), (70, 90), (55, 80), (40, 70), (25, 60), (10, 50))
PNG_STEPS = (None, 256, 128, 64, 32)

EMOJI = {
    "angry": "😠", "shocked": "😲", "laughing": "😂", "crying": "😢", "neutral": "🙂",
    "flower": "🌸", "sheep": "🐑", "santa": "🎅", "royal": "👑",
}
DEFAULT_EMOJI = "🙂"


@dataclass(frozen=True)
class Written:
    """A file the pack wrote: where, its size, and the quality step that got it under its limit."""

    path: Path
    bytes: int
    limit: int | None
    step: int  # index into WEBP_STEPS / PNG_STEPS; 0 = best quality

    def to_dict(self, root: Path) -> dict:
        return {"file": self.path.relative_to(root).as_posix(), "bytes": self.bytes, "limit": self.limit,
                "quality_step": self.step}


def encode(image: Image.Image, fmt: str, step: int) -> bytes:
    """`image` (RGBA) as PNG or WEBP bytes at quality step `step`."""
    buf = io.BytesIO()
    if fmt == "WEBP":
        quality, alpha_quality = WEBP_STEPS[step]
        image.save(buf, format="WEBP", quality=quality, alpha_quality=alpha_quality, method=4)  # 6: 30x slower with lossless alpha
    elif fmt == "PNG":
        colours = PNG_STEPS[step]
        if colours is not None:
            # FASTOCTREE is the quantizer that keeps an alpha channel.
            image = image.quantize(colours, method=Image.Quantize.FASTOCTREE, dither=Image.Dither.NONE)
        image.save(buf, format="PNG", optimize=True)
    else:
        raise ValueError(f"unknown format {fmt}")
    return buf.getvalue()


def write_within(image: Image.Image, path: Path, limit: int | None) -> Written:
    """Write `image` to `path` (format from the suffix), re-encoding down until the file is ≤ `limit`.

    The size is checked on disk after each write. No step fits → OutputError, and no file is left.
    """
    fmt = {".png": "PNG", ".webp": "WEBP"}[path.suffix.lower()]
    steps = WEBP_STEPS if fmt == "WEBP" else PNG_STEPS
    for step in range(len(steps)):
        data = encode(image, fmt, step)
        path.write_bytes(data)
        size = os.path.getsize(path)
        if limit is None or size <= limit:
            return Written(path, size, limit, step)
    path.unlink()
    raise OutputError(
        f"{path.name} stays over its limit of {limit:,} bytes ({size:,} bytes at the lowest quality). "
        "A sticker this detailed cannot be packed; simplify the picture or report this as a bug."
    )


def tray_icon(sticker: Image.Image, side: int) -> Image.Image:
    """A small square icon of a sticker, alpha kept (premultiplied resize: no dark fringe)."""
    return sticker.convert("RGBa").resize((side, side), Image.Resampling.LANCZOS).convert("RGBA")


def sticker_emoji(label: str, emoji: Mapping[str, Sequence[str]] | None) -> list[str]:
    """The emoji of sticker `label`: the user's (--emoji, already checked), else the built-in one."""
    given = (emoji or {}).get(label)
    return list(given) if given else [EMOJI.get(label, DEFAULT_EMOJI)]


def write_pack(root: Path, stickers: Sequence[tuple[str, Image.Image]], title: str, author: str = "pedit",
               emoji: Mapping[str, Sequence[str]] | None = None, limits: dict[str, int] | None = None) -> dict:
    """Write stickers/, the WhatsApp folders and archives, telegram/ and contents.json under `root`
    (existing, empty); return the files record (every file under a "file" key, for --overwrite).

    `stickers`: (direction name, 512×512 RGBA) in pack order. `emoji`: name → 1-3 emoji (checked by
    the caller's config). `limits` overrides the app limits by key (tests force re-encoding with them).
    """
    limits = {"whatsapp_sticker": WHATSAPP_STICKER_MAX, "whatsapp_tray": WHATSAPP_TRAY_MAX,
              "telegram_sticker": TELEGRAM_STICKER_MAX, "telegram_thumb": TELEGRAM_THUMB_MAX, **(limits or {})}
    check_sticker_count(len(stickers))
    for label, image in stickers:
        if image.size != (STICKER_SIDE, STICKER_SIDE) or image.mode != "RGBA":
            raise ValueError(f"sticker {label} is {image.mode} {image.size}; expected RGBA {STICKER_SIDE}²")
    stems = [f"{i + 1:02d}_{label}" for i, (label, _) in enumerate(stickers)]
    emojis = [sticker_emoji(label, emoji) for label, _ in stickers]
    (root / "stickers").mkdir()
    record: dict = {"stickers": []}
    for stem, (label, image), e in zip(stems, stickers, emojis):
        png = write_within(image, root / "stickers" / f"{stem}.png", None)
        webp = write_within(image, root / "stickers" / f"{stem}.webp", None)
        record["stickers"].append({"name": label, "emoji": e, "png": png.to_dict(root), "webp": webp.to_dict(root)})
    record["whatsapp"] = _write_whatsapp(root, stickers, stems, emojis, title, author, limits, record["stickers"])
    record["telegram"] = _write_telegram(root, stickers, stems, emojis, title, limits, record["stickers"])
    return record


def _write_whatsapp(root, stickers, stems, emojis, title, author, limits, entries) -> dict:
    """One folder + `.wastickers` a pack of at most 30 (whatsapp/ and whatsapp.wastickers; with more,
    whatsapp-1/, whatsapp-1.wastickers, ...), and one contents.json, WhatsApp's sample-app layout
    (`contents.json` beside a folder per pack, named by the pack's identifier)."""
    sizes = pack_sizes(len(stickers))
    packs, contents_packs, first = [], [], 0
    for k, size in enumerate(sizes):
        ident = "whatsapp" if len(sizes) == 1 else f"whatsapp-{k + 1}"
        name = title if len(sizes) == 1 else f"{title} ({k + 1}/{len(sizes)})"
        folder = root / ident
        folder.mkdir()
        members = range(first, first + size)
        first += size
        for i in members:
            wa = write_within(stickers[i][1], folder / f"{stems[i]}.webp", limits["whatsapp_sticker"])
            entries[i]["whatsapp"] = wa.to_dict(root)
        # The tray shows the pack's first sticker, its face.
        tray = write_within(tray_icon(stickers[members[0]][1], WHATSAPP_TRAY_SIDE), folder / COVER, limits["whatsapp_tray"])
        side = write_side_files(folder, name, author, {stems[i]: emojis[i] for i in members})
        archive = root / f"{ident}.wastickers"
        write_wastickers(archive, folder, [f"{stems[i]}.webp" for i in members])
        check_wastickers(archive, sticker_max=limits["whatsapp_sticker"], tray_max=limits["whatsapp_tray"])
        packs.append({"identifier": ident, "title": name, "stickers": [stems[i] for i in members],
                      "tray": tray.to_dict(root), "side_files": [{"file": p.relative_to(root).as_posix()} for p in side],
                      "archive": {"file": archive.name, "bytes": archive.stat().st_size}})
        contents_packs.append({
            "identifier": ident, "name": name, "publisher": author, "tray_image_file": COVER,
            "image_data_version": "1", "avoid_cache": False, "animated_sticker_pack": False,
            "stickers": [{"image_file": f"{stems[i]}.webp", "emojis": emojis[i]} for i in members]})
    contents = {"android_play_store_link": "", "ios_app_store_link": "", "sticker_packs": contents_packs}
    (root / "contents.json").write_text(json.dumps(contents, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return {"contents": "contents.json", "packs": packs}


def _write_telegram(root, stickers, stems, emojis, title, limits, entries) -> dict:
    """telegram/: a PNG a sticker, the set thumbnail as cover.png, title.txt and emoji.txt; one set
    takes up to 120 static stickers, so it is never split."""
    folder = root / "telegram"
    folder.mkdir()
    for i, (_, image) in enumerate(stickers):
        entries[i]["telegram"] = write_within(image, folder / f"{stems[i]}.png", limits["telegram_sticker"]).to_dict(root)
    thumb = write_within(tray_icon(stickers[0][1], TELEGRAM_THUMB_SIDE), folder / COVER, limits["telegram_thumb"])
    side = write_side_files(folder, title, None, dict(zip(stems, emojis)))
    check_telegram(folder, stems, sticker_max=limits["telegram_sticker"], thumb_max=limits["telegram_thumb"])
    return {"thumbnail": thumb.to_dict(root), "side_files": [{"file": p.relative_to(root).as_posix()} for p in side],
            "emoji": {f"{stem}.png": "".join(e) for stem, e in zip(stems, emojis)}}


def preview_sheet(stickers: Sequence[tuple[str, Image.Image]], source: Image.Image | None = None,
                  cell: int = 256) -> Image.Image:
    """A row of stickers on a checkerboard (so transparency shows), the source portrait first, labelled."""
    tiles = ([("input", source.convert("RGBA"))] if source is not None else []) + list(stickers)
    label_h = 22
    sheet = Image.new("RGB", (cell * len(tiles), cell + label_h), (250, 250, 250))
    board = Image.new("RGB", (cell, cell), (255, 255, 255))
    draw = ImageDraw.Draw(board)
    square = cell // 16
    for y in range(0, cell, square):
        for x in range(0, cell, square):
            if (x // square + y // square) % 2:
                draw.rectangle([x, y, x + square - 1, y + square - 1], fill=(214, 218, 224))
    text = ImageDraw.Draw(sheet)
    for i, (label, image) in enumerate(tiles):
        tile = board.copy().convert("RGBA")
        tile.alpha_composite(image.convert("RGBa").resize((cell, cell), Image.Resampling.LANCZOS).convert("RGBA"))
        sheet.paste(tile.convert("RGB"), (i * cell, 0))
        text.text((i * cell + 8, cell + 5), label, fill=(30, 30, 30))
    return sheet
