"""Gradient methods and shots (issue 5): parameter-shift, SPSA and finite differences against
backprop, finite-shot sampling against exact probabilities, native against PennyLane, and the
``--grad``/``--shots`` command line."""

from __future__ import annotations

import json
import math

import pytest
import torch

from qtrain import QTConfig, QTrainError, QuantumTrain
from qtrain import gradients as gr
from qtrain.circuits import Circuit
from qtrain.cli import main
from qtrain.data import load_digits_split
from qtrain.gradients import NativeEstimator, PennyLaneEstimator, shift_rules, spsa_gain
from qtrain.shots import sample_counts, sample_probs
from qtrain.simulate import NativeSimulator

ANSATZE = ("ry", "u3")
WIDTHS = (4, 7, 10)


def _angles(circuit: Circuit, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (2 * torch.rand(circuit.num_angles, generator=g, dtype=torch.float64) - 1) * math.pi


def _upstream(n: int, seed: int) -> torch.Tensor:
    return torch.randn(2**n, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


def _vjp(probs, angles: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """d(weights . probs(angles)) / d angles."""
    a = angles.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad((probs(a) * weights).sum(), a)
    return grad


def _backprop(circuit: Circuit, angles, weights) -> torch.Tensor:
    return _vjp(NativeSimulator(circuit).probs, angles, weights)


def _estimator(circuit: Circuit, seed: int = 0, **cfg) -> NativeEstimator:
    return NativeEstimator(circuit, QTConfig(**cfg), NativeSimulator(circuit), seed)


def _cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(a, b, dim=0))


# ----------------------------------------------------------------------------- exact methods


@pytest.mark.parametrize("ansatz", ANSATZE)
@pytest.mark.parametrize("n", WIDTHS)
def test_parameter_shift_equals_backprop(ansatz, n):
    """Parameter-shift gradients (four-term rule on CU3's theta) equal backprop's to 1e-8 in float64."""
    c = Circuit(n, 2, ansatz)
    angles, w = _angles(c, n), _upstream(n, n + 1)
    est = _estimator(c, grad="parameter-shift")
    grad = _vjp(est, angles, w)
    ref = _backprop(c, angles, w)
    assert grad.dtype == torch.float64
    torch.testing.assert_close(grad, ref, rtol=0, atol=1e-8)
    assert ref.abs().max() > 1e-2  # not a comparison of two zero gradients
    # one forward call, then every shifted circuit in one batched call
    assert est.calls == 2
    assert est.executions == 1 + shift_rules(c)[0].numel()


@pytest.mark.parametrize("ansatz", ANSATZE)
@pytest.mark.parametrize("n", WIDTHS)
def test_finite_diff_equals_backprop(ansatz, n):
    """Central finite differences equal backprop to 1e-5, from 2P circuits in one batched call."""
    c = Circuit(n, 2, ansatz)
    angles, w = _angles(c, 2 * n), _upstream(n, 2 * n + 1)
    est = _estimator(c, grad="finite-diff")
    torch.testing.assert_close(_vjp(est, angles, w), _backprop(c, angles, w), rtol=0, atol=1e-5)
    assert est.calls == 2 and est.executions == 1 + 2 * c.num_angles


def test_shift_rule_counts():
    """ry takes 2 circuits per angle; u3 takes 2 per U3 and CU3 phase angle and 4 per CU3 theta."""
    assert shift_rules(Circuit(5, 3, "ry"))[0].numel() == 2 * 15
    index, shift, coeff = shift_rules(Circuit(5, 3, "u3"))
    assert index.numel() == 14 * 5 * 3
    per_angle = torch.bincount(index).reshape(3, 2, 5, 3)
    assert (per_angle[:, 0] == 2).all() and (per_angle[:, 1, :, 1:] == 2).all()
    assert (per_angle[:, 1, :, 0] == 4).all()
    assert set(shift.abs().tolist()) == {math.pi / 2, 3 * math.pi / 2}
    # each rule differentiates sin: sum of coeff * sin(x + shift) equals cos(x)
    x = 0.37
    per = torch.zeros(index.max() + 1, dtype=torch.float64).index_add_(0, index, coeff * torch.sin(x + shift))
    torch.testing.assert_close(per, torch.full_like(per, math.cos(x)), rtol=0, atol=1e-12)


def test_large_batches_split_into_few_calls(monkeypatch):
    """Past MAX_AMPLITUDES the shifted circuits go in several calls, with the same gradient."""
    c = Circuit(6, 2, "u3")
    angles, w = _angles(c, 5), _upstream(6, 6)
    whole = _vjp(_estimator(c, grad="parameter-shift"), angles, w)
    monkeypatch.setattr(gr, "MAX_AMPLITUDES", 64 * 50)
    est = _estimator(c, grad="parameter-shift")
    torch.testing.assert_close(_vjp(est, angles, w), whole, rtol=0, atol=1e-12)
    rows = shift_rules(c)[0].numel()
    assert est.calls == 1 + math.ceil(rows / 50)


@pytest.mark.parametrize("grad", ["parameter-shift", "finite-diff", "spsa"])
def test_quantum_train_gradients_match_backprop(grad):
    """Through QuantumTrain (features, mapping, scaling), only the angles' gradient changes with --grad."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.Tanh(), torch.nn.Linear(5, 3))
    x = torch.randn(8, 6, dtype=torch.float64)
    y = torch.randint(0, 3, (8,))
    grads = {}
    for method in ("backprop", grad):
        torch.manual_seed(1)  # the same angles and mapping for both
        qt = QuantumTrain(model, QTConfig(blocks=2, ansatz="u3", grad=method, spsa_samples=2000)).double()
        torch.nn.functional.cross_entropy(qt(x), y).backward()
        grads[method] = {k: p.grad.clone() for k, p in qt.named_parameters()}
    angles, ref = grads[grad].pop("generator.angles"), grads["backprop"].pop("generator.angles")
    assert grads[grad].keys() == grads["backprop"].keys() and len(grads[grad]) > 2
    for name, expected in grads["backprop"].items():  # the forward is the same, so these are too
        torch.testing.assert_close(grads[grad][name], expected, rtol=0, atol=1e-10)
    if grad == "spsa":
        assert _cosine(angles, ref) > 0.9
    else:
        torch.testing.assert_close(angles, ref, rtol=0, atol=1e-8 if grad == "parameter-shift" else 1e-5)
    assert ref.abs().max() > 1e-4


# ----------------------------------------------------------------------------- SPSA


@pytest.mark.parametrize("ansatz", ANSATZE)
@pytest.mark.parametrize("n", WIDTHS)
def test_spsa_mean_points_along_the_true_gradient(ansatz, n):
    """The mean of many SPSA estimates (10 steps x P perturbations) has cosine > 0.9 with backprop."""
    c = Circuit(n, 1 if ansatz == "u3" else 2, ansatz)
    angles, w = _angles(c, 3 * n), _upstream(n, 3 * n + 1)
    est = _estimator(c, grad="spsa", spsa_samples=c.num_angles)
    estimates = torch.stack([_vjp(est, angles, w) for _ in range(10)])
    ref = _backprop(c, angles, w)
    assert _cosine(estimates.mean(0), ref) > 0.9
    assert est.calls == 20  # per step: the forward, then all 2S perturbed circuits in one call
    assert est.executions == 10 * (1 + 2 * c.num_angles)
    # one single-perturbation estimate is far noisier than the mean
    one = _estimator(c, grad="spsa")
    assert _cosine(_vjp(one, angles, w), ref) < _cosine(estimates.mean(0), ref)


def test_spsa_gain_sequence_and_perturbations():
    """c_k = c / (k+1)^0.101 at step k; perturbations are +-1 and repeat with the seed."""
    assert spsa_gain(0.1, 0.101, 0) == pytest.approx(0.1)
    assert spsa_gain(0.2, 0.101, 99) == pytest.approx(0.2 / 100**0.101)
    c = Circuit(4, 2)
    est = _estimator(c, seed=7, grad="spsa", spsa_samples=3, spsa_c=0.3)
    plans = [est._spsa_plan() for _ in range(1)]
    est.step = 9
    c9, delta = est._spsa_plan()
    assert plans[0][0] == pytest.approx(0.3) and c9 == pytest.approx(0.3 / 10**0.101)
    assert delta.shape == (3, c.num_angles) and set(delta.unique().tolist()) == {-1.0, 1.0}
    again = _estimator(c, seed=7, grad="spsa", spsa_samples=3)
    torch.testing.assert_close(again._spsa_plan()[1], plans[0][1], rtol=0, atol=0)
    other = _estimator(c, seed=8, grad="spsa", spsa_samples=3)
    assert not torch.equal(other._spsa_plan()[1], plans[0][1])


def test_spsa_step_advances_only_on_differentiable_forwards():
    """Training forwards advance SPSA's k; evaluation under no_grad does not and runs one circuit."""
    c = Circuit(4, 1)
    est = _estimator(c, grad="spsa")
    angles = _angles(c, 0).requires_grad_(True)
    est(angles).sum().backward()
    with torch.no_grad():
        est(angles)
    assert est.step == 1 and est.executions == 1 + 2 + 1


# ----------------------------------------------------------------------------- shots


@pytest.mark.parametrize("ansatz", ANSATZE)
@pytest.mark.parametrize("n", WIDTHS)
def test_shot_estimates_converge_at_inverse_sqrt_rate(ansatz, n):
    """The RMS error of N-shot frequencies is sqrt((1 - sum p^2)/N): 100x the shots, 10x less error."""
    c = Circuit(n, 2, ansatz)
    p = NativeSimulator(c).probs(_angles(c, 4 * n))
    gen = torch.Generator().manual_seed(n)
    rms = {}
    for shots in (100, 10_000, 1_000_000):
        err = sample_probs(p.expand(40, -1), shots, gen) - p
        rms[shots] = float(err.pow(2).sum(-1).mean().sqrt())
        theory = math.sqrt((1 - float(p.pow(2).sum())) / shots)
        assert rms[shots] == pytest.approx(theory, rel=0.25)
    assert 7 < rms[100] / rms[10_000] < 14
    assert 7 < rms[10_000] / rms[1_000_000] < 14


def test_sampled_counts_are_multinomial_and_repeatable():
    """Counts are whole, non-negative, sum to N, unbiased, with binomial variance; a seed repeats them."""
    p = torch.tensor([0.5, 0.25, 0.125, 0.0625, 0.0625, 0.0, 0.0, 0.0], dtype=torch.float64)
    counts = sample_counts(p.expand(20_000, -1), 50, torch.Generator().manual_seed(0))
    assert (counts == counts.round()).all() and (counts >= 0).all()
    assert (counts.sum(-1) == 50).all() and (counts[:, 5:] == 0).all()
    torch.testing.assert_close(counts.mean(0), 50 * p, rtol=0, atol=0.1)
    torch.testing.assert_close(counts.var(0), 50 * p * (1 - p), rtol=0.05, atol=0.01)
    a = sample_counts(p, 1000, torch.Generator().manual_seed(3))
    assert torch.equal(a, sample_counts(p, 1000, torch.Generator().manual_seed(3)))
    assert not torch.equal(a, sample_counts(p, 1000, torch.Generator().manual_seed(4)))


@pytest.mark.parametrize("ansatz", ANSATZE)
def test_parameter_shift_under_shots_is_unbiased(ansatz):
    """Sampled shifted circuits give gradients that average to the exact one (cosine > 0.99)."""
    c = Circuit(5, 2, ansatz)
    angles, w = _angles(c, 9), _upstream(5, 10)
    est = _estimator(c, grad="parameter-shift", shots=10_000)
    mean = torch.stack([_vjp(est, angles, w) for _ in range(10)]).mean(0)
    ref = _backprop(c, angles, w)
    assert _cosine(mean, ref) > 0.99
    assert est.shots_used == est.executions * 10_000


@pytest.mark.parametrize("grad,why", [("backprop", "backprop cannot differentiate a sample"),
                                      ("finite-diff", "mostly shot noise")])
def test_shots_need_a_sampling_gradient(grad, why):
    """--shots with backprop or finite-diff is refused with a message naming the fix."""
    with pytest.raises(QTrainError, match=f"{why}.*--grad parameter-shift or --grad spsa"):
        QTConfig(grad=grad, shots=100)


def test_bad_gradient_settings():
    """Unknown --grad, --shots 0 and --spsa-samples 0 are refused."""
    with pytest.raises(QTrainError, match="unknown --grad 'adjoint'"):
        QTConfig(grad="adjoint")
    with pytest.raises(QTrainError, match="--shots 0 must be at least 1"):
        QTConfig(grad="spsa", shots=0)
    with pytest.raises(QTrainError, match="--spsa-samples 0"):
        QTConfig(grad="spsa", spsa_samples=0)


# ----------------------------------------------------------------------------- PennyLane


def _pennylane(circuit: Circuit, seed: int = 0, **cfg) -> PennyLaneEstimator:
    return PennyLaneEstimator(circuit, QTConfig(backend="pennylane", **cfg), seed)


@pytest.mark.parametrize("ansatz", ANSATZE)
@pytest.mark.parametrize("n", WIDTHS)
@pytest.mark.parametrize("grad", ["parameter-shift", "spsa"])
def test_native_and_pennylane_agree(ansatz, n, grad):
    """PennyLane's own parameter-shift and SPSA equal the native ones, circuit count included."""
    c = Circuit(n, 1, ansatz)
    angles, w = _angles(c, 5 * n), _upstream(n, 5 * n + 1)
    nat = _estimator(c, seed=3, grad=grad, spsa_samples=2)
    pl = _pennylane(c, seed=3, grad=grad, spsa_samples=2)
    for _ in range(2):  # two steps: SPSA's c_k changes between them
        torch.testing.assert_close(_vjp(pl, angles, w), _vjp(nat, angles, w), rtol=0, atol=1e-8)
    assert pl.executions == nat.executions > 2


def test_pennylane_finite_diff_and_lightning():
    """PennyLane's central finite-diff matches native; lightning.qubit's parameter-shift too."""
    c = Circuit(4, 2, "u3")
    angles, w = _angles(c, 1), _upstream(4, 2)
    torch.testing.assert_close(_vjp(_pennylane(c, grad="finite-diff"), angles, w),
                               _vjp(_estimator(c, grad="finite-diff"), angles, w), rtol=0, atol=1e-8)
    pytest.importorskip("pennylane_lightning")
    torch.testing.assert_close(_vjp(_pennylane(c, grad="parameter-shift", pl_device="lightning.qubit"),
                                    angles, w), _backprop(c, angles, w), rtol=0, atol=1e-8)


@pytest.mark.parametrize("ansatz", ANSATZE)
def test_pennylane_shots_converge_and_repeat(ansatz):
    """PennyLane's N-shot probabilities are within the shot-noise scale of exact, and a seed repeats them."""
    c = Circuit(5, 2, ansatz)
    angles = _angles(c, 11)
    p = NativeSimulator(c).probs(angles)
    for shots in (100, 10_000):
        pl = _pennylane(c, seed=1, grad="parameter-shift", shots=shots)
        err = torch.stack([pl(angles) - p for _ in range(20)])
        theory = math.sqrt((1 - float(p.pow(2).sum())) / shots)
        assert float(err.pow(2).sum(-1).mean().sqrt()) == pytest.approx(theory, rel=0.3)
        assert pl.executions == 20 and pl.shots_used == 20 * shots
    first = _pennylane(c, seed=5, grad="spsa", shots=100)(angles)
    assert torch.equal(first, _pennylane(c, seed=5, grad="spsa", shots=100)(angles))


def test_pennylane_device_options_pass_through():
    """--pl-option values reach qml.device; a bad one is a one-line QTrainError naming the flag."""
    pytest.importorskip("pennylane_lightning")
    c = Circuit(3, 1)
    pl = _pennylane(c, grad="parameter-shift", pl_device="lightning.qubit", pl_options={"batch_obs": True})
    assert pl.simulator.device._batch_obs is True
    assert pl(_angles(c, 0)).shape == (8,)
    with pytest.raises(QTrainError, match="could not be created.*--pl-option"):
        _pennylane(c, grad="parameter-shift", pl_options={"no_such_option": 1})


# ----------------------------------------------------------------------------- command line


def _cli(capsys, *args) -> tuple[int, str, str]:
    capsys.readouterr()
    rc = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return rc, out, err


def _losses(folder) -> list[tuple[float, float]]:
    rows = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    return [(r["train_loss"], r["test_loss"]) for r in rows]


@pytest.mark.slow
def test_cli_parameter_shift_reproduces_backprop_losses(tmp_path, capsys):
    """On digits, 2 epochs, one seed: --grad parameter-shift gives backprop's metrics.jsonl losses to 1e-5."""
    common = ["compress", "--epochs", "2", "--blocks", "2", "--quiet", "--seed", "3"]
    runs = {}
    for grad in ("backprop", "parameter-shift"):
        rc, _, err = _cli(capsys, *common, "--grad", grad, "--out", tmp_path / grad)
        assert rc == 0, err
        runs[grad] = _losses(tmp_path / grad)
    assert len(runs["backprop"]) == 2
    for (bt, bv), (pt, pv) in zip(runs["backprop"], runs["parameter-shift"], strict=True):
        assert abs(bt - pt) < 1e-5 and abs(bv - pv) < 1e-5
    # the losses moved, so the comparison covers training, not only initialisation
    assert abs(runs["backprop"][1][0] - runs["backprop"][0][0]) > 1e-3
    rec = json.loads((tmp_path / "parameter-shift" / "qtrain.json").read_text())
    steps = math.ceil(rec["data"]["train_size"] / 64)
    # check_fit + per step (forward + 2P shifted) + one evaluation per epoch + the final weights
    assert rec["metrics"]["circuit_executions"] == 1 + 2 * steps * (1 + 2 * 22) + 2 + 1
    assert rec["config"]["_data"]["qt"]["_data"]["grad"] == "parameter-shift"


def test_cli_spsa_with_shots_is_recorded_and_repeatable(tmp_path, capsys):
    """--grad spsa --shots 100 runs, repeats exactly with the seed, and records grad, shots and executions."""
    args = ["compress", "--epochs", "1", "--blocks", "1", "--chunk", "16", "--quiet", "--json",
            "--grad", "spsa", "--shots", "100", "--spsa-samples", "2", "--spsa-c", "0.2"]
    rc, out, err = _cli(capsys, *args, "--out", tmp_path / "a")
    assert rc == 0, err
    rc, _, err = _cli(capsys, *args, "--out", tmp_path / "b")
    assert rc == 0, err
    assert _losses(tmp_path / "a") == _losses(tmp_path / "b")
    summary = json.loads(out.strip().splitlines()[-1])
    assert (summary["grad"], summary["shots"], summary["qubits"]) == ("spsa", 100, 7)
    rec = json.loads((tmp_path / "a" / "qtrain.json").read_text())
    qt = rec["config"]["_data"]["qt"]["_data"]
    assert (qt["grad"], qt["shots"], qt["spsa_samples"], qt["spsa_c"]) == ("spsa", 100, 2, 0.2)
    m = rec["metrics"]
    steps = math.ceil(rec["data"]["train_size"] / 64)
    assert m["circuit_executions"] == 1 + steps * (1 + 2 * 2) + 1 + 1 == summary["circuit_executions"]
    assert m["shots_total"] == 100 * m["circuit_executions"]
    # the saved model is the very sample of weights that was evaluated
    import qtrain

    _, test = load_digits_split(seed=0)
    x, y = test.tensors
    with torch.no_grad():
        acc = float((qtrain.load(tmp_path / "a")(x).argmax(1) == y).float().mean())
    assert acc == pytest.approx(m["test_accuracy"], abs=1e-6)  # one test example is 1/360
    rc, info, _ = _cli(capsys, "info", tmp_path / "a")
    assert rc == 0 and "gradient       spsa, 100 shots" in info
    assert f"{m['circuit_executions']:,} circuit executions" in info


def test_cli_pennylane_parameter_shift(tmp_path, capsys):
    """--backend pennylane --grad parameter-shift --shots trains through PennyLane and counts its circuits."""
    rc, _, err = _cli(capsys, "compress", "--epochs", "1", "--blocks", "1", "--chunk", "16", "--quiet",
                      "--backend", "pennylane", "--grad", "parameter-shift", "--shots", "1000",
                      "--batch-size", "256", "--out", tmp_path / "pl")
    assert rc == 0, err
    rec = json.loads((tmp_path / "pl" / "qtrain.json").read_text())
    steps = math.ceil(rec["data"]["train_size"] / 256)
    assert rec["metrics"]["circuit_executions"] == 1 + steps * (1 + 2 * 7) + 1 + 1
    assert rec["metrics"]["shots_total"] == 1000 * rec["metrics"]["circuit_executions"]


@pytest.mark.parametrize("flags,needles", [
    (["--shots", "100"], ["--shots cannot be used with --grad backprop", "--grad parameter-shift"]),
    (["--grad", "finite-diff", "--shots", "10"], ["--grad finite-diff", "--grad spsa"]),
    (["--grad", "adjoint"], ["unknown --grad 'adjoint'"]),
    (["--backend", "pennylane", "--pl-option", "oops"], ["not key=value"]),
])
def test_cli_gradient_errors_are_one_line(tmp_path, capsys, check_error, flags, needles):
    """Bad --grad/--shots/--pl-option combinations fail with one line naming the fix."""
    rc, _, err = _cli(capsys, "compress", "--epochs", "1", "--quiet", *flags, "--out", tmp_path / "x")
    check_error(rc, err, *needles)
