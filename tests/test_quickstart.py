"""README's promises: the quick start reaches 90% on digits, and the shipped example loads."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import qtrain
from qtrain.data import load_digits_split

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = "checkpoints/example-digits"


@pytest.mark.slow
def test_quickstart_reaches_90_percent(tmp_path, cli_subprocess):
    """`qtrain compress` with its defaults (ReLU digits CNN) reaches >= 90% and prints the ratio."""
    proc = cli_subprocess("compress", "--quiet", "--out", str(tmp_path / "qs"))
    assert proc.returncode == 0, proc.stderr
    assert "compression ratio 4.98x" in proc.stdout
    rec = json.loads((tmp_path / "qs" / "qtrain.json").read_text())
    assert rec["metrics"]["test_accuracy"] >= 0.90
    assert rec["counts"]["trainable_params"] == 381


def test_shipped_example_loads_and_scores(monkeypatch):
    """The committed example loads with qtrain.load and scores its recorded accuracy (>= 90%)."""
    monkeypatch.chdir(REPO)
    model = qtrain.load(EXAMPLE)
    _, test = load_digits_split(seed=0)
    x, y = test.tensors
    with torch.no_grad():
        acc = (model(x).argmax(1) == y).float().mean().item()
    rec = json.loads((REPO / EXAMPLE / "qtrain.json").read_text())
    assert acc == pytest.approx(rec["metrics"]["test_accuracy"], abs=1e-6)
    assert acc >= 0.90
