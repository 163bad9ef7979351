"""Steps/s and peak GPU memory of `pedit train` at Stable Diffusion 1.5 size (docs/toon-model.md, "SD size").

A base folder of SD1.5-size random networks (pedit.toon.parts.SD15: the 860M-parameter U-Net, SD's
VAE, CLIP ViT-L/14 widths; the same networks as `pedit bench --arch sd15`), 64 toon pairs at its
resolution, then `pedit train`'s own loop (pedit.train.loop.train: latent cache, --mixed-precision) once
per batch size x gradient checkpointing, each in a fresh process (an out-of-memory run is recorded as
such and the others go on). steps/s: the median of the rates between log flushes after the first
(each flush waits for the device); peak memory: torch's allocator, as `pedit train` records it.

    python scripts/bench_train_sd15.py -o $OUT/train_sd15.json                 # on a GPU (accelerate picks it): minutes
    python scripts/bench_train_sd15.py --spec tiny --precision no -o /tmp/t.json   # the path only, on a CPU
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def run_one(args) -> None:
    """Child: one training run; prints one JSON line with its rates and peak memory."""
    from pedit.train.loop import train
    from pedit.train.config import TrainConfig

    rates = []
    cfg = TrainConfig(data=args.data, output=args.output, base=args.base, max_steps=args.steps,
                      batch_size=args.batch, learning_rate=1e-5, warmup_steps=0, checkpoint_every=10**6,
                      validate_every=0, keep_checkpoints=1, mixed_precision=args.precision,
                      gradient_checkpointing=args.gc, log_every=args.log_every, overwrite=True)
    t0 = time.perf_counter()
    out = train(cfg, progress=lambda p: rates.append(p.steps_per_s) if p.event == "step" else None)
    meta = json.loads((Path(out) / "pedit.json").read_text())
    print(json.dumps({"rates": rates, "peak_gpu_memory_gib": meta.get("peak_gpu_memory_gib"),
                      "seconds_total": round(time.perf_counter() - t0, 1)}))


def measure(args, work: Path, batch: int, gc: bool) -> dict:
    out = work / f"run-b{batch}-gc{int(gc)}"
    cmd = [sys.executable, __file__, "--one", "--data", str(work / "pairs"), "--base", str(work / "base"),
           "--output", str(out), "--batch", str(batch), "--steps", str(args.steps), "--log-every",
           str(args.log_every), "--precision", args.precision] + (["--gc"] if gc else [])
    row = {"batch": batch, "gradient_checkpointing": gc}
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
    except subprocess.TimeoutExpired:
        row["error"] = f"timeout ({args.timeout} s)"
        return row
    finally:
        shutil.rmtree(out, ignore_errors=True)  # model + optimizer checkpoint: gigabytes at this size
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["?"]
        row["error"] = "out of memory" if "out of memory" in proc.stderr.lower() else tail[0][:300]
        return row
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    later = result["rates"][1:] or result["rates"]
    row.update(steps_per_s=round(statistics.median(later), 3), samples_per_s=round(statistics.median(later) * batch, 2),
               rates=[round(r, 3) for r in result["rates"]], peak_gpu_memory_gib=result["peak_gpu_memory_gib"],
               seconds_total=result["seconds_total"])
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-o", "--out", type=Path, help="JSON report (written after every run)")
    ap.add_argument("--spec", default="sd15", choices=["sd15", "tiny"])
    ap.add_argument("--precision", default="bf16", choices=["no", "fp16", "bf16"])
    ap.add_argument("--batches", default="8,16")
    ap.add_argument("--steps", type=int, default=14)
    ap.add_argument("--log-every", type=int, default=2)
    ap.add_argument("--timeout", type=int, default=300, help="seconds per training run")
    ap.add_argument("--work", type=Path, help="scratch folder (default: a temporary one, deleted)")
    # child mode
    ap.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    for name in ("--data", "--base", "--output"):
        ap.add_argument(name, help=argparse.SUPPRESS)
    ap.add_argument("--batch", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--gc", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        return run_one(args)
    if args.out is None:
        ap.error("-o/--out is required")

    import torch

    from pedit.data.gen_pairs import GenPairsConfig, generate_pairs
    from pedit.toon.parts import SD15, TINY, build_base

    spec = {"sd15": SD15, "tiny": TINY}[args.spec]
    work = args.work or Path(tempfile.mkdtemp(prefix="bench-train-sd15-"))
    report = {"spec": args.spec, "resolution": spec.resolution, "precision": args.precision,
              "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
              "torch": torch.__version__, "steps": args.steps, "log_every": args.log_every, "runs": []}
    try:
        t0 = time.perf_counter()
        build_base(work / "base", spec)
        generate_pairs(GenPairsConfig(str(work / "pairs"), 64, resolution=spec.resolution, seed=0))
        report["setup_seconds"] = round(time.perf_counter() - t0, 1)
        print(f"base and pairs in {report['setup_seconds']} s", flush=True)
        for batch in [int(b) for b in args.batches.split(",")]:
            for gc in (False, True):
                row = measure(args, work, batch, gc)
                report["runs"].append(row)
                print(json.dumps(row), flush=True)
                args.out.parent.mkdir(parents=True, exist_ok=True)
                args.out.write_text(json.dumps(report, indent=2))
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
