"""The compiled ry kernel (qtrain/ry_kernel.cpp, --compile) against the torch simulator and PennyLane.

The kernel is built once for the module (a second or so; nothing when torch's extension cache has
it already); every test skips when no C++ compiler is found.
"""

from __future__ import annotations

import math

import pytest
import torch

from qtrain import QTrainError, native_kernel
from qtrain.circuits import Circuit
from qtrain.pennylane_backend import PennyLaneSimulator
from qtrain.simulate import NativeSimulator, ring_permutation


@pytest.fixture(scope="module")
def kernel():
    if not native_kernel.available():
        pytest.skip("no C++ compiler found: the compiled ry kernel cannot be built")
    return native_kernel.load()


def _angles(batch: int, blocks: int, n: int, seed: int, dtype=torch.float64) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return ((2 * torch.rand(batch, blocks, n, generator=g, dtype=torch.float64) - 1) * math.pi).to(dtype)


def _weights(batch: int, n: int, seed: int, dtype=torch.float64) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 2**n, generator=g, dtype=torch.float64).to(dtype)


def _kernel_run(theta, w, dtype=None):
    t = theta.clone().requires_grad_(True)
    p = native_kernel.ry_probs(t, dtype=dtype)
    (grad,) = torch.autograd.grad((p * w).sum(), t)
    return p.detach(), grad


def _reference(theta, w, precision="exact"):
    """NativeSimulator's probabilities and angle gradient, (B, 2^n) and (B, L, n)."""
    batch, blocks, n = theta.shape
    a = theta.reshape(batch, -1).clone().requires_grad_(True)
    p = NativeSimulator(Circuit(n, blocks, "ry"), precision).probs(a)
    (grad,) = torch.autograd.grad((p * w).sum(), a)
    return p.detach(), grad.view(theta.shape)


@pytest.fixture(params=["stored", "uncomputed"])
def backward_mode(request, monkeypatch):
    """Both backward passes: block states stored by the forward pass (the default up to
    STORE_BYTES), or psi un-computed gate by gate (above it)."""
    if request.param == "uncomputed":
        monkeypatch.setattr(native_kernel, "STORE_BYTES", 0)
    return request.param


@pytest.mark.parametrize("n", [2, 3, 4, 7, 10, 13])
@pytest.mark.parametrize("blocks", [1, 2, 8])
@pytest.mark.parametrize("batch", [1, 3])
def test_float64_matches_native_simulator(kernel, n, blocks, batch, backward_mode):
    """In float64 the kernel's probabilities and gradients equal the torch simulator's to rounding,
    with either backward pass."""
    assert native_kernel.stores_blocks(blocks, n, torch.float64) == (backward_mode == "stored")
    theta = _angles(batch, blocks, n, seed=100 * n + 10 * blocks + batch)
    w = _weights(batch, n, seed=n)
    p, g = _kernel_run(theta, w)
    p_ref, g_ref = _reference(theta, w)
    assert p.dtype == g.dtype == torch.float64 and p.shape == (batch, 2**n) and g.shape == theta.shape
    torch.testing.assert_close(p, p_ref, rtol=0, atol=1e-12)
    torch.testing.assert_close(g, g_ref, rtol=0, atol=1e-11 * max(1.0, g_ref.abs().max().item()))
    assert g_ref.abs().max() > 1e-3


@pytest.mark.parametrize("n", [3, 4, 7, 10, 13])
@pytest.mark.parametrize("batch", [1, 3])
def test_float32_matches_float64(kernel, n, batch):
    """In float32 the kernel is off the float64 result by float32 rounding only, and no worse than
    the torch simulator's fast precision."""
    theta = _angles(batch, 4, n, seed=7 * n + batch)
    w = _weights(batch, n, seed=n + 1)
    p64, g64 = _reference(theta, w)
    p32, g32 = _kernel_run(theta.float(), w.float())
    assert p32.dtype == g32.dtype == torch.float32
    scale = g64.abs().max().item()
    torch.testing.assert_close(p32.double(), p64, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(g32.double(), g64, rtol=1e-4, atol=1e-5 * scale)
    _, g_fast = _reference(theta.float(), w.float(), "fast")
    err, err_fast = (g32.double() - g64).abs().max(), (g_fast.double() - g64).abs().max()
    assert err <= 4 * err_fast + 1e-6 * scale


def test_exact_precision_float32_angles(kernel):
    """dtype=float64 for float32 angles (qtrain's "exact"): float32 results equal to the float64 run's
    rounded, as NativeSimulator's exact precision gives."""
    theta = _angles(2, 4, 9, seed=3).float().double()  # angles a float32 holds exactly
    w = _weights(2, 9, seed=4).float().double()
    p64, g64 = _kernel_run(theta, w)
    p, g = _kernel_run(theta.float(), w.float(), dtype=torch.float64)
    assert p.dtype == g.dtype == torch.float32
    torch.testing.assert_close(p, p64.float(), rtol=0, atol=0)
    torch.testing.assert_close(g.double(), g64, rtol=1e-5, atol=1e-6)
    p_ref, g_ref = _reference(theta.float(), w.float(), "exact")
    torch.testing.assert_close(p, p_ref, rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(g, g_ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("n,blocks", [(3, 2), (5, 3)])
def test_matches_pennylane(kernel, n, blocks):
    """Probabilities and gradients equal PennyLane's default.qubit (backprop) in float64."""
    c = Circuit(n, blocks, "ry")
    theta = _angles(2, blocks, n, seed=n)
    w = _weights(2, n, seed=5)
    p, g = _kernel_run(theta, w)
    a = theta.reshape(2, -1).clone().requires_grad_(True)
    p_pl = PennyLaneSimulator(c, "default.qubit", diff_method="backprop").probs(a)
    (g_pl,) = torch.autograd.grad((p_pl * w).sum(), a)
    torch.testing.assert_close(p, p_pl.detach(), rtol=0, atol=1e-10)
    torch.testing.assert_close(g.reshape(2, -1), g_pl, rtol=0, atol=1e-10)


@pytest.mark.parametrize("n,tile,group", [(10, 5, 2), (12, 7, 1), (9, 6, 6)])
def test_tiled_sweeps(kernel, n, tile, group, backward_mode):
    """States larger than the tile (above 15-16 qubits by default) go through tiles and row groups:
    forced here on small states, with results equal to the whole-state sweeps."""
    theta = _angles(3, 3, n, seed=n + tile)
    w = _weights(3, n, seed=group)
    for dtype in (torch.float64, torch.float32):
        whole = _kernel_run(theta.to(dtype), w.to(dtype))
        kernel.tune(tile, tile, group)
        try:
            tiled = _kernel_run(theta.to(dtype), w.to(dtype))
        finally:
            kernel.tune(*native_kernel.DEFAULT_TUNING)
        tol = 1e-12 if dtype == torch.float64 else 1e-5
        for a, b in zip(whole, tiled, strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=tol)


def test_without_grad_and_retained_graph(kernel):
    """Angles without requires_grad give plain probabilities; with retain_graph a second backward
    gives the same gradient again (the kernel's saved state is not consumed)."""
    theta = _angles(1, 3, 6, seed=1)
    p = native_kernel.ry_probs(theta)
    assert p.grad_fn is None and p.shape == (1, 64)
    torch.testing.assert_close(p.sum(), torch.tensor(1.0, dtype=torch.float64))
    t = theta.clone().requires_grad_(True)
    loss = (native_kernel.ry_probs(t) * _weights(1, 6, seed=2)).sum()
    loss.backward(retain_graph=True)
    first = t.grad.clone()
    loss.backward()
    torch.testing.assert_close(t.grad, 2 * first, rtol=0, atol=1e-14)


def test_ring_permutation_is_checked(kernel, monkeypatch):
    """perm/inverse, when given, must be qtrain's CNOT ring."""
    monkeypatch.setattr(native_kernel, "_checked_perms", set())  # checked once per n: forget earlier runs
    theta = _angles(1, 2, 5, seed=0)
    perm = ring_permutation(5)
    p = native_kernel.ry_probs(theta, perm, torch.argsort(perm))
    torch.testing.assert_close(p, native_kernel.ry_probs(theta))
    with pytest.raises(ValueError, match="CNOT ring"):
        native_kernel.ry_probs(_angles(1, 2, 6, seed=0), torch.arange(64))
    with pytest.raises(ValueError, match=r"\(B, L, n\)"):
        native_kernel.ry_probs(theta[0])


def test_missing_compiler_is_a_one_line_qtrain_error(monkeypatch):
    """Without a C++ compiler, load() says what to do, in one line."""
    monkeypatch.setattr(native_kernel, "_lib", None)
    monkeypatch.setenv("CXX", "/nonexistent/g++")
    with pytest.raises(QTrainError, match="--compile needs a C\\+\\+ compiler") as info:
        native_kernel.load()
    assert "\n" not in str(info.value)
