"""Bad input the other test files do not cover, each one line on stderr with nothing on disk
corrupted: a broken or hostile train_state.pt, a non-writable --out, --qubits 40 from the CLI,
an unknown device, NaN losses, NaN in a lazily loaded data set; and loading that runs no code."""

from __future__ import annotations

import json
import pickle
import shutil

import pytest
import torch
from torch.utils.data import Dataset

import qtrain
from qtrain import QTrainError
from qtrain.cli import main
from qtrain.models import mlp
from qtrain.resume import load_state

# a network whose loss turns NaN after `steps` training steps (0: from the first batch)
NAN_NET = '''\
import torch
from torch import nn


class NaNAfter(nn.Module):
    def __init__(self, steps=0):
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
        self.steps, self.calls = steps, 0

    def forward(self, x):
        out = self.body(x)
        if self.training and torch.is_grad_enabled():
            self.calls += 1
            if self.calls > self.steps:
                out = out * float("nan")
        return out
'''


def cli(capsys, *args) -> tuple[int, str]:
    """The real CLI entry, in-process: (exit code, stderr)."""
    capsys.readouterr()
    rc = main([str(a) for a in args])
    return rc, capsys.readouterr().err


def snapshot(folder) -> dict:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


@pytest.fixture
def run_copy(tmp_path, digits_run):
    """A writable copy of the finished digits run (3 epochs, batch 16, seed 0)."""
    out = tmp_path / "run"
    shutil.copytree(digits_run.out, out)
    return out


RESUME = ["compress", "--epochs", "4", "--blocks", "2", "--batch-size", "16", "--lr", "0.01",
          "--quiet", "--resume"]


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty"])
def test_resume_from_corrupt_state(capsys, check_error, run_copy, damage):
    """--resume with a truncated, garbage or empty train_state.pt is one line; nothing changes."""
    path = run_copy / "train_state.pt"
    data = path.read_bytes()
    path.write_bytes({"truncate": data[: len(data) // 2], "garbage": bytes(range(256)) * 16,
                      "empty": b""}[damage])
    before = snapshot(run_copy)
    rc, err = cli(capsys, *RESUME, "--out", run_copy)
    check_error(rc, err, "train_state.pt", "corrupt")
    assert snapshot(run_copy) == before


class _Payload:
    """Unpickling this would write a marker file: a stand-in for hostile code."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_resume_state_never_runs_code(capsys, check_error, tmp_path):
    """A train_state.pt pickle that would run code on load is refused, and runs none."""
    marker = tmp_path / "ran"
    out = tmp_path / "run"
    out.mkdir()
    (out / "train_state.pt").write_bytes(pickle.dumps({"version": 2, "x": _Payload(str(marker))}))
    with pytest.raises(QTrainError, match="corrupt or not a qtrain training state"):
        load_state(out / "train_state.pt")
    rc, err = cli(capsys, *RESUME, "--out", out)
    check_error(rc, err, "train_state.pt")
    assert not marker.exists()


@pytest.mark.parametrize("flag,value,recorded", [("--seed", "1", "0"), ("--batch-size", "32", "16")])
def test_resume_with_other_seed_or_batch(capsys, check_error, run_copy, flag, value, recorded):
    """--resume with another --seed or --batch-size (the data order) is refused; nothing changes."""
    args = list(RESUME)
    if flag in args:
        args[args.index(flag) + 1] = value
    else:
        args += [flag, value]
    before = snapshot(run_copy)
    rc, err = cli(capsys, *args, "--out", run_copy)
    check_error(rc, err, f"{flag} {recorded}", "--force")
    assert snapshot(run_copy) == before


def test_out_not_writable(capsys, check_error, tmp_path):
    """--out below a regular file (not writable, even for root) is one line; the file is intact."""
    blocker = tmp_path / "afile"
    blocker.write_text("keep me")
    rc, err = cli(capsys, "compress", "--epochs", "1", "--quiet", "--out", blocker / "sub")
    check_error(rc, err, "cannot create --out", "writable")
    assert blocker.read_text() == "keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]


def test_qubits_40_refused_from_cli(capsys, check_error, tmp_path):
    """`--qubits 40` is refused before allocating, naming the memory and the fix; no --out."""
    rc, err = cli(capsys, "compress", "--qubits", "40", "--out", tmp_path / "run")
    check_error(rc, err, "--qubits 40", "16,384 GiB", "--chunk")
    assert not (tmp_path / "run").exists()


def test_unknown_device(capsys, check_error):
    """An unknown --device is one line listing the devices."""
    rc, err = cli(capsys, "compress", "--device", "tpu", "--epochs", "1")
    check_error(rc, err, "--device 'tpu'", "cpu, cuda, mps")


@pytest.fixture(scope="module")
def nan_net(tmp_path_factory):
    path = tmp_path_factory.mktemp("nan") / "nan_net.py"
    path.write_text(NAN_NET)
    return path


def test_nan_loss_keeps_last_good_state(capsys, check_error, tmp_path, nan_net):
    """A loss that turns NaN in epoch 2 stops training with one line naming the epoch and the
    likely cause (--lr); epoch 1's state is kept and nothing else is written."""
    out = tmp_path / "run"
    rc, err = cli(capsys, "compress", "--arch", f"{nan_net}:NaNAfter", "--arch-kwargs",
                  '{"steps": 30}', "--epochs", "3", "--blocks", "2", "--quiet", "--out", out)
    check_error(rc, err, "loss became nan at epoch 2, step 8/23", "--lr", "train_state.pt")
    state = load_state(out / "train_state.pt")
    assert state["data"]["epoch"] == 1 and len(state["history"]) == 1
    assert all(torch.isfinite(t).all() for t in state["current"]["qt"].values())
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 1
    assert not (out / "compressed.safetensors").exists() and not (out / "qtrain.json").exists()


def test_nan_loss_from_the_start(capsys, check_error, tmp_path, nan_net):
    """A loss that is NaN on the very first batch blames the model or data, not the training."""
    out = tmp_path / "run"
    rc, err = cli(capsys, "compress", "--arch", f"{nan_net}:NaNAfter", "--epochs", "2",
                  "--blocks", "2", "--quiet", "--out", out)
    check_error(rc, err, "epoch 1, step 1/", "before any update", "nothing was saved")
    assert "--lr" not in err
    assert not (out / "train_state.pt").exists()


class _Lazy(Dataset):
    """A data set that is not a TensorDataset, so it is only read during training."""

    def __init__(self, n, bad=None):
        self.x, self.y = torch.rand(n, 1, 8, 8), torch.arange(n) % 10
        if bad is not None:
            self.x[bad, 0, 2, 2] = float("inf")

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i], self.y[i]


def test_nan_in_lazy_data_names_the_index():
    """Inf in a lazily read data set is found in training and named by its index."""
    cfg = qtrain.CompressConfig(qt=qtrain.QTConfig(blocks=1),
                                train=qtrain.TrainConfig(epochs=1, batch_size=8, quiet=True))
    with pytest.raises(QTrainError, match="the train data has NaN or Inf at index 13"):
        qtrain.compress(mlp(hidden=4), (_Lazy(40, bad=13), _Lazy(10)), cfg)


def test_record_with_module_arch_runs_no_code(tmp_path, digits_run, monkeypatch):
    """A qtrain.json whose arch names an importable module is refused without importing it."""
    pkg = tmp_path / "hostile_arch.py"
    marker = tmp_path / "imported"
    pkg.write_text(f"open({str(marker)!r}, 'w').close()\n\ndef make():\n    return None\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    out = tmp_path / "ckpt"
    shutil.copytree(digits_run.out, out)
    record = json.loads((out / "qtrain.json").read_text())
    record["arch"] = {"spec": "hostile_arch:make", "kwargs": {}}
    (out / "qtrain.json").write_text(json.dumps(record))
    for call in (qtrain.load, qtrain.regenerate):
        with pytest.raises(QTrainError, match="imports its code"):
            call(out)
    assert not marker.exists()
