"""The SD 1.5 dry run's table: OUT/stages/*/ (written by scripts/sd15_dry_run.sh) -> OUT/dry_run.json and OUT/dry_run.md.

Per stage: exit code, wall time and peak resident memory (from /usr/bin/time), the files the stage wrote
(under its output path, with sizes) and, for a failure, the last line of its output (the `Error:` line or
the exception). Run after every stage, so the table is current when the run is cut short.

    python scripts/sd15_dry_run_table.py OUT
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path


ORDER = ("build", "toon-pairs", "gen-pairs-full-face", "gen-pairs-plus-face", "train", "eval", "edit-torch",
         "export-fp32", "export-fp16", "edit-onnx", "bench", "sticker-pack")


def _read(path: Path, default: str = "") -> str:
    return path.read_text().strip() if path.exists() else default


def _files(target: Path) -> list[dict]:
    if target.is_file():
        return [{"path": target.name, "bytes": target.stat().st_size}]
    if not target.is_dir():
        return []
    found = []
    for dirpath, dirnames, filenames in os.walk(target):
        dirnames[:] = [d for d in dirnames if d not in ("pedit-cache", ".pedit-cache")]  # caches a later stage wrote
        for name in filenames:
            p = Path(dirpath) / name
            found.append({"path": str(p.relative_to(target)), "bytes": p.stat().st_size})
    return sorted(found, key=lambda f: f["path"])


def _last_line(log: str) -> str:
    lines = [ln.strip() for ln in log.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("Error:")]
    return (errors or lines or [""])[-1][:300]


def stage_record(folder: Path) -> dict:
    rec = {"stage": folder.name, "command": _read(folder / "cmd"), "target": _read(folder / "target")}
    if (folder / "skipped").exists():
        return {**rec, "status": "skipped", "note": _read(folder / "skipped")}
    if not (folder / "rc").exists():
        return {**rec, "status": "running"}
    rc = int(_read(folder / "rc", "-1"))
    timing = _read(folder / "time").splitlines()
    wall, rss = (timing[-1].split() + ["?", "?"])[:2] if timing else ("?", "?")
    files = _files(Path(rec["target"])) if rec["target"] else []
    rec.update(status="ok" if rc == 0 else ("timeout" if rc == 124 else "failed"), exit_code=rc,
               wall_s=float(wall) if wall.replace(".", "", 1).isdigit() else None,
               peak_rss_gib=round(int(rss) / 2**20, 2) if rss.isdigit() else None,
               waited_for_memory_s=int(_read(folder / "waited_s", "0")), files=files,
               load_average=[_read(folder / "load_at_start"), _read(folder / "load_at_end")],
               bytes_written=sum(f["bytes"] for f in files))
    if rc != 0:
        rec["last_line"] = _last_line(_read(folder / "log"))
    return rec


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024


def markdown(settings: dict, records: list[dict]) -> str:
    head = (f"Dry run ({settings.get('size')} folders) on {settings.get('host')} ({settings.get('cpus')} CPUs, {settings.get('memory_gib')} GiB), "
            f"device {settings.get('device')}, {settings.get('resolution')} px, {settings.get('steps')} steps, "
            f"{settings.get('precision')}, commit {settings.get('commit')}, started {settings.get('started')}\n\n")
    rows = ["| stage | exit | wall (s) | peak RSS (GiB) | load avg | written | note |", "|---|---|---|---|---|---|---|"]
    for r in records:
        if r["status"] in ("skipped", "running"):
            rows.append(f"| {r['stage']} | {r['status']} | | | | | {r.get('note', '')} |")
            continue
        biggest = sorted(r["files"], key=lambda f: -f["bytes"])[:3]
        written = f"{len(r['files'])} files, {_size(r['bytes_written'])}" + (
            " (" + ", ".join(f"{f['path']} {_size(f['bytes'])}" for f in biggest) + ")" if biggest else "")
        note = r.get("last_line", "").replace("|", "\\|")
        load = " → ".join(x for x in r["load_average"] if x)
        rows.append(f"| {r['stage']} | {r['exit_code']} | {r['wall_s']} | {r['peak_rss_gib']} | {load} | {written} | {note} |")
    return head + "\n".join(rows) + "\n"


def main(argv: list[str] | None = None) -> None:
    out = Path((sys.argv[1:] if argv is None else argv)[0])
    settings = json.loads(_read(out / "settings.json", "{}") or "{}")
    stages = sorted((p for p in (out / "stages").iterdir() if p.is_dir()), key=lambda p: (ORDER.index(p.name) if p.name in ORDER else len(ORDER), p.name))
    records = [stage_record(p) for p in stages]
    for name, text in (("dry_run.json", json.dumps({"settings": settings, "stages": records}, indent=2) + "\n"),
                       ("dry_run.md", markdown(settings, records))):
        tmp = out / f".{name}.tmp"
        tmp.write_text(text)
        tmp.replace(out / name)


if __name__ == "__main__":
    main()
