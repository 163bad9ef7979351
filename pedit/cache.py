"""Where pedit keeps its caches: one root, one documented variable (docs/deployment.md, "Caches").

    $PEDIT_CACHE, else $XDG_CACHE_HOME/pedit, else ~/.cache/pedit
        traced/<key>/       TorchScript copies of model folders (pedit.model.traced)
        engines/<key>/      ONNX graphs / TensorRT engines exported on first use (pedit.export.backends)
        compile/            torch.compile's Inductor kernels (pedit.export.backends)
        dreambooth/<key>/   sticker-pack LoRAs (pedit.stickers)

Every entry is rebuilt when missing, so deleting any folder (or the root) only costs time.
`PEDIT_CACHE_DIR` is read as an older name of `PEDIT_CACHE` when that is unset.
"""

from __future__ import annotations

import os
from pathlib import Path

VARIABLE = "PEDIT_CACHE"
OLD_VARIABLE = "PEDIT_CACHE_DIR"


def cache_root(sub: str = "") -> Path:
    """The cache root, or its subfolder `sub` (not created here)."""
    root = os.environ.get(VARIABLE) or os.environ.get(OLD_VARIABLE)
    if root:
        base = Path(root).expanduser()
    else:
        base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "pedit"
    return base / sub if sub else base
