"""Hostile cases for pedit's reliability promises (docs/reliability.md, "The promises"): one line a case, KEPT or BROKEN.

Run from a checkout: PYTHONPATH=$PWD HF_HUB_OFFLINE=1 python scripts/hostile_cases.py (about 1.5 min on
2 cores, more when they are busy); CASES=word,word runs only the cases whose names hold one of the words. Uses the bundled toon model and a tiny base built in a temp folder; writes nothing else."""
import json, os, shutil, signal, subprocess, sys, tempfile
from pathlib import Path

import numpy as np
from click.testing import CliRunner
from PIL import Image, PngImagePlugin

from pedit.cli import cli

ROOT = Path(__import__("pedit").__file__).resolve().parents[1]
W = Path(tempfile.mkdtemp(prefix="cases-"))
ENV = {"COLUMNS": "1000", "PEDIT_DEBUG": None}
results = []


def run(*args, timeout=600):  # a guard against hangs; busy machines need the room
    def alarm(*_):
        raise TimeoutError("hung")
    signal.signal(signal.SIGALRM, alarm)
    signal.alarm(timeout)
    try:
        return CliRunner().invoke(cli, [str(a) for a in args], prog_name="pedit", env=ENV)
    finally:
        signal.alarm(0)


def clean_error(r):
    """exit 1, one Error: line, no traceback"""
    return (r.exit_code == 1 and isinstance(r.exception, SystemExit) and "Traceback" not in r.output
            and sum(l.startswith("Error: ") for l in r.stderr.splitlines()) == 1)


ONLY = [w for w in os.environ.get("CASES", "").split(",") if w]  # CASES=word,word: only the cases naming one


def case(name):
    def deco(fn):
        if ONLY and not any(w in name for w in ONLY):
            return fn
        try:
            ok, note = fn()
        except Exception as e:
            ok, note = False, f"{type(e).__name__}: {str(e)[:120]}"
        results.append((name, ok))
        print(f"{'KEPT  ' if ok else 'BROKEN'} {name}: {note}", flush=True)
        return fn
    return deco


def desc(r):
    if r.exception is not None and not isinstance(r.exception, SystemExit):
        return f"exit {r.exit_code}, {type(r.exception).__name__}: {str(r.exception)[:100]}"
    err = [l for l in r.stderr.splitlines() if l.startswith("Error")]
    return f"exit {r.exit_code}: {(err[-1] if err else r.stderr.strip()[-120:])[:160]}"


# ------------------------------------------------------------ fixtures
from pedit.toon.parts import TINY, build_base
from pedit.data.gen_pairs import GenPairsConfig, generate_pairs

base = build_base(W / "base", TINY, seed=0)
pairs = generate_pairs(GenPairsConfig(str(W / "pairs"), n=8, resolution=32))
model = ROOT / "pedit" / "assets" / "toon-model"
photo = W / "p.png"
Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(photo)
FAST = ["-m", model, "--steps", "2", "--mask-noises", "2", "--device", "cpu", "-q"]
TRAIN = ["--data", pairs, "--base", base, "--max-steps", "2", "--batch-size", "2", "--validate-every", "0",
         "--checkpoint-every", "1", "-q"]


def pairs_copy(name):
    return Path(shutil.copytree(pairs, W / name))


def rows(folder):
    return [json.loads(l) for l in (folder / "metadata.jsonl").read_text().splitlines()]


def write_rows(folder, rs):
    (folder / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rs))


def model_copy(name):
    return Path(shutil.copytree(model, W / name))


# ------------------------------------------------------------ data loss
@case("train -o into a folder holding another run (no flags)")
def _():
    out = W / "run"
    assert run("train", *TRAIN, "-o", out).exit_code == 0
    r = run("train", *TRAIN, "-o", out, "--lr", "5e-4", "--max-steps", "1")
    return clean_error(r), desc(r)


@case("two edit processes racing for one -o")
def _():
    out = W / "race.png"
    env = {**os.environ, "COLUMNS": "1000"}
    cmd = [sys.executable, "-m", "pedit", "edit", str(photo), "-d", "royal", "-o", str(out)] + [str(a) for a in FAST]
    procs = [subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True) for _ in range(2)]
    codes = [p.wait(timeout=300) for p in procs]
    errs = [p.stderr.read() for p in procs]
    ok = sorted(codes) == [0, 1] and any("already exists" in e for e in errs)
    return ok, f"exit codes {codes}"


@case("a/x.png b/x.png -o out/ --overwrite in one batch")
def _():
    for sub in "ab":
        (W / sub).mkdir()
        shutil.copy(photo, W / sub / "x.png")
    r = run("edit", W / "a" / "x.png", W / "b" / "x.png", "-d", "royal", "-o", W / "out", "--overwrite", *FAST)
    reported = len(r.stdout.splitlines())
    files = len(list((W / "out").iterdir()))
    return reported == files, f"{reported} edits reported, {files} file(s) kept, exit {r.exit_code}"


@case("multi-page TIFF")
def _():
    pages = [Image.fromarray(np.full((64, 64, 3), c, np.uint8)) for c in (10, 120, 240)]
    pages[0].save(W / "scan.tif", save_all=True, append_images=pages[1:])
    r = run("edit", W / "scan.tif", "-d", "royal", *FAST)
    out = W / "scan_royal.tif"
    kept = out.exists() and Image.open(out).n_frames == 3
    return (clean_error(r) and "page" in r.stderr) or kept, desc(r)


@case("eval -o over an earlier report")
def _():
    out = W / "report"
    out.mkdir()
    (out / "report.md").write_text("earlier")
    r = run("eval", "-m", model, "--pairs", pairs, "-o", out, "--methods", "ours", "--limit", "1", "--steps", "1",
            "--grid", "0", "-q")
    return (out / "report.md").read_text() == "earlier" and r.exit_code == 1, desc(r)


@case("temp file of a killed writer cleaned by the next write to the folder")
def _():
    folder = W / "killed"
    folder.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"]); dead.wait()
    try:
        from pedit.files import temp_path
        tmp = folder / temp_path(folder / "old.png").name.replace(f"-{os.getpid()}-", f"-{dead.pid}-")
    except ImportError:  # the name the old code gave its temp files
        tmp = folder / ".old.png.0123456789ab.tmp"
    tmp.write_bytes(b"half a png")
    r = run("edit", photo, "-d", "royal", "-o", folder / "new.png", *FAST)
    return not tmp.exists() and r.exit_code == 0, f"temp {'left' if tmp.exists() else 'removed'}"


# ------------------------------------------------------------ one file never stops a batch
@case("PNG text-chunk bomb in the middle of a batch")
def _():
    folder = W / "batch"
    folder.mkdir()
    shutil.copy(photo, folder / "a.png")
    info = PngImagePlugin.PngInfo()
    info.add_text("comment", "x" * (PngImagePlugin.MAX_TEXT_CHUNK + 10), zip=True)
    Image.open(photo).save(folder / "b.png", pnginfo=info)
    shutil.copy(photo, folder / "c.png")
    r = run("edit", folder, "-d", "royal", "-o", W / "batch-out", *FAST[:-1])
    n = len(list((W / "batch-out").iterdir())) if (W / "batch-out").exists() else 0
    return n == 2 and clean_error(r), f"{n} of 2 good files written; {desc(r)}"


# ------------------------------------------------------------ silently wrong
@case("edit --s-s nan (masked)")
def _():
    r = run("edit", photo, "-d", "royal", "-o", W / "nan.png", "--s-s", "nan", *FAST)
    return clean_error(r) and not (W / "nan.png").exists(), desc(r)


@case("edit --s-p inf --no-mask")
def _():
    r = run("edit", photo, "-d", "royal", "-o", W / "inf.png", "--s-p", "inf", "--no-mask", *FAST)
    return clean_error(r) and not (W / "inf.png").exists(), desc(r)


def train_on(folder, timeout=600):
    r = run("train", "--data", folder, "-o", W / f"m-{folder.name}", "--base", base, "--max-steps", "1",
            "--batch-size", "2", "--validate-every", "0", "-q", timeout=timeout)
    return clean_error(r) and not (W / f"m-{folder.name}").exists(), desc(r)


@case("pair row with non-UTF-8 bytes")
def _():
    f = pairs_copy("nonutf8")
    lines = (f / "metadata.jsonl").read_bytes().splitlines(keepends=True)
    lines[1] = lines[1].replace(b'"p_b": "', b'"p_b": "\xff', 1)
    (f / "metadata.jsonl").write_bytes(b"".join(lines))
    return train_on(f)


@case("pair row with a list as direction")
def _():
    f = pairs_copy("listdir")
    rs = rows(f); rs[0]["direction"] = ["royal"]; write_rows(f, rs)
    return train_on(f)


@case("pair row with null as a prompt")
def _():
    f = pairs_copy("nullprompt")
    rs = rows(f); rs[0]["p_a"] = None; write_rows(f, rs)
    return train_on(f)


@case("pair image of another size/aspect")
def _():
    f = pairs_copy("othersize")
    Image.fromarray(np.zeros((32, 64, 3), np.uint8)).save(f / rows(f)[2]["x_B"])
    return train_on(f)


@case("pair image that is a FIFO (must not hang)")
def _():
    f = pairs_copy("fifo")
    p = f / rows(f)[3]["x_A"]
    p.unlink(); os.mkfifo(p)
    return train_on(f, timeout=60)


@case("model folder with a file linking outside")
def _():
    m = model_copy("linked")
    secret = W / "secret-config.json"
    shutil.copy(m / "vae" / "config.json", secret)
    (m / "vae" / "config.json").unlink()
    (m / "vae" / "config.json").symlink_to(secret)
    r = run("edit", photo, "-d", "laughing", "-o", W / "linked.png", *FAST[:1], m, *FAST[2:])
    return clean_error(r) and "link" in r.stderr, desc(r)


# ------------------------------------------------------------ tracebacks where Error: is promised
for name, args in [("--steps larger than the schedule", ["--steps", "5000"]),
                   ("--seed beyond 64 bits", ["--seed", str(2**64)]),
                   ("--margin nan", ["--margin", "nan"]),
                   ("--device meta", ["--device", "meta"])]:
    @case(f"edit {name}")
    def _(args=args, name=name):
        out = W / f"t{abs(hash(name))}.png"
        r = run("edit", photo, "-d", "laughing", "-o", out, *FAST, *args)
        return clean_error(r) and not out.exists(), desc(r)

for value in (10**9, -64, 36):
    @case(f"pedit.json resolution {value}")
    def _(value=value):
        m = model_copy(f"res{value}")
        meta = json.loads((m / "pedit.json").read_text()); meta["resolution"] = value
        (m / "pedit.json").write_text(json.dumps(meta))
        r = run("edit", photo, "-d", "laughing", "-o", W / f"r{value}.png", "-m", m, *FAST[2:], timeout=60)
        return clean_error(r), desc(r)


@case("pedit.json mask strength 0")
def _():
    m = model_copy("mask0")
    meta = json.loads((m / "pedit.json").read_text()); meta["mask"] = {"strength": 0}
    (m / "pedit.json").write_text(json.dumps(meta))
    r = run("edit", photo, "-d", "laughing", "-o", W / "mask0.png", "-m", m, *FAST[2:])
    return clean_error(r), desc(r)


@case("train --seed -1")
def _():
    r = run("train", *TRAIN, "-o", W / "seedneg", "--seed", "-1")
    return clean_error(r) and not (W / "seedneg").exists(), desc(r)


@case("train --lr nan (and no half-made folder)")
def _():
    r = run("train", *TRAIN, "-o", W / "lrnan", "--lr", "nan")
    return clean_error(r) and not (W / "lrnan").exists(), desc(r) + f"; folder {'left' if (W / 'lrnan').exists() else 'absent'}"


@case("eval on a pair whose seed is negative")
def _():
    f = pairs_copy("negseed")
    rs = rows(f); rs[0]["seed"] = -5; write_rows(f, rs)
    r = run("eval", "-m", model, "--pairs", f, "--methods", "ours", "--limit", "1", "--steps", "1", "--grid", "0", "-q")
    return clean_error(r), desc(r)


# ------------------------------------------------------------ more of each class (not in the list)
@case("animated PNG as edit input")
def _():
    frames = [Image.fromarray(np.full((64, 64, 3), c, np.uint8)) for c in (10, 200)]
    frames[0].save(W / "anim.png", save_all=True, append_images=frames[1:])
    r = run("edit", W / "anim.png", "-d", "royal", "-o", W / "anim-out.png", *FAST)
    return clean_error(r) and not (W / "anim-out.png").exists(), desc(r)


@case("FIFO as edit input (must not hang)")
def _():
    os.mkfifo(W / "pipe.png")
    r = run("edit", W / "pipe.png", "-d", "royal", "-o", W / "pipe-out.png", *FAST, timeout=60)
    return clean_error(r), desc(r)


@case("metadata.jsonl that is a FIFO (must not hang)")
def _():
    f = pairs_copy("metafifo")
    (f / "metadata.jsonl").unlink(); os.mkfifo(f / "metadata.jsonl")
    return train_on(f, timeout=60)


@case("model folder with a FIFO inside (must not hang)")
def _():
    m = model_copy("fifomodel")
    (m / "unet" / "config.json").unlink(); os.mkfifo(m / "unet" / "config.json")
    r = run("edit", photo, "-d", "laughing", "-o", W / "fm.png", "-m", m, *FAST[2:], timeout=60)
    return clean_error(r), desc(r)


@case("train --resume with another learning rate")
def _():
    out = W / "resume-lr"
    assert run("train", *TRAIN, "-o", out).exit_code == 0
    r = run("train", *TRAIN, "-o", out, "--lr", "5e-4", "--max-steps", "3", "--resume")
    return clean_error(r), desc(r)


@case("gen-pairs --max-face-width nan")
def _():
    r = run("gen-pairs", "-o", W / "gp", "-n", "2", "--max-face-width", "nan", "-q")
    return clean_error(r) and not (W / "gp").exists(), desc(r)


@case("pair row with seed 2**70")
def _():
    f = pairs_copy("bigseed")
    rs = rows(f); rs[0]["seed"] = 2**70; write_rows(f, rs)
    r = run("eval", "-m", model, "--pairs", f, "--methods", "ours", "--limit", "1", "--steps", "1", "--grid", "0", "-q")
    return clean_error(r), desc(r)


# ------------------------------------------------------------ issue 19: stopped, masks, settings, names
def _photo_at(path, seed=0, size=(64, 64)):
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (*size[::-1], 3), dtype=np.uint8)).save(path)
    return path


SIGTERM_CHILD = """
import os, signal, sys
from PIL import Image
saves, real = [], Image.Image.save
def save(self, fp, *a, **k):
    saves.append(fp)
    if len(saves) == 2:
        os.kill(os.getpid(), signal.SIGTERM)
    return real(self, fp, *a, **k)
Image.Image.save = save
from pedit.cli.main import main
main(sys.argv[1:])
"""


@case("SIGTERM while an item's second file is written (batch edit, --save-mask)")
def _():
    folder = W / "term"
    folder.mkdir()
    ins = [_photo_at(folder / f"{n}.png", i) for i, n in enumerate("ab")]
    out = W / "term-out"
    env = {**os.environ, "COLUMNS": "1000"}
    p = subprocess.run([sys.executable, "-c", SIGTERM_CHILD, "edit", *map(str, ins), "-d", "royal", "-o", str(out),
                        "--save-mask", *map(str, FAST)], env=env, capture_output=True, text=True, timeout=300)
    left = sorted(os.listdir(out)) if out.exists() else []
    return p.returncode != 0 and left == [], f"exit {p.returncode}, left {left}"


@case("--overwrite, disk full on the item's last file: the earlier result stays")
def _():
    src = _photo_at(W / "ow.png")
    args = ["edit", src, "-d", "royal", "--save-mask", *FAST]
    assert run(*args).exit_code == 0
    names = ["ow_royal.png", "ow_royal_mask.png", "ow_royal_overlay.png"]
    before = [(W / n).read_bytes() for n in names]
    real, saves = Image.Image.save, []

    def full(self, fp, *a, **k):
        saves.append(fp)
        if len(saves) == 3:
            raise OSError(28, "No space left on device")
        return real(self, fp, *a, **k)
    Image.Image.save = full
    try:
        r = run(*args, "--overwrite", "--seed", "3")
    finally:
        Image.Image.save = real
    kept = [(W / n).read_bytes() if (W / n).exists() else None for n in names] == before
    return r.exit_code == 1 and kept, f"{desc(r)}; earlier files {'kept' if kept else 'lost'}"


def _mask_values(make):
    from pedit.edit.user_mask import load_user_mask
    return load_user_mask(make())


@case("mask with EXIF orientation 6 (stored sideways)")
def _():
    stored = np.zeros((20, 40), np.uint8); stored[:, :10] = 255  # white left quarter as stored
    exif = Image.Exif(); exif[0x0112] = 6
    f = W / "rot.jpg"; Image.fromarray(stored).save(f, exif=exif.tobytes(), quality=100)
    m = _mask_values(lambda: f)
    want = np.rot90(stored, k=-1) / 255  # orientation 6: turn 90 degrees clockwise to view
    return m.shape == want.shape and np.abs(m - want).mean() < 0.05, f"read as {m.shape}, upright is {want.shape}"


@case("16-bit mask at half grey")
def _():
    f = W / "m16.png"; Image.fromarray(np.full((16, 16), 32768, np.uint16)).save(f)
    m = _mask_values(lambda: f)
    return abs(float(m.mean()) - 0.5) < 0.01, f"read as {float(m.mean()):.3f}, want 0.500"


@case("float mask in 0-1 (TIFF, mode F) at 0.5")
def _():
    f = W / "mf.tif"; Image.fromarray(np.full((16, 16), 0.5, np.float32)).save(f)
    m = _mask_values(lambda: f)
    return abs(float(m.mean()) - 0.5) < 0.01, f"read as {float(m.mean()):.3f}, want 0.500"


@case("multi-frame mask (animated PNG)")
def _():
    frames = [Image.fromarray(np.full((16, 16), v, np.uint8)) for v in (0, 255)]
    f = W / "manim.png"; frames[0].save(f, save_all=True, append_images=frames[1:])
    r = run("edit", photo, "-d", "royal", "-o", W / "manim-out.png", "--mask", f, *FAST)
    return clean_error(r) and "frames" in r.stderr and not (W / "manim-out.png").exists(), desc(r)


@case("mask above --max-pixels (the photo below it)")
def _():
    f = W / "mbig.png"; Image.new("L", (1200, 1000), 255).save(f)
    r = run("edit", photo, "-d", "royal", "-o", W / "mbig-out.png", "--mask", f, "--max-pixels", "1000000", *FAST)
    return clean_error(r) and "--max-pixels" in r.stderr and not (W / "mbig-out.png").exists(), desc(r)


@case("all-black mask with --mask-mode replace")
def _():
    f = W / "mblack.png"; Image.new("L", (16, 16), 0).save(f)
    r = run("edit", photo, "-d", "royal", "-o", W / "mblack-out.png", "--mask", f, *FAST)
    return clean_error(r) and not (W / "mblack-out.png").exists(), desc(r)


@case("mask white only outside the edited square (the edit changes nothing)")
def _():
    wide = _photo_at(W / "wide.png", 1, (96, 48))
    m = np.zeros((48, 96), np.uint8); m[:, :8] = 255
    f = W / "mside.png"; Image.fromarray(m).save(f)
    r = run("edit", wide, "-d", "royal", "-o", W / "mside-out.png", "--mask", f, *FAST)
    return clean_error(r) and not (W / "mside-out.png").exists(), desc(r)


@case("edit --s-p 0")
def _():
    r = run("edit", photo, "-d", "royal", "-o", W / "sp0.png", "--s-p", "0", *FAST)
    return clean_error(r) and not (W / "sp0.png").exists(), desc(r)


def _model_with(name, change):
    m = model_copy(name)
    change(m)
    r = run("edit", photo, "-d", "laughing", "-o", W / f"{name}.png", "-m", m, *FAST[2:], "--no-cache", timeout=300)
    one_line = len(r.stderr.strip().splitlines()) == 1
    return clean_error(r) and one_line and not (W / f"{name}.png").exists(), desc(r)


def _sched(key, value):
    def change(m):
        f = m / "scheduler" / "scheduler_config.json"
        f.write_text(json.dumps({**json.loads(f.read_text()), key: value}))
    return change


@case("scheduler config num_train_timesteps 1.5")
def _():
    return _model_with("t15", _sched("num_train_timesteps", 1.5))


@case('scheduler config prediction_type "sample"')
def _():
    return _model_with("psample", _sched("prediction_type", "sample"))


@case("pedit.json listing a direction twice")
def _():
    def change(m):
        meta = json.loads((m / "pedit.json").read_text())
        d = {**next(x for x in meta["directions"] if x["name"] == "crying"), "name": "laughing"}
        meta["directions"].append(d)
        (m / "pedit.json").write_text(json.dumps(meta))
    return _model_with("dup", change)


@case("VAE decoder returning NaN (edit path)")
def _():
    from pedit.model.mcdm import FrozenParts
    real = FrozenParts.decode
    FrozenParts.decode = lambda self, z: real(self, z) * float("nan")
    try:
        r = run("edit", photo, "-d", "royal", "-o", W / "vnan.png", *FAST, "--no-cache")
    finally:
        FrozenParts.decode = real
    return clean_error(r) and not (W / "vnan.png").exists(), desc(r)


@case("output name of 249 bytes (legal; its temp name is longer)")
def _():
    out = W / ("n" * 245 + ".png")
    r = run("edit", photo, "-d", "royal", "-o", out, *FAST)
    return r.exit_code == 0 and out.exists(), desc(r)


@case("batch where one input's output name is too long")
def _():
    folder = W / "longb"
    folder.mkdir()
    _photo_at(folder / "a.png"); _photo_at(folder / ("l" * 246 + ".png"), 2)
    r = run("edit", folder, "-d", "royal", "-o", W / "longb-out", *FAST)
    made = sorted(os.listdir(W / "longb-out")) if (W / "longb-out").exists() else []
    return clean_error(r) and made == ["a_royal.png"], f"{desc(r)}; written {made}"


@case("eval --photos of a photo whose name is not UTF-8")
def _():
    folder = W / "evalnonutf8"
    folder.mkdir()
    _photo_at(folder / os.fsdecode(b"caf\xe9.png"))
    r = run("eval", "--photos", folder, "-d", "royal", "-o", W / "nonutf8-r", "--steps", "1", "--device", "cpu", "-q")
    return r.exit_code == 0 and (W / "nonutf8-r" / "report.md").exists(), desc(r)


@case("train --resume after a pair image changed")
def _():
    f = pairs_copy("resume-data")
    out = W / "resume-data-run"
    assert run("train", *TRAIN[2:], "--data", f, "-o", out).exit_code == 0
    x_B = f / rows(f)[0]["x_B"]
    Image.fromarray(255 - np.asarray(Image.open(x_B))).save(x_B)
    r = run("train", *TRAIN[2:], "--data", f, "-o", out, "--max-steps", "3", "--resume")
    return clean_error(r) and not (out / "checkpoints" / "step-000003").exists(), desc(r)


@case("two pair writers racing for one id (gen-pairs runs sharing a folder)")
def _():
    from pedit.data.pairs import PairWriter
    folder = W / "shared-pairs"
    a, b = PairWriter(folder), PairWriter(folder)
    row = {"id": "000000", "direction": "royal", "p_a": "a", "p_b": "b", "seed": 0}
    a.write({**row, "run": "a"}, {"x_A": np.zeros((8, 8, 3), np.uint8), "x_B": np.zeros((8, 8, 3), np.uint8)})
    b.write({**row, "run": "b"}, {"x_A": np.full((8, 8, 3), 255, np.uint8), "x_B": np.full((8, 8, 3), 255, np.uint8)})
    r0 = rows(folder)[0]
    same = r0["run"] == "a" and np.asarray(Image.open(folder / r0["x_A"])).max() == 0
    return same, f"row of run {r0['run']}, images of run {'a' if same else 'b'}"


@case("gen-pairs sd folder claimed at fp32, then a run at fp16")
def _():
    from pedit.data.gen_pairs import claim_folder
    from pedit.data.sd_pairs import RUN_ONLY
    from pedit.errors import ConfigError
    folder = W / "prec"
    claim_folder(folder, {"output": str(folder), "precision": "fp32"}, RUN_ONLY)
    try:
        claim_folder(folder, {"output": str(folder), "precision": "fp16"}, RUN_ONLY)
    except ConfigError as e:
        return True, str(e)[:120]
    return False, "accepted"


@case("latent cache shard with a NaN swapped in")
def _():
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file
    cache = W / "lc"
    assert run("train", *TRAIN, "-o", W / "lc-first", "--cache-dir", cache).exit_code == 0
    (shard,) = cache.glob("*/pairs-00000.safetensors")
    with safe_open(str(shard), "pt") as f:
        meta = f.metadata()
    t = load_file(str(shard)); t["mean_A"].view(-1)[0] = float("nan"); save_file(t, str(shard), metadata=meta)
    r = run("train", *TRAIN, "-o", W / "lc-second", "--cache-dir", cache)
    return clean_error(r) and not (W / "lc-second").exists(), desc(r)


@case(".pedit-cache that links out of the pair folder")
def _():
    f = pairs_copy("cachelink")
    (W / "cache-outside").mkdir()
    (f / ".pedit-cache").symlink_to(W / "cache-outside")
    r = run("train", *TRAIN[2:], "--data", f, "-o", W / "cachelink-run")
    return clean_error(r) and not any((W / "cache-outside").iterdir()), desc(r)


@case("latent cache build on a full disk (no half-made run left)")
def _():
    import safetensors.torch
    real = safetensors.torch.save_file
    def full(*a, **k):
        raise OSError(28, "No space left on device")
    safetensors.torch.save_file = full
    try:
        r = run("train", *TRAIN, "-o", W / "lc-full", "--cache-dir", W / "lc-full-cache")
    finally:
        safetensors.torch.save_file = real
    return clean_error(r) and not (W / "lc-full").exists(), desc(r) + f"; run folder {'left' if (W / 'lc-full').exists() else 'absent'}"


@case("temp folder of a killed sticker-pack, cleaned by the next write there")
def _():
    folder = W / "packs"
    folder.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"]); dead.wait()
    from pedit.files import temp_path
    half = folder / temp_path(folder / "pack").name.replace(f"-{os.getpid()}-", f"-{dead.pid}-")
    (half / "stickers").mkdir(parents=True); (half / "stickers" / "x.png").write_bytes(b"half")
    r = run("edit", photo, "-d", "royal", "-o", folder / "next.png", *FAST)
    return r.exit_code == 0 and not half.exists(), f"half-written pack {'left' if half.exists() else 'removed'}"


STICKERS = ["--steps", "2", "--views", "2", "--train-steps", "2", "--candidates", "1", "--cartoon-steps", "2",
            "--expressions", "angry,shocked,crying", "--device", "cpu", "-q"]
SELFIE = ROOT / "examples" / "astronaut.png"


def unbundled_model():
    """The bundled model's copy, not marked bundled: sticker-pack then cartoonizes with --base."""
    folder = W / "unbundled"
    if not folder.exists():
        model_copy("unbundled")
        meta = json.loads((folder / "pedit.json").read_text())
        meta.pop("bundled", None)
        (folder / "pedit.json").write_text(json.dumps(meta))
    return folder


@case("sticker-pack LoRA cache after another base is put at the same --base path")
def _():
    here = build_base(W / "swapped-base", TINY, seed=0)
    common = [*STICKERS, "-m", unbundled_model(), "--base", here, "--cache-dir", W / "swap-cache"]
    first = run("sticker-pack", SELFIE, "-o", W / "swap-a", *common)
    shutil.rmtree(here)
    build_base(here, TINY, seed=1)  # another model, same path
    second = run("sticker-pack", SELFIE, "-o", W / "swap-b", *common)
    if first.exit_code or second.exit_code:
        return False, f"{desc(first)}; {desc(second)}"
    key = lambda out: json.loads((out / "manifest.json").read_text())["cartoon"]["lora"]["key"]
    stale = key(W / "swap-a") == key(W / "swap-b")
    return not stale, "the first base's LoRA reused" if stale else "a new LoRA trained for the new base"


@case("two sticker-packs of one selfie at once, sharing the LoRA cache")
def _():
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    cmd = lambda out: [sys.executable, "-m", "pedit", "sticker-pack", str(SELFIE), "-o", str(W / out), "-m", str(unbundled_model()),
                       "--base", str(base), "--cache-dir", str(W / "both-cache"), *STICKERS]
    procs = [subprocess.Popen(cmd(out), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for out in ("both-a", "both-b")]
    outs = [p.communicate(timeout=900) for p in procs]
    codes = [p.returncode for p in procs]
    loras = list((W / "both-cache" / "dreambooth").glob("*/lora/pytorch_lora_weights.safetensors"))
    ok = codes == [0, 0] and len(loras) == 1 and all((W / o / "manifest.json").exists() for o in ("both-a", "both-b"))
    errs = [e.strip().splitlines()[-1][:120] for _, e in outs if e.strip()]
    return ok, f"exits {codes}, {len(loras)} LoRA(s){'; ' + ' | '.join(errs) if errs else ''}"


# ------------------------------------------------------------ issue 27 (CASES="[27]" runs only these)
def one_line(r):
    """exit 1 and exactly one line on stderr, an Error: line that is pedit's own message (not "unexpected X:"
    or a library's exception passed on)"""
    err = r.stderr.strip()
    return (clean_error(r) and len(err.splitlines()) == 1 and "unexpected " not in err
            and not any(f"{name}:" in err for name in ("IndexError", "KeyError", "TypeError", "AttributeError")))


def snapshot(folder):
    return {str(p.relative_to(folder)): (p.read_bytes() if p.is_file() else None) for p in sorted(Path(folder).rglob("*"))}


def student_copy(name):
    return Path(shutil.copytree(ROOT / "pedit" / "assets" / "toon-model-fast", W / name))


def json_edited(name, change):
    folder = student_copy(name)
    meta = json.loads((folder / "pedit.json").read_text())
    change(meta)
    (folder / "pedit.json").write_text(json.dumps(meta))
    return folder


# class 1: derived artefacts proven to belong to their source
@case("[27] TorchScript cache entry holding another model's trace (files copied over)")
def _():
    from safetensors.torch import load_file, save_file
    from pedit.edit.editor import Editor
    from pedit.model import traced

    old_cache = os.environ.get("PEDIT_CACHE")
    os.environ["PEDIT_CACHE"] = str(W / "traced-cache")
    try:
        a = model_copy("trace-a")
        b = model_copy("trace-b")
        w = next((b / "unet").glob("*.safetensors"))
        save_file({k: v * 1.5 for k, v in load_file(w).items()}, w)
        for m in (a, b):
            Editor.from_pretrained(m, device="cpu", cache=True)
        mine, theirs = traced.cache_dir() / traced.model_key(a), traced.cache_dir() / traced.model_key(b)
        for f in ("model.pt", "prompts.pt", "scheduler_config.json"):
            shutil.copy(theirs / f, mine / f)
        again = Editor.from_pretrained(a, device="cpu", cache=True)
        img = Image.open(photo).convert("RGB")
        same = np.array_equal(np.asarray(again.edit(img, "royal", seed=0, steps=2).image),
                              np.asarray(Editor.from_pretrained(a, device="cpu").edit(img, "royal", seed=0, steps=2).image))
        return same, again.cache_status[:60]
    finally:
        if old_cache is None:
            os.environ.pop("PEDIT_CACHE", None)
        else:
            os.environ["PEDIT_CACHE"] = old_cache


@case("[27] latent cache shard of other pairs swapped in (shapes, key metadata all fine)")
def _():
    from PIL import ImageOps
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    other = pairs_copy("swap-other")
    shutil.rmtree(other / ".pedit-cache", ignore_errors=True)
    first = sorted((other / "images").glob("*_x_B.png"))[0]
    ImageOps.invert(Image.open(first).convert("RGB")).save(first)
    mine = pairs_copy("swap-mine")
    for f, c in ((other, "cache-o"), (mine, "cache-m")):
        assert run("train", *TRAIN, "-o", W / f"run-{c}", "--cache-dir", W / c, "--data", f).exit_code == 0
    (sa,) = (W / "cache-m").glob("*/pairs-00000.safetensors")
    (sb,) = (W / "cache-o").glob("*/pairs-00000.safetensors")
    with safe_open(str(sa), "pt") as fh:
        meta = fh.metadata()
    save_file(load_file(str(sb)), str(sa), metadata=meta)
    r = run("train", *TRAIN, "-o", W / "run-swap2", "--cache-dir", W / "cache-m", "--data", mine)
    return one_line(r) and "damaged" in r.stderr, desc(r)


@case("[27] a datasets pair folder in the cache whose image was replaced")
def _():
    import datasets
    old_cache = os.environ.get("PEDIT_CACHE")
    os.environ["PEDIT_CACHE"] = str(W / "ds-cache")
    try:
        rows = [{"input_image": Image.fromarray(np.full((32, 32, 3), 40 * i, np.uint8)),
                 "edited_image": Image.fromarray(np.full((32, 32, 3), 200 - 40 * i, np.uint8)),
                 "edit_prompt": f"make it {i}"} for i in range(4)]
        ds = datasets.Dataset.from_list(rows, features=datasets.Features({"input_image": datasets.Image(),
                                        "edited_image": datasets.Image(), "edit_prompt": datasets.Value("string")}))
        ds.save_to_disk(str(W / "saved-ds"))
        from pedit.data.hf import dataset_pair_folder
        folder = dataset_pair_folder(str(W / "saved-ds"), None)
        img = sorted((folder / "images").iterdir())[0]
        Image.new("RGB", (32, 32), (1, 2, 3)).save(img)
        r = run("train", "--data", W / "saved-ds", "--base", base, "-o", W / "ds-run", "--max-steps", "1",
                "--batch-size", "2", "--validate-every", "0", "-q")
        return one_line(r), desc(r)
    finally:
        if old_cache is None:
            os.environ.pop("PEDIT_CACHE", None)
        else:
            os.environ["PEDIT_CACHE"] = old_cache


# class 2: sources that change during a run
@case("[27] base VAE replaced at step 1 of a bf16 train: the model saves the VAE it trained against")
def _():
    from accelerate.state import AcceleratorState
    from safetensors.torch import load_file, save_file
    from pedit.train.loop import TrainConfig, train

    b = Path(shutil.copytree(base, W / "changing-base"))
    w = next((b / "vae").glob("*.safetensors"))
    before = load_file(w)

    def at_step(p):
        if p.event == "step" and p.step == 1:
            save_file({k: v * 2 + 1 for k, v in before.items()}, w)

    AcceleratorState._reset_state()
    try:
        out = train(TrainConfig(data=str(pairs), output=str(W / "bf16-run"), base=str(b), batch_size=2, max_steps=2,
                                validate_every=0, mixed_precision="bf16", cache_dir=str(W / "bf16-cache"),
                                log_every=1),  # progress at every step: the change lands after step 1
                    progress=at_step)
    finally:
        AcceleratorState._reset_state()
    saved = load_file(next((out / "vae").glob("*.safetensors")))
    same = all(np.array_equal(saved[k].numpy(), before[k].numpy()) for k in before)
    return same, "the VAE read at the start" if same else "the base's new VAE saved"


@case("[27] a pair image changed during a --no-cache train")
def _():
    from PIL import ImageOps
    from pedit.train.loop import TrainConfig, train

    f = pairs_copy("changing-pairs")
    img = sorted((f / "images").glob("*_x_B.png"))[0]

    def at_step(p):
        if p.event == "step" and p.step == 1:
            ImageOps.invert(Image.open(img).convert("RGB")).save(img)
    try:
        train(TrainConfig(data=str(f), output=str(W / "nocache-run"), base=str(base), batch_size=2, max_steps=8,
                          validate_every=0, cache=False, log_every=1), progress=at_step)
    except Exception as e:
        return "changed" in str(e), f"{type(e).__name__}: {str(e)[:100]}"
    return False, "exit 0: trained on both versions of the image"


# class 3: an output that is one of the inputs
for label, args_of in [
    ("train -o equal to --data", lambda d: ["train", *TRAIN, "-o", d["data"]]),
    ("train -o equal to --data, --overwrite", lambda d: ["train", *TRAIN, "-o", d["data"], "--overwrite"]),
    ("train -o inside --base", lambda d: ["train", *TRAIN, "-o", d["base"] / "run"]),
    ("train -o holding --data, --overwrite", lambda d: ["train", *TRAIN, "-o", d["data"].parent, "--overwrite"]),
    ("distill -o equal to the teacher -m, --overwrite", lambda d: ["distill", "-m", d["model"], "--data", pairs, "-o",
                                                                   d["model"], "--max-steps", "1", "--overwrite", "-q"]),
    ("export -o inside -m", lambda d: ["export", "-m", d["model"], "-o", d["model"] / "engines"]),
    ("eval -o equal to --pairs, --overwrite", lambda d: ["eval", "--pairs", d["data"], "-m", d["model"], "-o",
                                                         d["data"], "--steps", "1", "--overwrite", "-q"]),
    ("sticker-pack -o holding the selfie, --overwrite", lambda d: ["sticker-pack", d["selfie"], "-m", d["model"], "-o",
                                                                   d["selfie"].parent, "--skip-cartoonize", "--overwrite", "-q"]),
]:
    def make(label=label, args_of=args_of):
        @case(f"[27] {label}")
        def _():
            slot = W / f"io-{abs(hash(label))}"
            d = {"data": Path(shutil.copytree(pairs, slot / "d" / "pairs")),
                 "base": Path(shutil.copytree(base, slot / "b" / "base")),
                 "model": Path(shutil.copytree(model, slot / "m" / "model"))}
            (slot / "s").mkdir()
            shutil.copy(photo, slot / "s" / "me.png")
            d["selfie"] = slot / "s" / "me.png"
            TRAIN_ = [a if a not in (pairs, base) else (d["data"] if a == pairs else d["base"]) for a in TRAIN]
            args = [a for a in args_of(d)]
            args = [TRAIN_[TRAIN.index(a)] if a in TRAIN and isinstance(a, Path) else a for a in args]
            before = {k: snapshot(v if v.is_dir() else v.parent) for k, v in d.items()}
            r = run(*args)
            untouched = {k: snapshot(v if v.is_dir() else v.parent) for k, v in d.items()} == before
            return one_line(r) and untouched, f"{desc(r)}; inputs {'untouched' if untouched else 'CHANGED'}"
    make()


# class 4: pedit.json sections
for label, change in [
    ('"mask" null', lambda m: m.update(mask=None)),
    ('"mask" name misspelled (n_noises)', lambda m: m["mask"].update(n_noises=5)),
    ('"mask_by_task" task misspelled (costum)', lambda m: m.update(mask_by_task={"costum": {"ratio": 4.0}})),
    ('"mask_by_direction" a direction the model lacks', lambda m: m.update(mask_by_direction={"laughin": {"ratio": 4.0}})),
    ('"sampling_by_task" task misspelled (expresion)', lambda m: m.update(sampling_by_task={"expresion": {"steps": 4}})),
    ('"sampling_by_task" a bad scheduler', lambda m: m.update(sampling_by_task={"costume": {"scheduler": "heun"}})),
    ('"sampling_by_task" a scale of 1e300 (costume; the edit an expression)',
     lambda m: m.update(sampling_by_task={"costume": {"s_s": 1e300}})),
    ('"sampling" a scale of 1e300', lambda m: m["sampling"].update(s_p=1e300)),
    ('"sampling_by_task" s_p outside the student\'s range (costume; the edit an expression)',
     lambda m: m.update(sampling_by_task={"costume": {"s_p": 12.0}})),
    ('"distilled" null', lambda m: m.update(distilled=None)),
    ('"distilled" steps_trained a string', lambda m: m["distilled"].update(steps_trained="3100")),
    ("top-level name misspelled (directons)", lambda m: m.update(directons=m["directions"])),
    ('top-level "base" null', lambda m: m.update(base=None)),
    ('top-level "latent_factor" a string', lambda m: m.update(latent_factor="8")),
]:
    def make(label=label, change=change):
        @case(f"[27] pedit.json {label}")
        def _():
            folder = json_edited(f"json-{abs(hash(label))}", change)
            r = run("edit", photo, "-d", "laughing", "-m", folder, "-o", W / f"{folder.name}.png", "--steps", "2", "-q")
            return one_line(r) and not (W / f"{folder.name}.png").exists(), desc(r)
    make()


@case('[27] export of a pedit.json whose "sampling_by_task" costumes sample with dpm (its runtime: ddim only)')
def _():
    folder = json_edited("json-export-dpm", lambda m: m.update(sampling_by_task={"costume": {"scheduler": "dpm"}}))
    out = W / "export-dpm"
    r = run("export", "-m", folder, "-o", out, "-q")
    return one_line(r) and not out.exists(), f"{desc(r)}; {'wrote ' + out.name if out.exists() else 'nothing written'}"


# class 5: one-line errors, nothing half-written
def _dataset(name, rows_change=None, empty=False):
    import datasets
    rows = [{"input_image": Image.fromarray(np.full((32, 32, 3), 30 * i, np.uint8)),
             "edited_image": Image.fromarray(np.full((32, 32, 3), 250 - 30 * i, np.uint8)),
             "edit_prompt": f"make it {i}"} for i in range(6)]
    feats = datasets.Features({"input_image": datasets.Image(), "edited_image": datasets.Image(),
                               "edit_prompt": datasets.Value("string")})
    ds = datasets.Dataset.from_list(rows, features=feats)
    if empty:
        ds = ds.select([])
    if rows_change:
        plain = ds.cast_column("input_image", datasets.Image(decode=False))
        rs = plain.to_list()
        rows_change(rs)
        ds = datasets.Dataset.from_list(rs, features=plain.features)
    ds.save_to_disk(str(W / name))
    return W / name


def _ds_case(name, **kw):
    old_cache = os.environ.get("PEDIT_CACHE")
    os.environ["PEDIT_CACHE"] = str(W / f"{name}-cache")
    try:
        r = run("train", "--data", _dataset(name, **kw), "--base", base, "-o", W / f"{name}-run", "--max-steps", "1",
                "--batch-size", "2", "--validate-every", "0", "-q")
        return one_line(r) and not (W / f"{name}-run").exists(), desc(r)
    finally:
        if old_cache is None:
            os.environ.pop("PEDIT_CACHE", None)
        else:
            os.environ["PEDIT_CACHE"] = old_cache


@case("[27] datasets rows with null prompts")
def _():
    return _ds_case("ds-null", rows_change=lambda rs: [r.update(edit_prompt=None) for r in rs[1:3]])


@case("[27] datasets row with an undecodable image")
def _():
    return _ds_case("ds-undecodable", rows_change=lambda rs: rs[2].update(input_image={"bytes": b"\x89PNG no", "path": None}))


@case("[27] datasets rows of mixed sizes")
def _():
    def change(rs):
        import io
        buf = io.BytesIO()
        Image.new("RGB", (48, 48)).save(buf, format="PNG")
        rs[3]["input_image"] = {"bytes": buf.getvalue(), "path": None}
    return _ds_case("ds-sizes", rows_change=change)


@case("[27] an empty dataset")
def _():
    return _ds_case("ds-empty", empty=True)


@case("[27] sticker-pack --title with non-UTF-8 bytes")
def _():
    r = run("sticker-pack", photo, "-o", W / "bad-title", "--skip-cartoonize", "--title", "bad\udcff", "-q")
    return one_line(r) and not (W / "bad-title").exists(), desc(r)


def _full_disk(*a, **kw):
    raise OSError(28, "No space left on device")


@case("[27] full disk at the first checkpoint of a train")
def _():
    from safetensors import SafetensorError
    import pedit.train.steps as steps
    real = steps._checkpoint

    def failing(accelerator, out, step, keep):
        (out / "checkpoints" / f"step-{step:06d}.tmp").mkdir(parents=True)
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")
    steps._checkpoint = failing
    try:
        r = run("train", *TRAIN, "-o", W / "full-run")
    finally:
        steps._checkpoint = real
    return one_line(r) and not (W / "full-run").exists(), desc(r)


@case("[27] full disk at an eval report's grid")
def _():
    import pedit.viz as viz
    real = viz.image_grid

    class Unsaveable:
        def save(self, f, format=None):
            f.write(b"half")
            _full_disk()
    viz.image_grid = lambda *a, **kw: Unsaveable()
    try:
        r = run("eval", "--pairs", pairs, "-m", model, "-o", W / "full-report", "--steps", "1", "--methods", "ours",
                "--limit", "2", "-q")
    finally:
        viz.image_grid = real
    left = sorted(p.name for p in (W / "full-report").iterdir()) if (W / "full-report").exists() else []
    return one_line(r) and left == [], f"{desc(r)}; left {left}"


@case("[27] full disk while a sticker pack is written")
def _():
    import pedit.stickers.pipeline as pipeline
    real = pipeline.preview_sheet

    class Unsaveable:
        def save(self, *a, **kw):
            _full_disk()
    pipeline.preview_sheet = lambda *a, **kw: Unsaveable()
    try:
        (W / "full-pack-parent").mkdir()
        r = run("sticker-pack", photo, "-o", W / "full-pack-parent" / "pack", "--skip-cartoonize", "--steps", "1", "-q")
    finally:
        pipeline.preview_sheet = real
    left = list((W / "full-pack-parent").iterdir())
    return one_line(r) and left == [], f"{desc(r)}; left {[p.name for p in left]}"


kept = sum(ok for _, ok in results)
print(f"\n{len(results)} cases: {kept} kept, {len(results) - kept} broken")
shutil.rmtree(W, ignore_errors=True)
