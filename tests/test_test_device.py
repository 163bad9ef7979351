"""PEDIT_TEST_DEVICE (tests/conftest.py): the suite's device switch, run on a copy of the conftest in a child pytest."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

PROBE = '''
import pytest

@pytest.mark.cpu_only("needs the CPU's own path")
def test_cpu_only():
    pass

def test_device(device):
    from conftest import TEST_DEVICE
    assert device == TEST_DEVICE
    print("DEVICE=" + device)
'''


def _run(tmp_path: Path, value: str | None) -> subprocess.CompletedProcess:
    shutil.copy(Path(__file__).with_name("conftest.py"), tmp_path / "conftest.py")
    (tmp_path / "test_probe.py").write_text(PROBE)
    env = {k: v for k, v in os.environ.items() if k not in ("PEDIT_TEST_DEVICE", "ACCELERATE_USE_CPU")}
    if value is not None:
        env["PEDIT_TEST_DEVICE"] = value
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-rs", "-s", "-q", str(tmp_path)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)


def test_unset_runs_everything_on_the_cpu(tmp_path):
    result = _run(tmp_path, None)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "DEVICE=cpu" in result.stdout and "2 passed" in result.stdout


def test_another_device_skips_cpu_only_tests_with_their_reason(tmp_path):
    result = _run(tmp_path, "meta")  # a device every torch has: stands in for cuda here
    assert result.returncode == 0, result.stdout + result.stderr
    assert "DEVICE=meta" in result.stdout and "1 passed, 1 skipped" in result.stdout
    assert "CPU only (needs the CPU's own path); PEDIT_TEST_DEVICE=meta" in result.stdout


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_a_gpu_stops_the_run_instead_of_testing_the_cpu(tmp_path):
    result = _run(tmp_path, "cuda")
    assert result.returncode == 4
    assert "PEDIT_TEST_DEVICE=cuda: torch cannot use that device" in result.stdout + result.stderr
