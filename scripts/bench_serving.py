#!/usr/bin/env python
"""Serving benchmark: edits/s and latency percentiles at 1, 4, 16 and 64 concurrent clients, with the
U-Net's step-level batching on and off (the same repository otherwise), in one run.

    python scripts/bench_serving.py [-m MODEL] [--instances 8] [--unet-threads 1] [--levels 1,4,16,64]
                                    [--soak 1000] [--settings '{"steps": 20, ...}'] [-o report.json]

For each configuration it exports a Triton repository (pedit export --triton), starts tritonserver
on 127.0.0.1 and times the cold start to ready, and computes each distinct request's reference alone.
Both servers stay up; at each level the two are measured alternately `--repeats` times (medians),
with closed-loop clients (each sends its next request when the last returns) and reports:
edits/s, p50/p95/p99 latency, from Triton's own statistics the U-Net's inference count (rows)
against its execution count (calls), and the CPU seconds an edit took in the server's processes
and in the clients (on a saturated CPU, edits/s is the cores over their sum). Every response is
compared with its reference: a response equal to another request's reference is "mixed", a missing
or failed one "lost". `--soak N` sends
N more requests at the highest level below 64 with batching on and counts both.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pedit.serve.client import ServerClient  # noqa: E402
from pedit.serve.repository import RepositoryConfig, export_repository  # noqa: E402
from pedit.serve.server import ADMIN_HEADER, TritonServer, read_json  # noqa: E402

PHOTO = (ROOT / "examples" / "toon.png").read_bytes()
KEYS = [(d, s) for d in ("laughing", "angry", "shocked", "crying") for s in (0, 1)]  # 8 distinct requests


def unet_counts(server: TritonServer) -> tuple[int, int]:
    stats = read_json(f"{server.urls['http']}/v2/models/unet/stats", {ADMIN_HEADER: server.admin_key})["model_stats"][0]
    return int(stats["inference_count"]), int(stats["execution_count"])


def server_cpu_seconds(server: TritonServer) -> float:
    """CPU seconds (user + system) used so far by the server's processes: tritonserver and every Python
    stub (one process group: the server starts in a session of its own)."""
    ticks, group = os.sysconf("SC_CLK_TCK"), server.process.pid
    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # gone meanwhile
            continue
        if int(fields[2]) == group:  # fields after the name: state, ppid, pgrp, ..., utime (12), stime (13)
            total += int(fields[11]) + int(fields[12])
    return total / ticks


def pixels(result) -> bytes:
    return np.asarray(result.image.convert("RGB")).tobytes()


SETTINGS: dict = {}  # every request's settings (--settings): the model's own sampler when empty


def drive(client: ServerClient, clients: int, requests: int, references: dict) -> dict:
    """`requests` requests from `clients` closed-loop clients; latencies, and lost / mixed counts."""
    latencies, outcomes = [], []
    jobs = [KEYS[i % len(KEYS)] for i in range(requests)]

    def one(key):
        t0 = time.perf_counter()
        try:
            got = pixels(client.edit(PHOTO, [key[0]], key[1], SETTINGS)[0])
        except Exception as e:  # counted as lost
            return time.perf_counter() - t0, key, f"{type(e).__name__}: {e}"
        return time.perf_counter() - t0, key, got

    t0 = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        for seconds, key, got in pool.map(one, jobs):
            latencies.append(seconds)
            outcomes.append((key, got))
    wall = time.perf_counter() - t0
    lost = [g for _, g in outcomes if isinstance(g, str)]
    mixed = sum(1 for key, g in outcomes if not isinstance(g, str) and g != references[key])
    q = statistics.quantiles(latencies, n=100, method="inclusive") if len(latencies) > 1 else latencies * 99
    return {"clients": clients, "requests": requests, "seconds": round(wall, 2),
            "edits_per_s": round((requests - len(lost)) / wall, 3),
            "p50_s": round(q[49], 3), "p95_s": round(q[94], 3), "p99_s": round(q[98], 3),
            "lost": len(lost), "mixed": mixed, "errors": sorted(set(lost))[:3]}


def start_config(args, batching: bool, work: Path) -> tuple[TritonServer, ServerClient, dict]:
    repo = export_repository(RepositoryConfig(
        model=args.model, output=str(work / ("repo-batching" if batching else "repo-plain")), overwrite=True,
        batching=batching, pedit_instances=args.instances, threads=args.unet_threads,
        max_queue=max(args.levels) * 4, timeout_s=600,
        networks=("unet",), unet_max_rows=5 * args.instances,
        unet_preferred=tuple(sorted({5 * max(1, args.instances // 4), 5 * max(1, args.instances // 2), 5 * args.instances}))),
        log=print)
    server = TritonServer(repo)
    server.start(timeout=600)
    client = ServerClient(server.urls["http"], timeout=600)
    references = {key: pixels(client.edit(PHOTO, [key[0]], key[1], SETTINGS)[0]) for key in KEYS}
    if len(set(references.values())) != len(KEYS):
        raise SystemExit("two distinct requests gave the same image: mixed responses would go unseen")
    return server, client, references


def measure(server, client, references, clients: int, requests: int) -> dict:
    """One level's run, with the U-Net's rows and executions, and the CPU seconds an edit took in the
    server's processes and in this client (the clients' HTTP and PNG decoding share the machine)."""
    before, cpu0, mine0 = unet_counts(server), server_cpu_seconds(server), time.process_time()
    level = drive(client, clients, requests, references)
    rows, calls = (a - b for a, b in zip(unet_counts(server), before))
    done = max(requests - level["lost"], 1)
    level.update(unet_rows=rows, unet_executions=calls, rows_per_execution=round(rows / max(calls, 1), 2),
                 server_cpu_s_per_edit=round((server_cpu_seconds(server) - cpu0) / done, 4),
                 client_cpu_s_per_edit=round((time.process_time() - mine0) / done, 4),
                 load_avg_1min=os.getloadavg()[0])
    return level


def pooled(runs: list[dict]) -> dict:
    """Repeats of one level: the median edits/s, the median of each percentile, totals of the counts."""
    out = {k: runs[0][k] for k in ("clients", "requests")}
    for key in ("edits_per_s", "p50_s", "p95_s", "p99_s", "server_cpu_s_per_edit", "client_cpu_s_per_edit"):
        out[key] = round(statistics.median(r[key] for r in runs), 4 if key.endswith("per_edit") else 3)
    out["edits_per_s_runs"] = [r["edits_per_s"] for r in runs]
    out["load_avg_1min_runs"] = [r["load_avg_1min"] for r in runs]
    for key in ("lost", "mixed", "unet_rows", "unet_executions"):
        out[key] = sum(r[key] for r in runs)
    out["rows_per_execution"] = round(out["unet_rows"] / max(out["unet_executions"], 1), 2)
    return out


def markdown(report: dict) -> str:
    """The report as the table docs/serving.md shows."""
    lines = ["| clients | batching: edits/s | p50 / p95 / p99 s | U-Net rows per execution | batching off: edits/s "
             "| p50 / p95 / p99 s | rows per execution | throughput ratio | CPU s an edit, server + clients: on / off |",
             "|---|---|---|---|---|---|---|---|---|"]
    for row in report["levels"]:
        on, off = row["batching"], row["plain"]
        cpu = [f"{r['server_cpu_s_per_edit']} + {r['client_cpu_s_per_edit']}" for r in (on, off)]
        lines.append(f"| {on['clients']} | {on['edits_per_s']} | {on['p50_s']} / {on['p95_s']} / {on['p99_s']} | "
                     f"{on['rows_per_execution']} ({on['unet_rows']} / {on['unet_executions']}) | {off['edits_per_s']} | "
                     f"{off['p50_s']} / {off['p95_s']} / {off['p99_s']} | {off['rows_per_execution']} | {row['speedup']}x "
                     f"| {cpu[0]} / {cpu[1]} |")
    return "\n".join(lines)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("-m", "--model")
    p.add_argument("--instances", type=int, default=8, help="pedit model instances (edits in flight)")
    p.add_argument("--unet-threads", type=int, default=1, help="ONNX Runtime intra-op threads of the U-Net model")
    p.add_argument("--levels", default="1,4,16,64")
    p.add_argument("--per-client", type=int, default=2, help="requests per client at each level")
    p.add_argument("--min-requests", type=int, default=8)
    p.add_argument("--repeats", type=int, default=3, help="alternations of the two configurations at each level")
    p.add_argument("--soak", type=int, default=1000, help="requests of the lost/mixed soak (0: none)")
    p.add_argument("--work", default="/tmp/pedit-bench-serving")
    p.add_argument("--settings", default="{}", help="JSON settings of every request (pedit.serve.protocol.SETTINGS)")
    p.add_argument("-o", "--output")
    args = p.parse_args()
    SETTINGS.update(json.loads(args.settings))
    args.levels = [int(v) for v in args.levels.split(",")]
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    report = {"machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                          "load_avg_at_start": os.getloadavg(), "python": platform.python_version()},
              "model": args.model or "the default edit model", "instances": args.instances,
              "unet_threads": args.unet_threads, "settings": SETTINGS,
              "repeats": args.repeats}
    # Both servers up at once and the configurations alternated at every repeat, so a change in the
    # machine's load falls on both alike; medians over the repeats.
    on = start_config(args, True, work)
    off = start_config(args, False, work)
    try:
        report["cold_start_to_ready_s"] = {"batching": round(on[0].ready_seconds, 2), "plain": round(off[0].ready_seconds, 2)}
        report["same_references"] = on[2] == off[2]
        report["levels"] = []
        for clients in args.levels:
            requests = max(args.per_client * clients, args.min_requests)
            runs = {"batching": [], "plain": []}
            for r in range(args.repeats):
                order = [("batching", on), ("plain", off)] if r % 2 == 0 else [("plain", off), ("batching", on)]
                for name, (server, client, references) in order:
                    runs[name].append(measure(server, client, references, clients, requests))
                    print(name, json.dumps(runs[name][-1]), flush=True)
            row = {name: pooled(rs) for name, rs in runs.items()}
            row["speedup"] = round(row["batching"]["edits_per_s"] / max(row["plain"]["edits_per_s"], 1e-9), 2)
            report["levels"].append(row)
        if args.soak:
            soak_clients = max([c for c in args.levels if c < 64] or [1])
            report["soak"] = measure(*on, soak_clients, args.soak)
            print("soak", json.dumps(report["soak"]), flush=True)
    finally:
        on[0].stop()
        off[0].stop()
    report["machine"]["load_avg_at_end"] = os.getloadavg()
    text = json.dumps(report, indent=2)
    print(text)
    print(markdown(report))
    if args.output:
        Path(args.output).write_text(text)


if __name__ == "__main__":
    main()
