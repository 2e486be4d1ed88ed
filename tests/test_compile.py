"""``--compile`` (the C++ ry kernel) and ``--compile-network`` (torch.compile of the network), run
by the real CLI against the eager path."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from qtrain import QTConfig, QuantumTrain, native_kernel
from qtrain.compiled import compile_network, use_compiled_kernel
from qtrain.models import digits_cnn

needs_compiler = pytest.mark.skipif(shutil.which("g++") is None or not native_kernel.available(),
                                    reason="the compiled paths need a C++ compiler (g++)")


def _losses(folder) -> list[float]:
    return [json.loads(line)["train_loss"] for line in (folder / "metrics.jsonl").read_text().splitlines()]


def _grads(compiled: bool, network: bool, precision: str = "exact") -> list[torch.Tensor]:
    torch.manual_seed(0)
    model = digits_cnn()
    x, y = torch.randn(16, 1, 8, 8), torch.randint(0, 10, (16,))
    torch.manual_seed(1)
    qt = QuantumTrain(model, QTConfig(qubits=11, blocks=2, circuit_precision=precision))
    if compiled:
        use_compiled_kernel(qt, torch.device("cpu"))
    forward = compile_network(qt, torch.device("cpu")) if network else qt
    torch.nn.functional.cross_entropy(forward(x), y).backward()
    return [p.grad.clone() for p in qt.parameters()]


@needs_compiler
@pytest.mark.parametrize("precision", ["exact", "fast"])
def test_compiled_kernel_step_matches_eager_gradients(precision):
    eager, compiled = _grads(False, False, precision), _grads(True, False, precision)
    assert all(g.abs().sum() > 0 for g in eager)
    # exact: the circuit to float64 rounding, but the mapping kernel (qtrain.mapping_kernel) rounds
    # the float32 post-processing, mapping and standardisation in its own order: ~1e-6 of each
    # gradient's scale (the output bias's, ~0 under standardisation, is rounding on both sides)
    rtol, scale = (2e-5 if precision == "exact" else 1e-3), max(float(e.abs().max()) for e in eager)
    for e, c in zip(eager, compiled, strict=True):
        top = float(e.abs().max())
        atol = rtol * top if top > 1e-3 * scale else 1e-5 * scale
        torch.testing.assert_close(c, e, rtol=rtol, atol=atol if precision == "exact" else max(atol, 1e-5))


@needs_compiler
# both raised from inside torch's own tracing, not by qtrain
@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")
@pytest.mark.filterwarnings("ignore:The .grad attribute of a Tensor that is not a leaf:UserWarning")
def test_compiled_network_step_matches_eager_gradients():
    for e, c in zip(_grads(False, False), _grads(True, True), strict=True):
        torch.testing.assert_close(c, e, rtol=1e-4, atol=1e-5)


@needs_compiler
def test_cli_compile_trains_like_eager(tmp_path, cli_subprocess, fast_args):
    runs = {}
    for name, extra in (("eager", []), ("compile", ["--compile"]),
                        ("both", ["--compile", "--compile-network"])):
        out = tmp_path / name
        proc = cli_subprocess("compress", *fast_args, "--json", "--out", str(out), *extra)
        assert proc.returncode == 0, proc.stderr
        runs[name] = out
    train = json.loads((runs["both"] / "qtrain.json").read_text())["config"]["_data"]["train"]["_data"]
    assert train["compile"] is True and train["compile_network"] is True
    eager = _losses(runs["eager"])
    assert len(eager) == 2
    # the kernel computes the float64 circuit to rounding: the same training
    assert _losses(runs["compile"]) == pytest.approx(eager, rel=1e-6)
    # Inductor reorders the network's floating-point sums
    assert _losses(runs["both"]) == pytest.approx(eager, rel=1e-4)


def test_cli_compile_without_compiler_is_one_line(tmp_path, cli_subprocess, check_error, fast_args,
                                                  monkeypatch):
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-g++"))
    monkeypatch.setenv("QTRAIN_KERNEL_DIR", str(tmp_path / "kernels"))  # nothing cached there
    for flag, needle in (("--compile", "drop --compile"), ("--compile-network", "drop --compile-network")):
        proc = cli_subprocess("compress", *fast_args, "--out", str(tmp_path / "run"), flag)
        check_error(proc.returncode, proc.stderr, flag, "C++ compiler", needle)
        assert not (tmp_path / "run" / "compressed.safetensors").exists()


def test_cli_compile_with_u3_is_one_line(tmp_path, cli_subprocess, check_error, fast_args):
    proc = cli_subprocess("compress", *fast_args, "--ansatz", "u3", "--out", str(tmp_path / "run"),
                          "--compile")
    check_error(proc.returncode, proc.stderr, "--compile", "ry ansatz only", "drop --compile")
    assert not (tmp_path / "run").exists()


def test_failed_build_is_one_line_and_leaves_nothing(tmp_path, monkeypatch):
    """A compiler that fails: a one-line error, and no partial library in the cache."""
    fake = tmp_path / "bad-c++"
    fake.write_text("#!/bin/sh\necho 'fatal error: no space left' >&2\nexit 1\n")
    fake.chmod(0o755)
    monkeypatch.setenv("CXX", str(fake))
    monkeypatch.setenv("QTRAIN_KERNEL_DIR", str(tmp_path / "kernels"))
    monkeypatch.setattr(native_kernel, "_lib", None)
    with pytest.raises(native_kernel.QTrainError, match="failed: fatal error: no space left") as info:
        native_kernel.load()
    assert "\n" not in str(info.value)
    assert list((tmp_path / "kernels").iterdir()) == []
