"""``--compile``: the training step through torch.compile, run by the real CLI against eager."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from qtrain import QTConfig, QuantumTrain
from qtrain.compiled import compile_step
from qtrain.models import digits_cnn

needs_compiler = pytest.mark.skipif(shutil.which("g++") is None,
                                    reason="torch.compile on the CPU needs a C++ compiler (g++)")


def _losses(folder) -> list[float]:
    return [json.loads(line)["train_loss"] for line in (folder / "metrics.jsonl").read_text().splitlines()]


@needs_compiler
# both raised from inside torch's own tracing, not by qtrain
@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")
@pytest.mark.filterwarnings("ignore:The .grad attribute of a Tensor that is not a leaf:UserWarning")
def test_compiled_step_matches_eager_gradients():
    torch.manual_seed(0)
    model = digits_cnn()
    x, y = torch.randn(16, 1, 8, 8), torch.randint(0, 10, (16,))
    grads = []
    for compiled in (False, True):
        torch.manual_seed(1)
        qt = QuantumTrain(model, QTConfig(qubits=11, blocks=2))
        forward = compile_step(qt, torch.device("cpu")) if compiled else qt
        torch.nn.functional.cross_entropy(forward(x), y).backward()
        grads.append([p.grad.clone() for p in qt.parameters()])
    assert all(g.abs().sum() > 0 for g in grads[0])
    for eager, comp in zip(*grads, strict=True):
        torch.testing.assert_close(comp, eager, rtol=1e-4, atol=1e-5)


@needs_compiler
def test_cli_compile_trains_like_eager(tmp_path, cli_subprocess, fast_args):
    runs = {}
    for name, extra in (("eager", []), ("compiled", ["--compile"])):
        out = tmp_path / name
        proc = cli_subprocess("compress", *fast_args, "--json", "--out", str(out), *extra)
        assert proc.returncode == 0, proc.stderr
        runs[name] = out
    rec = json.loads((runs["compiled"] / "qtrain.json").read_text())
    assert rec["config"]["_data"]["train"]["_data"]["compile"] is True
    eager, compiled = _losses(runs["eager"]), _losses(runs["compiled"])
    assert len(compiled) == 2
    # same seed, same batches: only Inductor's floating-point order differs
    assert compiled == pytest.approx(eager, rel=1e-4)


def test_cli_compile_without_compiler_is_one_line(tmp_path, cli_subprocess, check_error, fast_args,
                                                  monkeypatch):
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-g++"))
    proc = cli_subprocess("compress", *fast_args, "--out", str(tmp_path / "run"), "--compile")
    check_error(proc.returncode, proc.stderr, "--compile", "C++ compiler", "drop --compile")
    assert not (tmp_path / "run" / "compressed.safetensors").exists()
