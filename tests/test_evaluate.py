"""`qtrain evaluate` and `qtrain info` on real digits checkpoints: counts against the files,
accuracy against `qtrain.load`, the original MODEL and the classical baseline."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open

import qtrain
from qtrain.baseline import train_classical
from qtrain.cli import main
from qtrain.data import load_digits_split
from qtrain.models import digits_cnn

BUFFERS = {"generator.ref"}  # saved state in compressed.safetensors, never trained


def cli(capsys, *args) -> tuple[int, str, str]:
    """Run the real CLI entry in-process; return (exit code, stdout, stderr)."""
    capsys.readouterr()
    rc = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return rc, out, err


def accuracy_and_loss(model, ds) -> tuple[float, float]:
    x, y = ds.tensors
    with torch.no_grad():
        out = model(x)
    return int((out.argmax(-1) == y).sum()) / len(y), float(F.cross_entropy(out, y))


def test_evaluate_json_agrees_with_load_and_files(capsys, digits_run):
    """--json: accuracy and losses equal qtrain.load on the rebuilt split; the ratio equals M over
    the trainable numbers counted in compressed.safetensors."""
    rc, out, err = cli(capsys, "evaluate", digits_run.out, "--json")
    assert rc == 0, err
    r = json.loads(out)
    train, test = load_digits_split(seed=digits_run.record["config"]["_data"]["train"]["_data"]["seed"])
    model = qtrain.load(digits_run.out)
    acc, test_loss = accuracy_and_loss(model, test)
    _, train_loss = accuracy_and_loss(model, train)
    qt = r["quantum_train"]
    assert qt["test_accuracy"] == pytest.approx(acc, abs=1e-12)
    assert qt["test_loss"] == pytest.approx(test_loss, rel=1e-5)
    assert qt["train_loss"] == pytest.approx(train_loss, rel=1e-5)
    assert qt["generalization_gap"] == pytest.approx(test_loss - train_loss, rel=1e-4, abs=1e-6)
    assert qt["test_accuracy"] == pytest.approx(digits_run.record["metrics"]["test_accuracy"])
    with safe_open(str(digits_run.out / "compressed.safetensors"), "pt") as f:
        stored = sum(f.get_tensor(k).numel() for k in f.keys() if k not in BUFFERS)
    c = r["counts"]
    assert r["file_counts"]["trainable_params"] == stored == c["trainable_params"]
    assert r["file_counts"]["agree"] is True
    assert c["compression_ratio"] == pytest.approx(c["generated"] / stored)
    assert c["angles"] + c["mapping"] + c["scaling"] + c["classical"] == stored
    files = r["files"]
    assert files["compressed_bytes"] == (digits_run.out / "compressed.safetensors").stat().st_size
    assert files["model_bytes"] > files["compressed_bytes"]
    assert r["data"]["test_size"] == len(test) and r["data"]["recorded_split"] is True
    assert r["original"] is None and r["baseline"] is None


def test_evaluate_table(capsys, digits_run):
    """The default output is a readable table with M, the split, the ratio, file sizes and the
    regenerated model's accuracy."""
    rc, out, err = cli(capsys, "evaluate", digits_run.out)
    assert rc == 0, err
    c, m = digits_run.record["counts"], digits_run.record["metrics"]
    assert "generated M        1,898" in out
    assert f"trainable          {c['trainable_params']:,} = angles {c['angles']}" in out
    assert "compressed.safetensors agrees" in out
    assert f"compression ratio  {c['compression_ratio']:.2f}x" in out
    assert "KiB vs model.safetensors" in out
    row = next(line for line in out.splitlines() if line.startswith("Quantum-Train"))
    assert f"{m['test_accuracy']:.2%}" in row
    assert "gap = test CE - train CE" in out


def test_evaluate_mismatched_file_is_flagged(tmp_path, capsys, digits_run):
    """A compressed.safetensors that disagrees with the recorded counts is reported, not hidden."""
    out = tmp_path / "ckpt"
    shutil.copytree(digits_run.out, out)
    rec = json.loads((out / "qtrain.json").read_text())
    rec["counts"]["trainable_params"] += 1
    (out / "qtrain.json").write_text(json.dumps(rec))
    rc, text, err = cli(capsys, "evaluate", out)
    assert rc == 0, err
    assert "MISMATCH: compressed.safetensors holds" in text


def test_evaluate_original_and_baseline(tmp_path, capsys):
    """A trained MODEL's own accuracy is reported; --baseline-epochs trains the same architecture
    classically on the same split and seed (reproducible by hand)."""
    torch.manual_seed(1)
    net = digits_cnn()
    train, test = load_digits_split(seed=3)
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    for _ in range(15):
        opt.zero_grad()
        F.cross_entropy(net(train.tensors[0]), train.tensors[1]).backward()
        opt.step()
    own_acc, _ = accuracy_and_loss(net.eval(), test)
    torch.save(net.state_dict(), tmp_path / "net.pt")
    rc, _, err = cli(capsys, "compress", tmp_path / "net.pt", "--arch", "digits_cnn", "--epochs", "1",
                     "--blocks", "1", "--seed", "3", "--batch-size", "128", "--quiet",
                     "--out", tmp_path / "run")
    assert rc == 0, err
    rc, out, err = cli(capsys, "evaluate", tmp_path / "run", "--baseline-epochs", "2",
                       "--baseline-lr", "0.01", "--json")
    assert rc == 0, err
    r = json.loads(out)
    assert r["original"]["test_accuracy"] == pytest.approx(own_acc)
    assert r["original"]["params"] == 1898
    torch.manual_seed(3)
    expected = train_classical(digits_cnn(), train, test, 2, 128, 0.01, 3)
    b = r["baseline"]
    assert (b["epochs"], b["params"], b["seed"]) == (2, 1898, 3)
    assert b["test_accuracy"] == pytest.approx(expected["test_accuracy"])
    assert b["generalization_gap"] == pytest.approx(b["test_loss"] - b["train_loss"])
    rc, out, err = cli(capsys, "evaluate", tmp_path / "run", "--baseline-epochs", "1")
    assert rc == 0, err
    assert "original MODEL" in out and "classical, 1 epoch " in out


def test_evaluate_errors(tmp_path, capsys, check_error, digits_run):
    """Recorded data not found from here, recorded code-importing data and a folder without a
    record are one-line errors that name the fix."""
    out = tmp_path / "ckpt"
    shutil.copytree(digits_run.out, out)
    rec = json.loads((out / "qtrain.json").read_text())
    rec["data"]["spec"] = "no/such/folder"
    (out / "qtrain.json").write_text(json.dumps(rec))
    rc, _, err = cli(capsys, "evaluate", out)
    check_error(rc, err, "no/such/folder", "pass --data")
    rec["data"]["spec"] = "os:getcwd"
    (out / "qtrain.json").write_text(json.dumps(rec))
    rc, _, err = cli(capsys, "evaluate", out)
    check_error(rc, err, "imports code", "--data os:getcwd")
    rc, _, err = cli(capsys, "evaluate", tmp_path)
    check_error(rc, err, "qtrain.json")


def test_evaluate_other_data(tmp_path, capsys, digits_run):
    """--data evaluates on another split and says it is not the recorded one."""
    import numpy as np

    _, test = load_digits_split(seed=0)
    x, y = test.tensors
    npz = tmp_path / "d.npz"
    np.savez(npz, x_train=x[:40].numpy(), y_train=y[:40].numpy(), x_test=x[40:].numpy(),
             y_test=y[40:].numpy())
    rc, out, err = cli(capsys, "evaluate", digits_run.out, "--data", npz, "--json")
    assert rc == 0, err
    r = json.loads(out)
    acc, _ = accuracy_and_loss(qtrain.load(digits_run.out), test.__class__(x[40:], y[40:]))
    assert r["quantum_train"]["test_accuracy"] == pytest.approx(acc)
    assert r["data"]["recorded_split"] is False and r["data"]["test_size"] == len(x) - 40


def test_info_shows_everything(capsys, digits_run):
    """`qtrain info` adds mapping, simulation, data, training, losses, files and creation time."""
    rc, out, err = cli(capsys, "info", digits_run.out)
    assert rc == 0, err
    m = digits_run.record["metrics"]
    for needle in ("mapping        12 -> 20 -> 1 (gelu); scaling tensor",
                   "simulation     native", "data           digits (classification): 1,437 train",
                   "input (1, 8, 8)", "training       3 epochs, batch 16, Adam lr 0.01",
                   f"gap {m['generalization_gap']:.4f}", "compressed.safetensors", "KiB",
                   "created", "versions       qtrain"):
        assert needle in out, needle


def test_info_shows_gradient_settings_when_recorded(tmp_path, capsys, digits_run):
    """Gradient method and shots recorded in qtrain.json appear in info and evaluate."""
    out = tmp_path / "ckpt"
    shutil.copytree(digits_run.out, out)
    rec = json.loads((out / "qtrain.json").read_text())
    rec["config"]["_data"]["qt"]["_data"].update(grad="spsa", shots=1000)
    (out / "qtrain.json").write_text(json.dumps(rec))
    rc, text, _ = cli(capsys, "info", out)
    assert rc == 0 and "gradient       spsa, 1,000 shots" in text
    rc, text, _ = cli(capsys, "evaluate", out)
    assert rc == 0 and "gradient           spsa, shots 1000" in text
    rc, text, _ = cli(capsys, "info", digits_run.out)
    assert "gradient       backprop, exact probabilities" in text


# ----------------------------------------------------------------------------- shipped configs

CONFIGS = __import__("pathlib").Path(__file__).resolve().parents[1] / "configs"


@pytest.mark.parametrize("name,trainable", [
    ("mnist-ry-L8.toml", 425),
    *[(f"mnist-u3-L{L}.toml", 78 * L + 249 + 16) for L in (1, 4, 7, 10, 13, 16)],
])
def test_shipped_mnist_configs(name, trainable):
    """Each MNIST config opens with its command and sizes the toolkit CNN as documented (ry L=8:
    425 trainable; u3: 78 L angles + the toolkit's 249 mapping + 16 scaling)."""
    import tomllib

    from qtrain.cli import compress
    from qtrain.config import QTConfig
    from qtrain.models import toolkit_cnn
    from qtrain.quantum_train import QuantumTrain

    path = CONFIGS / name
    assert path.read_text().splitlines()[0] == f"# qtrain compress --config configs/{name}"
    conf = tomllib.loads(path.read_text())
    assert set(conf) <= {p.name for p in compress.params}  # every key is a compress option
    fields = {"qubits", "ansatz", "blocks", "mapping_act", "scaling"}
    qt = QTConfig(**{k: conf[k] for k in fields},
                  mapping_hidden=[int(h) for h in conf["mapping_hidden"].split(",")])
    counts = QuantumTrain(toolkit_cnn(), qt).counts()
    assert (counts["generated"], counts["trainable_params"]) == (6690, trainable)
    assert conf["data"] == "../shared/data/mnist" and conf["model"] == "toolkit_cnn"
