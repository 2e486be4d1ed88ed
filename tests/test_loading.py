"""Loading a checkpoint for inference: ``qtrain.load``, ``qtrain.regenerate``, no PennyLane,
architecture checks and corrupt files."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap

import pytest
import torch
from safetensors.torch import load_file
from torch.func import functional_call

import qtrain
from qtrain import QTrainError
from qtrain.data import load_digits_split
from qtrain.models import digits_cnn, mlp, toolkit_cnn


def test_load_gives_recorded_accuracy(digits_run):
    """qtrain.load gives an eval-mode module scoring exactly the recorded test accuracy."""
    model = qtrain.load(digits_run.out)
    assert isinstance(model, torch.nn.Module)
    assert not model.training and not any(m.training for m in model.modules())
    _, test = load_digits_split(seed=0)
    x, y = test.tensors
    with torch.no_grad():
        logits = model(x)
    pred = logits.argmax(-1)
    assert len(set(pred.tolist())) > 1  # not a constant predictor, so accuracy identifies it
    acc = int((pred == y).sum()) / len(y)
    assert acc == pytest.approx(digits_run.record["metrics"]["test_accuracy"], abs=1e-12)
    # and those outputs are the weights of model.safetensors, run through a fresh digits_cnn
    state = load_file(str(digits_run.out / "model.safetensors"))
    with torch.no_grad():
        ref = functional_call(digits_cnn().eval(), state, (x,))
    torch.testing.assert_close(logits, ref)


def test_regenerate_matches_model_file(digits_run):
    """qtrain.regenerate rebuilds every tensor of model.safetensors to within 1e-6."""
    regen = qtrain.regenerate(digits_run.out)
    saved = load_file(str(digits_run.out / "model.safetensors"))
    assert set(regen) == set(saved)
    for key, value in saved.items():
        torch.testing.assert_close(regen[key], value, atol=1e-6, rtol=0, msg=key)


BLOCK_PENNYLANE = textwrap.dedent("""
    import importlib.abc, json, sys

    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "pennylane" or name.startswith("pennylane."):
                raise ImportError("pennylane is blocked in this test")
            return None

    sys.meta_path.insert(0, Block())
    try:
        import pennylane  # noqa: F401
        blocked = False
    except ImportError:
        blocked = True

    import qtrain
    import torch

    folder = sys.argv[1]
    model = qtrain.load(folder)
    out = model(torch.zeros(2, 1, 8, 8))
    state = qtrain.regenerate(folder)
    print(json.dumps({"blocked": blocked, "shape": list(out.shape), "keys": len(state),
                      "pennylane_loaded": "pennylane" in sys.modules}))
""")


def test_load_and_regenerate_import_no_pennylane(digits_run):
    """With PennyLane unimportable, load and regenerate work and never import it."""
    proc = subprocess.run([sys.executable, "-c", BLOCK_PENNYLANE, str(digits_run.out)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["blocked"] is True  # the blocker really works
    assert got["shape"] == [2, 10]
    assert got["keys"] == len(load_file(str(digits_run.out / "model.safetensors")))
    assert got["pennylane_loaded"] is False


def test_load_into_other_architecture(digits_run):
    """A digits_cnn checkpoint loaded into another network is a one-line QTrainError."""
    with pytest.raises(QTrainError, match="does not match this architecture") as info:
        qtrain.load(digits_run.out, model=mlp())
    assert "\n" not in str(info.value)
    for other in (toolkit_cnn(), mlp()):
        with pytest.raises(QTrainError, match="does not match this architecture"):
            qtrain.regenerate(digits_run.out, model=other)


def test_regenerate_refuses_same_sized_other_architecture(digits_run):
    """regenerate refuses another network with as many tensors that fits the circuit."""
    # 6 tensors, M = 1,482 <= 2^11: this used to load and return weights for the wrong network
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 16), torch.nn.ReLU(),
                              torch.nn.Linear(16, 16), torch.nn.ReLU(), torch.nn.Linear(16, 10))
    with pytest.raises(QTrainError, match="does not match this architecture"):
        qtrain.regenerate(digits_run.out, model=net)


def test_load_with_wrong_arch_name(digits_run):
    """Naming a different --arch than the checkpoint's is refused."""
    with pytest.raises(QTrainError, match="trained on --arch 'digits_cnn', not 'mlp'"):
        qtrain.load(digits_run.out, arch="mlp")


def test_file_arch_needs_consent(file_arch_run):
    """A file-spec arch is rebuilt only when named again (arch=) or with trust_arch=True."""
    with pytest.raises(QTrainError, match="imports its code"):
        qtrain.load(file_arch_run.out)
    with pytest.raises(QTrainError, match="imports its code"):
        qtrain.regenerate(file_arch_run.out)
    by_spec = qtrain.load(file_arch_run.out, arch=file_arch_run.spec)
    trusted = qtrain.load(file_arch_run.out, trust_arch=True)
    assert type(by_spec).__name__ == "TinyNet" and by_spec.body[1].out_features == 8
    x = torch.rand(3, 1, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(by_spec(x), trusted(x))
    regen = qtrain.regenerate(file_arch_run.out, trust_arch=True)
    saved = load_file(str(file_arch_run.out / "model.safetensors"))
    for key, value in saved.items():
        torch.testing.assert_close(regen[key], value, atol=1e-6, rtol=0, msg=key)


def test_refused_file_arch_runs_no_code(tmp_path, capsys, fast_args, tiny_net_file):
    """A refused file-spec load executes none of the architecture file's code."""
    from qtrain.cli import main

    log = tmp_path / "imports.log"
    arch = tmp_path / "logged_net.py"
    logger = f"with open({str(log)!r}, 'a') as f:\n    f.write('imported\\n')\n"
    arch.write_text(logger + tiny_net_file.read_text())
    rc = main(["compress", "--arch", f"{arch}:TinyNet", *fast_args, "--out", str(tmp_path / "run")])
    assert rc == 0, capsys.readouterr().err
    assert log.read_text().count("imported") == 1
    for call in (qtrain.load, qtrain.regenerate):
        with pytest.raises(QTrainError, match="imports its code"):
            call(tmp_path / "run")
    assert log.read_text().count("imported") == 1
    qtrain.load(tmp_path / "run", trust_arch=True)
    assert log.read_text().count("imported") == 2


def test_pickled_run_needs_a_model(tmp_path):
    """A checkpoint of an in-memory module cannot be rebuilt by name: load asks for model=."""
    net = mlp(hidden=4)
    result = qtrain.compress(net, "digits", qtrain.CompressConfig(
        qt=qtrain.QTConfig(blocks=1), train=qtrain.TrainConfig(epochs=1, quiet=True)),
        tmp_path / "run")
    with pytest.raises(QTrainError, match=r"pass the network instance"):
        qtrain.load(result.out)
    loaded = qtrain.load(result.out, model=mlp(hidden=4))
    x = torch.rand(5, 1, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), result.model(x))


@pytest.fixture
def broken_copy(tmp_path, digits_run):
    """A writable copy of the finished digits run."""
    out = tmp_path / "ckpt"
    shutil.copytree(digits_run.out, out)
    return out


@pytest.mark.parametrize("damage", [
    b"",                          # empty
    b"not a safetensors file",    # garbage
    "truncate",                   # the first 100 bytes of the real file
])
@pytest.mark.parametrize("name", ["model.safetensors", "compressed.safetensors"])
def test_corrupt_safetensors(broken_copy, name, damage):
    """A corrupt or truncated safetensors file is a QTrainError from load and regenerate."""
    path = broken_copy / name
    path.write_bytes(path.read_bytes()[:100] if damage == "truncate" else damage)
    call = qtrain.load if name == "model.safetensors" else qtrain.regenerate
    with pytest.raises(QTrainError, match="corrupt or truncated"):
        call(broken_copy)


@pytest.mark.parametrize("text", [b"{\"format\": \"qtrain\", ", b"\xff\xfe garbage", b"[1, 2]",
                                  b"{\"format\": \"other\"}"])
def test_corrupt_record(broken_copy, text):
    """A corrupt or foreign qtrain.json is a QTrainError, not a crash."""
    (broken_copy / "qtrain.json").write_bytes(text)
    for call in (qtrain.load, qtrain.regenerate):
        with pytest.raises(QTrainError, match="qtrain.json"):
            call(broken_copy)


def test_missing_files(broken_copy, tmp_path):
    """A folder without qtrain.json, or without model.safetensors, is a QTrainError."""
    with pytest.raises(QTrainError, match="has no qtrain.json"):
        qtrain.load(tmp_path / "nothing")
    (broken_copy / "model.safetensors").unlink()
    with pytest.raises(QTrainError, match="model.safetensors is missing"):
        qtrain.load(broken_copy)


def test_newer_format_version_refused(broken_copy):
    """A qtrain.json from a newer format version asks the user to upgrade."""
    path = broken_copy / "qtrain.json"
    rec = json.loads(path.read_text())
    rec["format_version"] = 99
    path.write_text(json.dumps(rec))
    with pytest.raises(QTrainError, match="upgrade qtrain"):
        qtrain.load(broken_copy)
