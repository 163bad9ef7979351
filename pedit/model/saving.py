"""Saving a model folder: self-sufficient (the frozen parts copied in), written so that a killed save
never leaves a folder that passes for a finished model (pedit.model.loading reads it back)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from pedit import __version__
from pedit.files import process_alive
from pedit.model.card import CARD_FILE, card_for_saved_folder
from pedit.model.loading import FORMAT_VERSION, FROZEN

if TYPE_CHECKING:
    from pedit.model.mcdm import MCDM, FrozenParts


def save_model(out: Path, mcdm: MCDM, parts: FrozenParts, meta: dict) -> Path:
    """Write a self-sufficient model folder into `out` (which may hold checkpoints and logs too).

    Everything is written to a temp folder first and moved into place component by component,
    `pedit.json` last: a folder without pedit.json is never mistaken for a finished model. The model
    card (`README.md`, pedit.model.card) is made from pedit.json, keeping the text a user wrote into
    the card already there; its results section is cleared, since it measured other weights.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.glob(".model-tmp-*"):  # left by a save that was killed
        pid = stale.name.rsplit("-", 1)[1]
        if pid.isdigit() and (int(pid) == os.getpid() or not process_alive(int(pid))):
            shutil.rmtree(stale, ignore_errors=True)
    tmp = out / f".model-tmp-{os.getpid()}"
    try:
        tmp.mkdir()
        mcdm.unet.save_pretrained(tmp / "unet", safe_serialization=True)
        mcdm.image_projector.save_pretrained(tmp / "image_projector", safe_serialization=True)
        parts.vae.save_pretrained(tmp / "vae", safe_serialization=True)
        parts.text_encoder.save_pretrained(tmp / "text_encoder", safe_serialization=True)
        parts.tokenizer.save_pretrained(tmp / "tokenizer")
        parts.image_encoder.save_pretrained(tmp / "image_encoder", safe_serialization=True)
        (tmp / "image_encoder" / "preprocessor_config.json").write_text(
            json.dumps({"image_mean": list(parts.image_mean), "image_std": list(parts.image_std)}, indent=2)
        )
        (tmp / "scheduler").mkdir()
        (tmp / "scheduler" / "scheduler_config.json").write_text(json.dumps(parts.scheduler_config, indent=2))
        full = {
            "format": FORMAT_VERSION,
            "pedit_version": __version__,
            "conventions": {
                "c_s": "VAE posterior mode x scaling factor",
                "unet_input": "cat([z_t, c_s], channels)",
                "context": "cat([c_p, c_im], tokens), length 77 + K",
                "null": {"c_s": "zeros", "c_im": "zeros at the context level", "c_p": "empty prompt"},
            },
            "num_image_tokens": mcdm.num_image_tokens,
            "frozen": {name: name for name in FROZEN},
            **meta,
        }
        (tmp / "pedit.json").write_text(json.dumps(full, indent=2))
        names = ["unet", "image_projector", *FROZEN, "pedit.json"]
        if (card := card_for_saved_folder(out, full)) is not None:  # README.md, the model card
            (tmp / CARD_FILE).write_text(card, encoding="utf-8")
            names.insert(-1, CARD_FILE)
        (out / "pedit.json").unlink(missing_ok=True)
        for name in names:
            dest = out / name
            if dest.is_dir():
                shutil.rmtree(dest)
            os.replace(tmp / name, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out
