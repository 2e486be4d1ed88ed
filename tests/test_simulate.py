"""The native statevector simulator, checked against PennyLane and against first principles."""

from __future__ import annotations

import math

import numpy as np
import pennylane as qml
import pytest
import torch

from qtrain import QTConfig, QTrainError, QuantumTrain
from qtrain.circuits import Circuit, ring_pairs
from qtrain.pennylane_backend import PennyLaneSimulator
from qtrain.simulate import NativeSimulator, group_size, qubit_groups, ring_permutation

ANSATZE = ("ry", "u3")


def _angles(circuit: Circuit, *batch: int, seed: int = 0, dtype=torch.float64) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    u = torch.rand(*batch, circuit.num_angles, generator=g, dtype=torch.float64)
    return ((2 * u - 1) * math.pi).to(dtype)


def _probs_and_grad(sim, angles: torch.Tensor, weights: torch.Tensor):
    a = angles.clone().requires_grad_(True)
    p = sim.probs(a)
    (grad,) = torch.autograd.grad((p * weights).sum(), a)
    return p.detach(), grad


@pytest.mark.parametrize("ansatz", ANSATZE)
@pytest.mark.parametrize("n", [2, 3, 5, 7])
@pytest.mark.parametrize("blocks", [1, 3])
def test_native_matches_pennylane_probs_and_grads(ansatz, n, blocks):
    """Native probabilities and their angle gradients equal PennyLane's default.qubit in float64."""
    c = Circuit(n, blocks, ansatz)
    angles = _angles(c, seed=n * 10 + blocks)
    w = torch.randn(2**n, dtype=torch.float64, generator=torch.Generator().manual_seed(n))
    p_nat, g_nat = _probs_and_grad(NativeSimulator(c), angles, w)
    pl = PennyLaneSimulator(c, "default.qubit", diff_method="backprop")
    p_pl, g_pl = _probs_and_grad(pl, angles, w)
    assert p_nat.dtype == torch.float64 and p_nat.shape == (2**n,)
    torch.testing.assert_close(p_nat, p_pl, rtol=0, atol=1e-10)
    torch.testing.assert_close(g_nat, g_pl, rtol=0, atol=1e-10)
    assert g_nat.abs().max() > 1e-3  # the comparison is not between two zero gradients


@pytest.mark.parametrize("ansatz", ANSATZE)
def test_native_batched_matches_pennylane_and_rows(ansatz):
    """Batched angles (B, P) give (B, 2^n) probabilities equal to PennyLane's and to row-by-row runs."""
    c = Circuit(4, 2, ansatz)
    angles = _angles(c, 5, seed=1)
    w = torch.randn(5, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    sim = NativeSimulator(c)
    p_nat, g_nat = _probs_and_grad(sim, angles, w)
    p_pl, g_pl = _probs_and_grad(PennyLaneSimulator(c, "default.qubit", diff_method="backprop"), angles, w)
    assert p_nat.shape == (5, 16)
    torch.testing.assert_close(p_nat, p_pl, rtol=0, atol=1e-10)
    torch.testing.assert_close(g_nat, g_pl, rtol=0, atol=1e-10)
    rows = torch.stack([sim.probs(a) for a in angles])
    torch.testing.assert_close(p_nat, rows, rtol=0, atol=1e-12)


@pytest.mark.parametrize("ansatz", ANSATZE)
def test_float32_agrees_with_float64(ansatz):
    """The float32 simulation agrees with the float64 one to about 1e-5."""
    c = Circuit(7, 3, ansatz)
    a64 = _angles(c, seed=3)
    sim = NativeSimulator(c)
    p64 = sim.probs(a64)
    p32 = sim.probs(a64.float())
    assert p32.dtype == torch.float32
    torch.testing.assert_close(p32.double(), p64, rtol=0, atol=1e-5)


@pytest.mark.parametrize("ansatz", ANSATZE)
@pytest.mark.parametrize("n", [2, 6, 10])
def test_probabilities_sum_to_one(ansatz, n):
    """Probabilities are non-negative and sum to 1 for every angle set in a batch."""
    c = Circuit(n, 2, ansatz)
    p = NativeSimulator(c).probs(_angles(c, 3, seed=n))
    assert (p >= 0).all()
    torch.testing.assert_close(p.sum(-1), torch.ones(3, dtype=torch.float64), rtol=0, atol=1e-12)


def test_zero_angles_keep_the_zero_state():
    """With all angles zero the circuit is the identity on |0...0> (the CNOT ring does nothing)."""
    for ansatz in ANSATZE:
        c = Circuit(5, 3, ansatz)
        p = NativeSimulator(c).probs(torch.zeros(c.num_angles, dtype=torch.float64))
        expected = torch.zeros(32, dtype=torch.float64)
        expected[0] = 1
        torch.testing.assert_close(p, expected, rtol=0, atol=1e-14)


def _ring_by_axes(state: np.ndarray, n: int) -> np.ndarray:
    """Apply the CNOT ring one gate at a time by flipping the target axis where control is 1."""
    psi = state.reshape([2] * n).copy()
    for c, t in ring_pairs(n):
        index = [slice(None)] * n
        index[c] = 1
        sub = psi[tuple(index)]
        axis = t if t < c else t - 1  # the control axis was removed by the integer index
        psi[tuple(index)] = np.flip(sub, axis=axis)
    return psi.reshape(-1)


@pytest.mark.parametrize("n", [2, 3, 4, 6])
def test_ring_permutation_equals_pennylane_cnot_ring(n):
    """``state[perm]`` equals PennyLane's matrix of the CNOT ring applied to the state."""
    ops = [qml.CNOT(wires=[c, t]) for c, t in ring_pairs(n)]
    u = np.real(qml.matrix(qml.prod(*reversed(ops)), wire_order=range(n)))
    perm = ring_permutation(n).numpy()
    state = np.random.default_rng(n).normal(size=2**n)
    np.testing.assert_allclose(state[perm], u @ state, atol=1e-12)
    np.testing.assert_array_equal(np.eye(2**n)[perm], u)


@pytest.mark.parametrize("n", [2, 3, 5, 8])
def test_ring_permutation_equals_gate_by_gate(n):
    """``state[perm]`` equals applying the ring's CNOTs one at a time on the (2,)*n tensor."""
    state = np.random.default_rng(100 + n).normal(size=2**n)
    perm = ring_permutation(n).numpy()
    assert sorted(perm.tolist()) == list(range(2**n))
    np.testing.assert_array_equal(state[perm], _ring_by_axes(state, n))


@pytest.mark.parametrize("n", list(range(1, 21)))
def test_qubit_groups_cover_every_qubit_once(n):
    """Groups are contiguous, cover qubits 0..n-1 exactly once, and hold at most group_size(n)."""
    groups = qubit_groups(n)
    covered = [q for start, length in groups for q in range(start, start + length)]
    assert covered == list(range(n))
    assert all(1 <= length <= group_size(n) for _, length in groups)
    assert len(groups) == math.ceil(n / group_size(n))


def test_num_angles():
    """Angle counts follow DESIGN.md: ry n per block, u3 6n per block."""
    assert Circuit(13, 8, "ry").num_angles == 104
    assert Circuit(13, 1, "u3").num_angles == 78
    assert Circuit(13, 1, "u3").angles_per_block == 78
    assert Circuit(13, 16, "u3").num_angles == 1248
    assert Circuit(13, 8).dim == 8192


def test_circuit_rejects_bad_settings():
    """Unknown ansatz, fewer than 2 qubits and zero blocks raise QTrainError."""
    with pytest.raises(QTrainError, match="unknown ansatz 'rx'"):
        Circuit(4, 1, "rx")
    with pytest.raises(QTrainError, match="--qubits 1 is too few"):
        Circuit(1, 1)
    with pytest.raises(QTrainError, match="--blocks 0"):
        Circuit(4, 0)


def test_init_angles_in_range():
    """Initial angles lie in [-pi, pi) and have the circuit's angle count."""
    c = Circuit(5, 4, "u3")
    a = c.init_angles(torch.Generator().manual_seed(0))
    assert a.shape == (c.num_angles,)
    assert a.min() >= -math.pi and a.max() < math.pi


@pytest.mark.parametrize("ansatz", ANSATZE)
def test_pennylane_backend_generates_same_weights(ansatz):
    """QuantumTrain with backend="pennylane" generates the same weights as the native backend."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.Tanh(), torch.nn.Linear(5, 3))
    native = QuantumTrain(model, QTConfig(blocks=2, ansatz=ansatz))
    pl = QuantumTrain(model, QTConfig(blocks=2, ansatz=ansatz, backend="pennylane"))
    pl.generator.load_state_dict(native.generator.state_dict())
    torch.testing.assert_close(pl.generator(), native.generator(), rtol=0, atol=1e-5)


def test_ry_workspaces_are_not_shared_between_live_graphs():
    """Two differentiable ry forwards before either backward give each its own correct gradient."""
    c = Circuit(6, 3)
    sim = NativeSimulator(c)
    a, b = _angles(c, seed=1), _angles(c, seed=2)
    w = torch.randn(64, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    ga, gb = _probs_and_grad(sim, a, w)[1], _probs_and_grad(sim, b, w)[1]
    a1, b1 = a.clone().requires_grad_(True), b.clone().requires_grad_(True)
    pa, pb = sim.probs(a1), sim.probs(b1)
    (pb * w).sum().backward()
    (pa * w).sum().backward()
    torch.testing.assert_close(a1.grad, ga, rtol=0, atol=1e-12)
    torch.testing.assert_close(b1.grad, gb, rtol=0, atol=1e-12)
    assert not torch.allclose(ga, gb)


def test_ry_second_backward_after_reuse_is_refused():
    """A retained ry graph whose saved states a later forward reused refuses a second backward."""
    c = Circuit(5, 2)
    sim = NativeSimulator(c)
    a = _angles(c).requires_grad_(True)
    loss = sim.probs(a)[3]
    loss.backward(retain_graph=True)
    first = a.grad.clone()
    loss.backward(retain_graph=True)  # nothing reused it yet: the same gradient again
    torch.testing.assert_close(a.grad, 2 * first, rtol=0, atol=1e-12)
    sim.probs(a.detach().clone().requires_grad_(True))  # takes the released workspace
    with pytest.raises(RuntimeError, match="reused by a later forward"):
        loss.backward()


@pytest.mark.parametrize("ansatz", ANSATZE)
@pytest.mark.parametrize("n", [3, 6, 11])
def test_float32_matches_pennylane_probs_and_grads(ansatz, n):
    """In float32 (fast precision), probabilities and gradients match PennyLane's float64 run."""
    c = Circuit(n, 2, ansatz)
    angles = _angles(c, seed=50 + n)
    w = torch.randn(2**n, dtype=torch.float64, generator=torch.Generator().manual_seed(n))
    p_pl, g_pl = _probs_and_grad(PennyLaneSimulator(c, "default.qubit", diff_method="backprop"), angles, w)
    p32, g32 = _probs_and_grad(NativeSimulator(c, "fast"), angles.float(), w.float())
    assert p32.dtype == g32.dtype == torch.float32
    torch.testing.assert_close(p32.double(), p_pl, rtol=0, atol=1e-6)
    torch.testing.assert_close(g32.double(), g_pl, rtol=1e-4, atol=1e-5 * g_pl.abs().max().item())
    assert g_pl.abs().max() > 1e-3


def test_exact_precision_gives_float64_gradients_to_float32_angles():
    """precision="exact" runs ry in float64 for float32 angles: probabilities and gradients come back
    in float32, equal to the float64 run's rounded; "fast" is off by float32 rounding only."""
    c = Circuit(9, 4)
    a64 = _angles(c, seed=7)
    w = torch.randn(2**9, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    p64, g64 = _probs_and_grad(NativeSimulator(c), a64, w)
    p_exact, g_exact = _probs_and_grad(NativeSimulator(c, "exact"), a64.float(), w.float())
    p_fast, g_fast = _probs_and_grad(NativeSimulator(c, "fast"), a64.float(), w.float())
    assert p_exact.dtype == g_exact.dtype == p_fast.dtype == torch.float32
    torch.testing.assert_close(p_exact.double(), p64, rtol=1e-6, atol=1e-9)  # only the final rounding
    torch.testing.assert_close(g_exact.double(), g64, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(g_fast.double(), g64, rtol=0, atol=1e-4)
    assert (g_fast.double() - g64).abs().max() > (g_exact.double() - g64).abs().max()


def test_bad_circuit_precision_is_refused():
    """An unknown --circuit-precision is a QTrainError naming the choices."""
    with pytest.raises(QTrainError, match="unknown --circuit-precision 'half': use one of exact, fast"):
        QTConfig(circuit_precision="half")


def test_cli_circuit_precision_is_recorded(tmp_path, capsys):
    """compress --circuit-precision fast trains and records the setting in qtrain.json."""
    import json

    from qtrain.cli import main

    out = tmp_path / "fast"
    rc = main(["compress", "--epochs", "1", "--blocks", "1", "--chunk", "16", "--quiet",
               "--circuit-precision", "fast", "--out", str(out)])
    assert rc == 0, capsys.readouterr().err
    rec = json.loads((out / "qtrain.json").read_text())
    assert rec["config"]["_data"]["qt"]["_data"]["circuit_precision"] == "fast"


@pytest.mark.parametrize("n", [4, 6, 8, 11, 12, 13])
def test_u3_windows_match_pennylane(n):
    """The u3 windows (2 new qubits each up to 11 qubits, 3 from 12, the last one shorter at
    12) give PennyLane's probabilities and gradients, for one angle set and a batch of two."""
    from qtrain.u3_adjoint import window_spans

    assert len(window_spans(n)) > 1  # the windowed path, not the small-circuit one
    c = Circuit(n, 2, "u3")
    pl = PennyLaneSimulator(c, "default.qubit", diff_method="backprop")
    for batch in ((), (2,)):
        angles = _angles(c, *batch, seed=70 + n)
        w = torch.randn(*batch, 2**n, dtype=torch.float64, generator=torch.Generator().manual_seed(n))
        p_nat, g_nat = _probs_and_grad(NativeSimulator(c), angles, w)
        p_pl, g_pl = _probs_and_grad(pl, angles, w)
        torch.testing.assert_close(p_nat, p_pl, rtol=0, atol=1e-10)
        torch.testing.assert_close(g_nat, g_pl, rtol=0, atol=1e-10)
        assert g_nat.abs().max() > 1e-3


def test_u3_window_spans_cover_the_ring():
    """Each window starts on the previous one's last qubit; together they cover 0..n-1."""
    from qtrain.u3_adjoint import window_spans

    for n in range(2, 21):
        spans = window_spans(n)
        assert spans[0][0] == 0 and spans[-1][1] == n - 1
        for (_, end), (start, _) in zip(spans, spans[1:], strict=False):
            assert start == end


def test_u3_second_backward_with_retained_graph():
    """The u3 adjoint keeps its states with the graph: a retained graph differentiates twice."""
    c = Circuit(6, 2, "u3")
    a = _angles(c, seed=3).requires_grad_(True)
    loss = (NativeSimulator(c).probs(a) * torch.arange(64.0, dtype=torch.float64)).sum()
    loss.backward(retain_graph=True)
    first = a.grad.clone()
    loss.backward()
    torch.testing.assert_close(a.grad, 2 * first, rtol=0, atol=1e-12)


def test_no_grad_calls_reuse_their_buffers(monkeypatch):
    """Under torch.no_grad() a differentiable-angle call keeps nothing for a backward pass, so its
    workspace goes back at once and the next call reuses it (evaluation, prediction)."""
    from qtrain import ry_adjoint

    built = []
    init = ry_adjoint.Workspace.__init__
    monkeypatch.setattr(ry_adjoint.Workspace, "__init__",
                        lambda self, *a, **k: built.append(a[-1]) or init(self, *a, **k))
    sim = NativeSimulator(Circuit(6, 3, "ry"))
    a = torch.randn(18, requires_grad=True)
    with torch.no_grad():
        first, second = sim.probs(a), sim.probs(a)
    assert built == [False] and first.grad_fn is None
    torch.testing.assert_close(first, second, rtol=0, atol=0)
    torch.testing.assert_close(sim.probs(a).detach(), first)  # with grad: a workspace that keeps
    assert built == [False, True]
