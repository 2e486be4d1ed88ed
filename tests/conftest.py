"""Shared fixtures: tiny finished checkpoints made once per session by the real CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

REPO = Path(__file__).resolve().parents[1]

# a small nn.Module class in a file of its own, for the --arch path/to/file.py:Name form
TINY_NET = '''\
from torch import nn


class TinyNet(nn.Module):
    """Flatten, Linear(64, hidden), ReLU, Linear(hidden, 10): fits the 1x8x8 digits."""

    def __init__(self, hidden=16):
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(64, hidden), nn.ReLU(),
                                  nn.Linear(hidden, 10))

    def forward(self, x):
        return self.body(x)
'''

# cheap settings for every CLI training run in the tests
FAST = ["--epochs", "2", "--blocks", "2", "--quiet"]


def run_cli(*args: str, cwd: Path | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """``python -m qtrain ARGS`` in a real subprocess."""
    return subprocess.run([sys.executable, "-m", "qtrain", *args], capture_output=True, text=True,
                          cwd=cwd or REPO, timeout=timeout)


def one_line_error(rc: int, err: str, *needles: str) -> str:
    """Assert a CLI failure: non-zero code, exactly one stderr line "qtrain: error: ...", no
    traceback, and every needle in that line. Returns the line."""
    assert rc != 0, f"expected a failure, got rc={rc}"
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, f"expected one stderr line, got {len(lines)}:\n{err}"
    assert lines[0].startswith("qtrain: error:"), lines[0]
    for needle in needles:
        assert needle in lines[0], f"{needle!r} not in {lines[0]!r}"
    return lines[0]


@pytest.fixture(scope="session")
def cli_subprocess():
    """The :func:`run_cli` helper: ``python -m qtrain ARGS`` in a real subprocess."""
    return run_cli


@pytest.fixture(scope="session")
def check_error():
    """The :func:`one_line_error` helper: assert a one-line CLI error."""
    return one_line_error


@pytest.fixture(scope="session")
def fast_args():
    """Cheap training flags for CLI runs: 2 epochs, 2 blocks, no progress bar."""
    return list(FAST)


@pytest.fixture(scope="session")
def digits_run(tmp_path_factory) -> SimpleNamespace:
    """A finished default run (built-in digits_cnn on digits), made once by a real
    ``python -m qtrain compress --json`` subprocess: its folder, stdout and stderr."""
    out = tmp_path_factory.mktemp("digits_run") / "ckpt"
    # 3 short epochs at a smaller batch: cheap, yet a model that predicts more than one class
    proc = run_cli("compress", "--epochs", "3", "--blocks", "2", "--batch-size", "16", "--lr", "0.01",
                   "--quiet", "--json", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    return SimpleNamespace(out=out, stdout=proc.stdout, stderr=proc.stderr,
                           record=json.loads((out / "qtrain.json").read_text()))


@pytest.fixture(scope="session")
def tiny_net_file(tmp_path_factory) -> Path:
    """A .py file defining ``TinyNet(hidden=16)``."""
    path = tmp_path_factory.mktemp("arch") / "tiny_net.py"
    path.write_text(TINY_NET)
    return path


@pytest.fixture(scope="session")
def file_arch_run(tmp_path_factory, tiny_net_file) -> SimpleNamespace:
    """A finished run whose --arch is a file spec (``/abs/tiny_net.py:TinyNet``), made once
    in-process by the CLI entry point."""
    from qtrain.cli import main

    out = tmp_path_factory.mktemp("file_arch_run") / "ckpt"
    spec = f"{tiny_net_file}:TinyNet"
    rc = main(["compress", *FAST, "--arch", spec, "--arch-kwargs", '{"hidden": 8}',
               "--out", str(out)])
    assert rc == 0
    return SimpleNamespace(out=out, spec=spec, kwargs={"hidden": 8},
                           record=json.loads((out / "qtrain.json").read_text()))
