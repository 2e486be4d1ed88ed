"""Surviving a crash: the training state, SIGKILL mid-epoch then --resume, Ctrl-C, and
bit-identical results for the same seed on CPU."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from qtrain.resume import load_state, rng_state, save_state, set_rng_state

REPO = Path(__file__).resolve().parents[1]
EPOCHS = 4
BASE = ["compress", "--epochs", str(EPOCHS), "--blocks", "2", "--batch-size", "16", "--lr", "0.01",
        "--quiet"]
COMPARED = ("epoch", "train_loss", "test_loss", "test_accuracy", "lr")


def env() -> dict:
    """Every run here uses one thread: CPU results are bit-identical for a fixed thread count."""
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}


def command(out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "qtrain", *BASE, "--out", str(out), *extra]


def metrics(out: Path) -> list[dict]:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [{k: r[k] for k in COMPARED} for r in rows]


def start_then_signal(out: Path, sig: int) -> subprocess.CompletedProcess:
    """Start a run, wait until its first epoch is logged, a little more, then send ``sig``."""
    proc = subprocess.Popen(command(out), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env(), cwd=REPO)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        path = out / "metrics.jsonl"
        if path.is_file() and path.read_text().strip():
            break
        time.sleep(0.01)
    time.sleep(0.05)  # into the second epoch
    proc.send_signal(sig)
    stdout, stderr = proc.communicate(timeout=120)
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


def resume(out: Path) -> None:
    done = subprocess.run(command(out, "--resume"), capture_output=True, text=True, env=env(),
                          cwd=REPO, timeout=240)
    assert done.returncode == 0, done.stderr


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """An uninterrupted run (seed 0)."""
    out = tmp_path_factory.mktemp("reference") / "run"
    proc = subprocess.run(command(out), capture_output=True, text=True, env=env(), cwd=REPO,
                          timeout=240)
    assert proc.returncode == 0, proc.stderr
    return out


def test_same_seed_gives_identical_bytes(reference, tmp_path):
    """A second run with the same seed and config writes byte-identical safetensors files."""
    out = tmp_path / "again"
    proc = subprocess.run(command(out), capture_output=True, text=True, env=env(), cwd=REPO,
                          timeout=240)
    assert proc.returncode == 0, proc.stderr
    for name in ("compressed.safetensors", "model.safetensors"):
        assert (out / name).read_bytes() == (reference / name).read_bytes(), name
    assert metrics(out) == metrics(reference)


def test_sigkill_mid_epoch_then_resume_matches(reference, tmp_path):
    """SIGKILL during epoch 2, then --resume: the same metrics and bytes as the uninterrupted run."""
    out = tmp_path / "killed"
    proc = start_then_signal(out, signal.SIGKILL)
    assert proc.returncode == -signal.SIGKILL
    assert 1 <= len(metrics(out)) < EPOCHS, "the run ended before the kill: nothing was tested"
    assert not (out / "compressed.safetensors").exists()
    resume(out)
    assert metrics(out) == metrics(reference)
    assert (out / "compressed.safetensors").read_bytes() == \
        (reference / "compressed.safetensors").read_bytes()


def test_ctrl_c_saves_exits_130_and_resumes(reference, tmp_path):
    """SIGINT saves after the current step, exits 130 with one line naming --resume; resuming
    ends bit-equal to the uninterrupted run."""
    out = tmp_path / "interrupted"
    proc = start_then_signal(out, signal.SIGINT)
    assert proc.returncode == 130, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("qtrain: interrupted at epoch"), proc.stderr
    assert "--resume" in lines[0] and "train_state.pt" in lines[0]
    state = load_state(out / "train_state.pt")
    logged = len(metrics(out))
    assert logged < EPOCHS
    # the state counts the finished epochs, and the steps done in the next one (batch 16)
    assert state["data"]["epoch"] == logged
    assert state["partial"]["count"] == state["data"]["step"] * 16
    resume(out)
    assert metrics(out) == metrics(reference)
    assert (out / "compressed.safetensors").read_bytes() == \
        (reference / "compressed.safetensors").read_bytes()


def test_state_holds_everything_to_resume(reference):
    """train_state.pt holds the QT parameters, optimizer, scheduler, epoch, best metrics and
    every RNG state, and loads without unpickling code."""
    state = load_state(reference / "train_state.pt")
    assert set(state) >= {"current", "optimizer", "scheduler", "rng", "data", "history", "best",
                          "best_snap", "updates"}
    assert state["data"] == {"seed": 0, "batch_size": 16, "epoch": EPOCHS, "step": 0}
    assert set(state["rng"]) == {"torch", "cuda", "numpy", "python"}
    assert "generator.angles" in state["current"]["qt"]
    assert state["optimizer"]["state"] and state["scheduler"]["last_epoch"] == EPOCHS
    assert state["best"]["epoch"] == json.loads((reference / "qtrain.json").read_text())[
        "metrics"]["best_epoch"]


def test_rng_state_round_trip(tmp_path):
    """rng_state/set_rng_state, through an atomic save and a weights-only load, replay torch,
    numpy and Python random draws exactly."""
    torch.manual_seed(1)
    np.random.seed(2)
    random.seed(3)
    save_state(tmp_path / "s.pt", {"rng": rng_state()})
    first = (torch.rand(3), np.random.rand(3), random.random())
    set_rng_state(load_state(tmp_path / "s.pt")["rng"])
    again = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(first[0], again[0])
    assert np.array_equal(first[1], again[1]) and first[2] == again[2]
