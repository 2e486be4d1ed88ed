"""benchmarks/bench_device.py (issue 4, target 6) runs where CI can run it: --device cpu, small."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_device.py"


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=300)


def test_dry_run_on_cpu_prints_both_cases():
    proc = _run("--device", "cpu", "--qubits", "10", "--blocks", "2", "--rounds", "2", "--json")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["device"] == "cpu" and out["qubits"] == 10 and out["step_network"]["chunk"] >= 1
    for case in ("circuit", "step"):
        assert out[case]["cpu_ms"] > 0 and out[case]["device_ms"] > 0 and out[case]["ratio"] > 0
    assert out["targets"]["step_ge_10x_at_20_qubits"] is None  # below 20 qubits: no verdict


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_missing_gpu_is_one_line():
    proc = _run("--device", "cuda", "--qubits", "8", "--rounds", "1")
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr.strip().count("\n") == 0 and "--device cpu" in proc.stderr
