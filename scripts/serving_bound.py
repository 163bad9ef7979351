#!/usr/bin/env python
"""How much any batching can raise a CPU server's throughput: per-row costs, an edit's CPU by stage, Amdahl.

    OMP_NUM_THREADS=1 python scripts/serving_bound.py [-m MODEL] [--batches 1,2,4,8,16,32,64]
        [--threads 1,2] [--repeats 5] [--edits 24] -o docs/results/serving-bound.json

Run it with the interpreter the server's Python models run (.venv-serve) on the export folder of the
model (`pedit export -m MODEL -o FOLDER`, or pedit's cache export, made on first use with torch).

1. Per row: every graph the `pedit` model runs for a request (the U-Net, the VAE encoder and decoder,
   the image projector, the text encoder), at each batch size and ONNX Runtime intra-op thread count
   (sessions set up as the server's network models set theirs up), alternating the order of batch
   sizes and thread counts at every repeat: the median over repeats of wall and CPU (process) ms a row.
2. Per edit: the `pedit` model's work for one request, driven in-process the way the model drives it
   (pedit.serve.service.EditService over the torch-free runtime editor, the U-Net called in this
   process), each stage's CPU time (time.process_time, exclusive of the stages inside it) and wall
   time, medians over `--edits` requests (the serving benchmark's 8 distinct requests in turn).
3. The bound: on a saturated CPU, edits/s is cores / CPU-seconds an edit, and batching can only
   change the networks' share; with f_i a network's share of an edit's CPU and s_i its best per-row
   saving (CPU ms a row at the row count one request sends, over the lowest CPU ms a row at any
   measured batch size and thread count), the gain is at most 1 / (1 - sum f_i (1 - 1/s_i)).
   The server's own work (HTTP, the BLS requests, the Python backend passing tensors between
   processes) is outside these stages; the part of it paid per U-Net execution shrinks with batching
   too. scripts/bench_serving.py measures the whole: the server's CPU seconds an edit, batching on
   and off (docs/serving.md, "Numbers", puts the two together).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PHOTO = (ROOT / "examples" / "toon.png").read_bytes()
KEYS = [(d, s) for d in ("laughing", "angry", "shocked", "crying") for s in (0, 1)]  # as scripts/bench_serving.py
NETWORKS = ("unet", "vae_encoder", "vae_decoder", "image_projector", "text_encoder")
MIN_TIMED_S = 0.05  # a timing of one batch size repeats its call until this much wall time has passed


# -- 1. per row -------------------------------------------------------------------------------------

def make_session(path: Path, threads: int):
    """An ONNX Runtime CPU session as pedit.serve.network_model makes one (intra-op threads, one inter-op),
    its threads never spinning: a 2-thread session's workers spin for a while after each call, and
    that CPU time would land on the next timing, whichever session it is."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def feeds(session, rows: int, rng: np.random.Generator) -> dict:
    """Inputs of `rows` rows in the graph's shapes: normal floats, timesteps in 0..999, token ids below 100."""
    out = {}
    for i in session.get_inputs():
        shape = [rows if not isinstance(d, int) else d for d in i.shape]
        if i.name == "t":
            out[i.name] = rng.integers(0, 1000, shape).astype(np.float32)
        elif "int64" in i.type:
            out[i.name] = rng.integers(0, 100, shape).astype(np.int64)
        else:
            out[i.name] = rng.standard_normal(shape, dtype=np.float32)
    return out


def time_call(session, inputs: dict) -> tuple[float, float]:
    """(wall s, CPU s) of one call, averaged over as many calls as fill MIN_TIMED_S."""
    calls, w0, c0 = 0, time.perf_counter(), time.process_time()
    while True:
        session.run(None, inputs)
        calls += 1
        if time.perf_counter() - w0 >= MIN_TIMED_S:
            return (time.perf_counter() - w0) / calls, (time.process_time() - c0) / calls


def per_row(graphs: dict[str, Path], batches: list[int], threads: list[int], repeats: int, log) -> dict:
    """{network: {threads: {rows: {wall_ms_per_row, cpu_ms_per_row, runs}}}}, medians over repeats."""
    rng = np.random.default_rng(0)
    sessions = {(n, t): make_session(graphs[n], t) for n in graphs for t in threads}
    inputs = {(n, b): feeds(sessions[(n, threads[0])], b, rng) for n in graphs for b in batches}
    for (n, t), s in sessions.items():  # warm-up: every shape once
        for b in batches:
            s.run(None, inputs[(n, b)])
    runs: dict = {}
    for r in range(repeats):
        order = [(n, t, b) for n in graphs for t in threads for b in batches]
        for n, t, b in (order if r % 2 == 0 else order[::-1]):
            wall, cpu = time_call(sessions[(n, t)], inputs[(n, b)])
            runs.setdefault((n, t, b), []).append((wall * 1e3 / b, cpu * 1e3 / b))
        log(f"per-row repeat {r + 1}/{repeats} done")
    out: dict = {}
    for (n, t, b), got in runs.items():
        out.setdefault(n, {}).setdefault(str(t), {})[str(b)] = {
            "wall_ms_per_row": round(statistics.median(w for w, _ in got), 3),
            "cpu_ms_per_row": round(statistics.median(c for _, c in got), 3),
            "wall_ms_per_row_runs": [round(w, 3) for w, _ in got]}
    return out


# -- 2. per edit ------------------------------------------------------------------------------------

class Stages:
    """Exclusive CPU and wall time of named stages: a stage's time excludes the stages called inside it."""

    def __init__(self):
        self.stack: list[list] = []  # [name, cpu0, wall0, inner_cpu, inner_wall]
        self.cpu: dict[str, float] = {}
        self.wall: dict[str, float] = {}
        self.calls: dict[str, int] = {}
        self.rows: dict[str, list[int]] = {}  # each network's rows of every call (record_rows)

    def wrap(self, owner, attr: str, name: str) -> None:
        inner = getattr(owner, attr)

        def timed(*args, **kwargs):
            frame = [name, time.process_time(), time.perf_counter(), 0.0, 0.0]
            self.stack.append(frame)
            try:
                return inner(*args, **kwargs)
            finally:
                self.stack.pop()
                cpu, wall = time.process_time() - frame[1], time.perf_counter() - frame[2]
                self.cpu[name] = self.cpu.get(name, 0.0) + cpu - frame[3]
                self.wall[name] = self.wall.get(name, 0.0) + wall - frame[4]
                self.calls[name] = self.calls.get(name, 0) + 1
                if self.stack:
                    self.stack[-1][3] += cpu
                    self.stack[-1][4] += wall

        setattr(owner, attr, timed)

    def take(self) -> tuple[dict, dict, dict]:
        got = (self.cpu, self.wall, self.calls)
        self.cpu, self.wall, self.calls = {}, {}, {}
        return got


def record_rows(session, rows: list[int]) -> None:
    """Append each call's row count (its first input's length) to `rows`."""
    inner = session.run

    def run(names, inputs, *rest):
        rows.append(len(next(iter(inputs.values()))))
        return inner(names, inputs, *rest)

    session.run = run


def instrumented_service(export: Path, stages: Stages):
    """The pedit model's EditService over the runtime editor of `export`, its stages wrapped."""
    import pedit.photos.identity as identity
    import pedit.photos.portrait as portrait
    import pedit.serve.service as service
    from pedit.export import runtime_editor
    from pedit.export.runtime import Runtime
    from pedit.export.runtime_editor import RuntimeEditor

    runtime = Runtime.load(export)
    names = {"unet": "U-Net", "vae_encoder": "VAE encoder", "vae_decoder": "VAE decoder",
             "image_projector": "image projector", "text_encoder": "text encoder"}
    for name, s in runtime.sessions.items():
        record_rows(s, stages.rows.setdefault(name, []))
        stages.wrap(s, "run", f"network: {names.get(name, name)}")
    stages.wrap(service.EditService, "edit", "request (checks, rest)")
    stages.wrap(service.EditService, "plan", "plan (settings checks)")
    stages.wrap(service.EditService, "_decode_photo", "photo decode")
    stages.wrap(service, "png_bytes", "PNG encode (image, mask)")
    stages.wrap(portrait, "find_faces", "face detection")
    stages.wrap(portrait, "edit_photo_many", "face crop and resize")
    stages.wrap(portrait, "_paste_back", "paste back")
    stages.wrap(identity, "check_identity", "identity check")
    stages.wrap(RuntimeEditor, "edit_many", "edit job (mask draws, sampler math: numpy)")
    stages.wrap(runtime_editor, "finish", "blend (keep outside, pixel mask)")
    return service.EditService(RuntimeEditor(runtime))


def per_edit(export: Path, edits: int, log) -> dict:
    """Medians of each stage's CPU and wall ms over `edits` requests, after one warm-up pass over KEYS."""
    stages = Stages()
    svc = instrumented_service(export, stages)
    for d, s in KEYS:  # warm-up: prompts encoded and cached, detectors loaded
        svc.edit(PHOTO, [d], s, {})
    stages.take()
    for calls in stages.rows.values():
        calls.clear()
    per: list[tuple[dict, dict, dict, float, float]] = []
    for i in range(edits):
        d, s = KEYS[i % len(KEYS)]
        c0, w0 = time.process_time(), time.perf_counter()
        svc.edit(PHOTO, [d], s, {})
        per.append((*stages.take(), time.process_time() - c0, time.perf_counter() - w0))
    log(f"per-edit: {edits} edits done")
    names = sorted({n for p in per for n in p[0]})
    rows_per_edit = {n: sorted(calls[: len(calls) // edits]) for n, calls in stages.rows.items()}
    out = {"edits": edits, "rows_of_each_call": rows_per_edit, "cpu_ms_total": round(statistics.median(p[3] for p in per) * 1e3, 3),
           "wall_ms_total": round(statistics.median(p[4] for p in per) * 1e3, 3), "stages": {}}
    for n in names:
        out["stages"][n] = {"cpu_ms": round(statistics.median(p[0].get(n, 0.0) for p in per) * 1e3, 3),
                            "wall_ms": round(statistics.median(p[1].get(n, 0.0) for p in per) * 1e3, 3),
                            "calls": per[0][2].get(n, 0)}
    return out


# -- 3. the bound -----------------------------------------------------------------------------------

def bound(rows: dict, edit: dict) -> dict:
    """Amdahl: each network's CPU share of an edit and best per-row saving, and the gain they allow.

    A network's cost as one request sends it: the sum over its calls of an edit (their row counts as
    recorded) of rows x CPU ms a row at that row count, 1 thread (the server's setting); batched: the
    same rows at the lowest CPU ms a row measured."""
    label = {"unet": "network: U-Net", "vae_encoder": "network: VAE encoder", "vae_decoder": "network: VAE decoder",
             "image_projector": "network: image projector", "text_encoder": "network: text encoder"}
    total = edit["cpu_ms_total"]
    parts, exact = {}, {}  # exact: (share, saving) unrounded, for the gains
    for n, by_threads in rows.items():
        calls = edit["rows_of_each_call"].get(n) or [1]
        base = sum(b * by_threads["1"][str(b)]["cpu_ms_per_row"] for b in calls) / sum(calls)
        best_t, best_b, best = min(((t, b, v["cpu_ms_per_row"]) for t, per_b in by_threads.items()
                                    for b, v in per_b.items()), key=lambda x: x[2])
        share = edit["stages"].get(label[n], {}).get("cpu_ms", 0.0) / total
        exact[n] = (share, base / best)
        parts[n] = {"cpu_share": round(share, 4), "rows_of_each_call": calls, "cpu_ms_per_row_as_sent": round(base, 3),
                    "best_cpu_ms_per_row": best, "best_at": {"threads": int(best_t), "rows": int(best_b)},
                    "saving": round(base / best, 3)}

    def gain(names):
        cut = sum(exact[n][0] * (1 - 1 / exact[n][1]) for n in names)
        return round(1 / (1 - cut), 3)

    return {"networks": parts, "gain_unet_only": gain(["unet"]), "gain_all_networks": gain(list(parts)),
            "formula": "1 / (1 - sum_i share_i * (1 - 1 / saving_i)); share: CPU share of an edit in-process "
                       "(the server's own work excluded: scripts/bench_serving.py measures the whole)"}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("-m", "--model", help="a model (bundled name or folder) or an exported folder; default: the default edit model")
    p.add_argument("--batches", default="1,2,4,8,16,32,64")
    p.add_argument("--threads", default="1,2")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--edits", type=int, default=24)
    p.add_argument("-o", "--output")
    args = p.parse_args()
    from pedit.export.runtime_folder import export_for, read_export
    from pedit.model.paths import DEFAULT_EDIT_MODEL

    args.model = args.model or DEFAULT_EDIT_MODEL  # what the server serves without -m (RepositoryConfig)
    log = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    export = export_for(args.model, log=log)
    graphs = {n: path for n, path in read_export(export, "onnx").graphs.items() if n in NETWORKS}
    report = {"machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                          "load_avg_at_start": os.getloadavg(), "python": platform.python_version(),
                          "onnxruntime": __import__("onnxruntime").__version__,
                          "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS")},
              "model": args.model, "export": str(export), "repeats": args.repeats}
    batches = [int(b) for b in args.batches.split(",")]
    report["per_edit"] = per_edit(export, args.edits, log)
    batches = sorted(set(batches).union(*map(set, report["per_edit"]["rows_of_each_call"].values())))
    report["per_row"] = per_row(graphs, batches, [int(t) for t in args.threads.split(",")], args.repeats, log)
    report["bound"] = bound(report["per_row"], report["per_edit"])
    report["machine"]["load_avg_at_end"] = os.getloadavg()
    text = json.dumps(report, indent=2)
    print(text)
    if args.output:
        Path(args.output).write_text(text + "\n")


if __name__ == "__main__":
    main()
