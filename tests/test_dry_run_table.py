"""scripts/sd15_dry_run_table.py: the SD 1.5 dry run's per-stage records, read back from what the shell script wrote."""

import json
from pathlib import Path

from conftest import load_script


def _stage(out: Path, name: str, rc: int, time: str, log: str, target: Path | None = None):
    d = out / "stages" / name
    d.mkdir(parents=True)
    (d / "rc").write_text(f"{rc}\n")
    (d / "time").write_text(time)
    (d / "log").write_text(log)
    (d / "cmd").write_text(f"pedit {name}\n")
    (d / "target").write_text(f"{target or ''}\n")


def test_records_exit_time_memory_files_and_the_error_line(tmp_path):
    model = tmp_path / "model"
    (model / "unet").mkdir(parents=True)
    (model / "unet" / "w.safetensors").write_bytes(b"x" * 3000)
    _stage(tmp_path, "train", 0, "12.5 2097152\n", "", model)
    _stage(tmp_path, "eval", 1, "Command exited with non-zero status 1\n3.25 1048576\n",
           "loading\nError: the model folder is broken\nAborted!\n")
    (tmp_path / "stages" / "bench").mkdir()
    (tmp_path / "stages" / "bench" / "skipped").write_text("train failed\n")
    load_script("sd15_dry_run_table").main([str(tmp_path)])
    report = json.loads((tmp_path / "dry_run.json").read_text())
    train, evaluation, bench = report["stages"]  # in the script's order, not the folders'
    assert (train["stage"], train["exit_code"], train["wall_s"], train["peak_rss_gib"]) == ("train", 0, 12.5, 2.0)
    assert train["files"] == [{"path": "unet/w.safetensors", "bytes": 3000}]
    assert (evaluation["status"], evaluation["wall_s"], evaluation["peak_rss_gib"]) == ("failed", 3.25, 1.0)
    assert evaluation["last_line"] == "Error: the model folder is broken"
    assert bench["status"] == "skipped"
    md = (tmp_path / "dry_run.md").read_text()
    assert "| train | 0 | 12.5 | 2.0 |" in md and "Error: the model folder is broken" in md
