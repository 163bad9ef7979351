#!/usr/bin/env python
"""Four directions of examples/toon.png on the bundled model: four edit() calls vs edit_many vs
edit_many(batch_steps=True), same process, rows counted at the denoise callable, medians of 3."""
import statistics, time, numpy as np, torch
from PIL import Image
from pedit.edit.editor import Editor
ed = Editor.from_pretrained(None, device="cpu")
img = Image.open("examples/toon.png")
dirs = ["angry", "shocked", "laughing", "crying"]
calls = []
inner = ed.denoise
ed.denoise = lambda z, t, c: calls.append(z.shape[0]) or inner(z, t, c)
runs = {"separate": lambda: [ed.edit(img, d, seed=0) for d in dirs],
        "edit_many": lambda: ed.edit_many(img, dirs, seed=0),
        "edit_many batch_steps": lambda: ed.edit_many(img, dirs, seed=0, batch_steps=True)}
out, times, rows = {}, {k: [] for k in runs}, {}
for rep in range(4):  # first round is warm-up
    for name, fn in runs.items():
        calls.clear(); t0 = time.perf_counter(); out[name] = fn(); dt = time.perf_counter() - t0
        if rep: times[name].append(dt)
        rows[name] = (len(calls), sum(calls))
for name in runs:
    same = [a.image.tobytes() == b.image.tobytes() for a, b in zip(out["separate"], out[name])]
    raw = max(int(np.abs(np.asarray(a.raw, int) - np.asarray(b.raw, int)).max()) for a, b in zip(out["separate"], out[name]))
    print(f"| {name} | {rows[name][0]} | {rows[name][1]} | {statistics.median(times[name]):.2f} | {sum(same)}/4 | {raw} |")
