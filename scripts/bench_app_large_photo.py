"""The web app's edit of a large photo against `pedit edit`'s (issue 27, class 6): medians of alternated runs.

    PYTHONPATH=$PWD HF_HUB_OFFLINE=1 python scripts/bench_app_large_photo.py [MEGAPIXELS] [RUNS]

Both use one loaded Editor (the app's), so the figure is the per-request work: the app's request
(`PeditApp.edit`: the edit, its mask and the mask overlay, as `pedit edit --save-mask`) and the CLI's
(`edit_files` with the CLI's defaults, and with --save-mask). The photo is examples/toon.png upscaled, written to a temp folder.
"""
import statistics
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image

from pedit.app.service import AppConfig, EditRequest, PeditApp
from pedit.photos.edit_files import EditFilesConfig, edit_files

mp = float(sys.argv[1]) if len(sys.argv) > 1 else 12
runs = int(sys.argv[2]) if len(sys.argv) > 2 else 3
work = Path(tempfile.mkdtemp(prefix="bench-app-"))
side = int((mp * 1e6) ** 0.5)
photo = work / "photo.jpg"
root = Path(__import__("pedit").__file__).resolve().parents[1]
Image.open(root / "examples" / "toon.png").convert("RGB").resize((side, side), Image.Resampling.BICUBIC).save(photo)
app = PeditApp(AppConfig(device="cpu", max_pixels=200_000_000))


def cli(i, save_mask=False):
    out = work / f"cli-{i}-{save_mask}"
    out.mkdir()
    edit_files(EditFilesConfig(inputs=(str(photo),), direction="laughing", output=str(out), device="cpu",
                               max_pixels=200_000_000, save_mask=save_mask), editor=app.editor)


def web(i):
    app.edit(EditRequest(photo=str(photo), direction="laughing"))


times = {"cli": [], "cli --save-mask": [], "app": []}
cli(-1), web(-1)  # warm-up
for i in range(runs):
    for name, run in (("cli", cli), ("cli --save-mask", lambda i: cli(i, True)), ("app", web)):
        t = time.perf_counter()
        run(i)
        times[name].append(time.perf_counter() - t)
med = {k: statistics.median(v) for k, v in times.items()}
print(f"{side}x{side} ({side * side / 1e6:.1f} MP), medians of {runs} runs: pedit edit {med['cli']:.2f} s, "
      f"pedit edit --save-mask {med['cli --save-mask']:.2f} s, app {med['app']:.2f} s; app / pedit edit "
      f"{med['app'] / med['cli']:.2f}x, app / --save-mask {med['app'] / med['cli --save-mask']:.2f}x")
print({k: [round(x, 2) for x in v] for k, v in times.items()})
app.close()
