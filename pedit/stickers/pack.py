"""Sticker files people can import: per-sticker PNG + WebP, a WhatsApp folder, a Telegram folder.

The apps' rules (checked after every write; a file over a limit is re-encoded with the next quality
step, never shipped over it, and an encoder that cannot get under a limit is an error):
- WhatsApp: 512×512 WebP stickers ≤ 100 KB each, a 96×96 PNG tray icon ≤ 50 KB, 3 to 30 stickers a
  pack, one to three emoji per sticker (the app's `contents.json` layout, one emoji here).
- Telegram (static stickers): PNG or WebP with one side exactly 512 px, ≤ 512 KB each; a 100×100
  set thumbnail (≤ 128 KB, the Bot API's setStickerSetThumbnail limit).
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw

from pedit.errors import OutputError

KB = 1024
STICKER_SIDE = 512
WHATSAPP_STICKER_MAX = 100 * KB
WHATSAPP_TRAY_SIDE, WHATSAPP_TRAY_MAX = 96, 50 * KB
WHATSAPP_MIN_STICKERS, WHATSAPP_MAX_STICKERS = 3, 30
TELEGRAM_STICKER_MAX = 512 * KB
TELEGRAM_THUMB_SIDE, TELEGRAM_THUMB_MAX = 100, 128 * KB

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
        f"{path.name} stays over its limit of {limit // KB} KB ({size:,} bytes at the lowest quality). "
        "A sticker this detailed cannot be packed; simplify the picture or report this as a bug."
    )


def tray_icon(sticker: Image.Image, side: int) -> Image.Image:
    """A small square icon of a sticker, alpha kept (premultiplied resize: no dark fringe)."""
    return sticker.convert("RGBa").resize((side, side), Image.Resampling.LANCZOS).convert("RGBA")


def check_sticker_count(n: int) -> None:
    if not WHATSAPP_MIN_STICKERS <= n <= WHATSAPP_MAX_STICKERS:
        raise OutputError(
            f"A WhatsApp pack holds {WHATSAPP_MIN_STICKERS} to {WHATSAPP_MAX_STICKERS} stickers; "
            f"{n} were asked for. Choose between {WHATSAPP_MIN_STICKERS} and {WHATSAPP_MAX_STICKERS} expressions."
        )


def write_pack(root: Path, stickers: Sequence[tuple[str, Image.Image]], name: str, publisher: str = "pedit",
               limits: dict[str, int] | None = None) -> dict:
    """Write stickers/, whatsapp/, telegram/ under `root` (existing, empty); return the files record.

    `stickers`: (direction name, 512×512 RGBA) in pack order. `limits` overrides the app limits by
    key (tests force the re-encoding path with small ones).
    """
    limits = {"whatsapp_sticker": WHATSAPP_STICKER_MAX, "whatsapp_tray": WHATSAPP_TRAY_MAX,
              "telegram_sticker": TELEGRAM_STICKER_MAX, "telegram_thumb": TELEGRAM_THUMB_MAX, **(limits or {})}
    check_sticker_count(len(stickers))
    for label, image in stickers:
        if image.size != (STICKER_SIDE, STICKER_SIDE) or image.mode != "RGBA":
            raise ValueError(f"sticker {label} is {image.mode} {image.size}; expected RGBA {STICKER_SIDE}²")
    for sub in ("stickers", "whatsapp", "telegram"):
        (root / sub).mkdir()

    record: dict = {"stickers": [], "whatsapp": {}, "telegram": {}}
    wa_entries = []
    for i, (label, image) in enumerate(stickers):
        stem = f"{i + 1:02d}_{label}"
        emoji = EMOJI.get(label, DEFAULT_EMOJI)
        png = write_within(image, root / "stickers" / f"{stem}.png", None)
        webp = write_within(image, root / "stickers" / f"{stem}.webp", None)
        wa = write_within(image, root / "whatsapp" / f"{stem}.webp", limits["whatsapp_sticker"])
        tg = write_within(image, root / "telegram" / f"{stem}.png", limits["telegram_sticker"])
        record["stickers"].append({"name": label, "emoji": emoji, "png": png.to_dict(root), "webp": webp.to_dict(root),
                                   "whatsapp": wa.to_dict(root), "telegram": tg.to_dict(root)})
        wa_entries.append({"image_file": wa.path.name, "emojis": [emoji]})

    # The tray and thumbnail show the first sticker, the pack's face.
    tray = write_within(tray_icon(stickers[0][1], WHATSAPP_TRAY_SIDE), root / "whatsapp" / "tray.png", limits["whatsapp_tray"])
    thumb = write_within(tray_icon(stickers[0][1], TELEGRAM_THUMB_SIDE), root / "telegram" / "thumb.png",
                         limits["telegram_thumb"])
    contents = {  # the layout of WhatsApp's sample sticker app (contents.json)
        "android_play_store_link": "", "ios_app_store_link": "",
        "sticker_packs": [{"identifier": "pedit_stickers", "name": name, "publisher": publisher,
                           "tray_image_file": tray.path.name, "image_data_version": "1",
                           "avoid_cache": False, "animated_sticker_pack": False, "stickers": wa_entries}],
    }
    (root / "whatsapp" / "contents.json").write_text(json.dumps(contents, indent=2, ensure_ascii=False) + "\n",
                                                     encoding="utf-8")
    record["whatsapp"] = {"contents": "whatsapp/contents.json", "tray": tray.to_dict(root)}
    record["telegram"] = {"thumbnail": thumb.to_dict(root),
                          "emoji": {f"{i + 1:02d}_{label}.png": EMOJI.get(label, DEFAULT_EMOJI)
                                    for i, (label, _) in enumerate(stickers)}}
    return record


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
