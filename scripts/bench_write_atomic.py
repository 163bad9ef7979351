#!/usr/bin/env python
"""Median time of pedit.files.write_atomic into a folder already holding N files (default 60000):
the stale-temp scan once per process and folder (now) against a scan before every write (as
before), in the same run. Usage: PYTHONPATH=. python scripts/bench_write_atomic.py [N]"""
import statistics
import sys
import tempfile
import time
from pathlib import Path

from pedit import files

n = int(sys.argv[1]) if len(sys.argv) > 1 else 60000
with tempfile.TemporaryDirectory() as d:
    folder = Path(d)
    for i in range(n):
        (folder / f"{i:06d}_x_A.png").touch()
    def run(scan_each_time, round_, reps=30):
        times = []
        for r in range(reps):
            t = time.perf_counter()
            if scan_each_time:
                files.clean_stale_temps(folder)  # what every write did before
            files.write_atomic(folder / f"new_{round_}_{scan_each_time}_{r}.png", lambda f: f.write(b"x" * 1000))
            times.append(time.perf_counter() - t)
        return statistics.median(times)
    for round_ in range(3):
        before, now = run(True, round_), run(False, round_)
        print(f"{n} files: scan per write {before*1e3:.2f} ms/call, once per process {now*1e3:.2f} ms/call, ratio {before/now:.1f}x")
