"""Issue 19's export-folder cases, run against whichever pedit is on PYTHONPATH; prints held/broken per case.

    PYTHONPATH=$PWD HF_HUB_OFFLINE=1 python scripts/export_folder_cases.py

Uses a copy of the bundled toon model in a temp folder (its U-Net is changed in the second case).
"""

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from pedit.export.backends import load_editor
from pedit.export.pipeline import ExportConfig, export_model
from pedit.model.loading import load_model


def main() -> None:
    tmp = Path(tempfile.mkdtemp())
    src = Path(shutil.copytree(load_model(None).path, tmp / "model"))
    out = tmp / "engines"
    export_model(ExportConfig(model=str(src), output=str(out), networks=("vae_encoder",)))

    # 1. A killed export's temp graph (the name an older pedit gave it; its process is gone).
    pid = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True).stdout)
    debris = out / f".unet.onnx.{pid}.tmp"
    debris.write_bytes(b"half a graph")
    export_model(ExportConfig(model=str(src), output=str(out), networks=("vae_encoder",), force=True))
    print("killed export's temp graph removed by the next export:", "broken" if debris.exists() else "held")

    # 2. --engines DIR after the model's U-Net changed in place (another model at the same path).
    export_model(ExportConfig(model=str(src), output=str(out), networks=("unet",)))
    unet = load_model(src).mcdm.unet
    with torch.no_grad():
        unet.conv_out.bias.add_(1.0)
    unet.save_pretrained(src / "unet", safe_serialization=True)
    before = (out / "unet.onnx").read_bytes()
    try:
        load_editor(src, device="cpu", backend="onnx", engines=out)
        changed = (out / "unet.onnx").read_bytes() != before
        print("--engines with another U-Net refused:", "broken (exported over)" if changed else "broken (used)")
    except Exception as e:
        print("--engines with another U-Net refused: held:", f"{type(e).__name__}: {str(e)[:90]}")

    # 3. Two exports into one folder at once.
    cmd = [sys.executable, "-m", "pedit", "export", "-m", str(src), "-o", str(tmp / "shared"), "--networks", "unet",
           "--force", "-q"]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [(*p.communicate(), p.returncode) for p in procs]
    codes = sorted(r[2] for r in results)
    errors = [r[1].strip().splitlines()[-1][:110] for r in results if r[2]]
    print("two exports into one folder at once:", "held (one refused)" if codes == [0, 1] else f"broken (exit codes {codes})",
          errors)
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
