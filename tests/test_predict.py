"""`qtrain predict` on the digits checkpoint: tensor files, images, JSON, errors, and no
PennyLane (nor Pillow, for tensor files) imported."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from torch import nn

import qtrain
from qtrain.cli import main
from qtrain.data import load_digits_split
from qtrain.predict import predict, read_inputs


def cli(capsys, *args) -> tuple[int, str, str]:
    """Run the real CLI entry in-process; return (exit code, stdout, stderr)."""
    capsys.readouterr()
    rc = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """Five digits test images saved as .npy, .npz (key x), .pt (one example) and a PNG."""
    from PIL import Image

    folder = tmp_path_factory.mktemp("inputs")
    _, test = load_digits_split(seed=0)
    x = test.tensors[0][:5]
    np.save(folder / "x.npy", x.numpy())
    np.savez(folder / "x.npz", x=x.numpy(), y=np.arange(5))
    torch.save(x[0].clone(), folder / "one.pt")
    Image.fromarray((x[1, 0].numpy() * 255).round().astype(np.uint8)).convert("RGB").resize(
        (32, 32), Image.NEAREST).save(folder / "digit.png")
    return folder, x


def expected(ckpt, x) -> tuple[list[int], list[float]]:
    with torch.no_grad():
        p = torch.softmax(qtrain.load(ckpt)(x), -1)
    return p.argmax(-1).tolist(), p.max(-1).values.tolist()


@pytest.mark.parametrize("name", ["x.npy", "x.npz", "one.pt"])
def test_predict_tensor_files(capsys, digits_run, inputs, name):
    """--json predictions for .npy/.npz/.pt equal qtrain.load's softmax on the same inputs."""
    folder, x = inputs
    x = x[:1] if name == "one.pt" else x
    rc, out, err = cli(capsys, "predict", digits_run.out, folder / name, "--json")
    assert rc == 0, err
    got = json.loads(out)["predictions"]
    classes, probs = expected(digits_run.out, x)
    assert [r["prediction"] for r in got] == classes
    assert [r["probability"] for r in got] == pytest.approx(probs, rel=1e-5)
    assert all(len(r["top"]) == 3 and r["top"][0][0] == r["prediction"] for r in got)


def test_predict_table(capsys, digits_run, inputs):
    """The default output has one line per example with its class and probability."""
    folder, x = inputs
    rc, out, err = cli(capsys, "predict", digits_run.out, folder / "x.npy", "--top", "2")
    assert rc == 0, err
    lines = out.strip().splitlines()
    classes, probs = expected(digits_run.out, x)
    assert len(lines) == 5
    assert lines[0].startswith(f"[0] class {classes[0]} ({probs[0]:.1%})")
    assert "next:" in lines[0] and lines[0].count("%") == 2


def test_predict_image(capsys, digits_run, inputs):
    """An RGB 32x32 PNG is made grey, resized to the recorded 8x8 input and predicted."""
    folder, x = inputs
    batch = read_inputs(folder / "digit.png", [1, 8, 8])
    assert batch.shape == (1, 1, 8, 8)
    torch.testing.assert_close(batch, x[1:2], atol=1 / 255, rtol=0)
    rc, out, err = cli(capsys, "predict", digits_run.out, folder / "digit.png", "--json")
    assert rc == 0, err
    assert json.loads(out)["predictions"][0]["prediction"] == expected(digits_run.out, batch)[0][0]
    inverted = read_inputs(folder / "digit.png", [1, 8, 8], invert=True)
    torch.testing.assert_close(inverted, 1 - batch)


def test_predict_errors(tmp_path, capsys, check_error, digits_run):
    """Wrong shapes, unknown suffixes and missing files are one-line errors naming the fix."""
    np.save(tmp_path / "bad.npy", np.zeros((3, 7), dtype=np.float32))
    rc, _, err = cli(capsys, "predict", digits_run.out, tmp_path / "bad.npy")
    check_error(rc, err, "(3, 7)", "(1, 8, 8)")
    (tmp_path / "x.txt").write_text("1 2 3")
    rc, _, err = cli(capsys, "predict", digits_run.out, tmp_path / "x.txt")
    check_error(rc, err, ".npy, .npz or .pt")
    rc, _, err = cli(capsys, "predict", digits_run.out, tmp_path / "absent.npy")
    check_error(rc, err, "does not exist")


def test_predict_regression_outputs():
    """A float-target model's outputs are printed as numbers, not classes."""
    net = nn.Linear(3, 2)
    x = torch.randn(4, 3)
    rows = predict(net, x, "regression")
    with torch.no_grad():
        assert rows[2]["output"] == pytest.approx(net(x)[2].tolist())
    assert "prediction" not in rows[0]


BLOCKED = textwrap.dedent("""
    import importlib.abc, io, json, sys, contextlib

    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("pennylane", "PIL"):
                raise ImportError(name + " is blocked in this test")
            return None

    sys.meta_path.insert(0, Block())
    from qtrain.cli import main

    ckpt, npy, png = sys.argv[1:]
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        rc_npy = main(["predict", ckpt, npy, "--json"])
    rc_png = main(["predict", ckpt, png])
    print(json.dumps({"rc_npy": rc_npy, "rc_png": rc_png, "npy": json.loads(out.getvalue()),
                      "pennylane": "pennylane" in sys.modules}))
""")


def test_predict_needs_no_pennylane(digits_run, inputs):
    """With PennyLane and Pillow unimportable, predict works on tensors and never imports
    PennyLane; an image then gets a one-line Pillow hint."""
    folder, x = inputs
    proc = subprocess.run([sys.executable, "-c", BLOCKED, str(digits_run.out),
                           str(folder / "x.npy"), str(folder / "digit.png")],
                          capture_output=True, text=True, timeout=300)
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["rc_npy"] == 0 and got["pennylane"] is False
    assert [r["prediction"] for r in got["npy"]["predictions"]] == expected(digits_run.out, x)[0]
    assert got["rc_png"] == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "needs Pillow: pip install pillow" in lines[0]
