"""The C++ mapping kernel (qtrain/map_kernel.cpp, --compile) against the generator's torch path:
values and every parameter's gradient, to float32 rounding."""

from __future__ import annotations

import pytest
import torch

from qtrain import QTConfig, QuantumTrain, native_kernel
from qtrain.circuits import Circuit
from qtrain.generator import WeightGenerator
from qtrain.mapping_kernel import generate

pytestmark = pytest.mark.skipif(not native_kernel.available(),
                                reason="no C++ compiler found: the mapping kernel cannot be built")


def _generator(n: int, width: int, k: int, act: str, scaling: str,
               size: int | None = None) -> WeightGenerator:
    torch.manual_seed(n * 1000 + width * 10 + k)
    cfg = QTConfig(qubits=n, chunk=k, mapping_hidden=(width,), mapping_act=act, scaling=scaling)
    size = size or 2**n * k - k // 2  # by default the last state's outputs partly unused
    numels = [size // 3, size // 5, size - size // 3 - size // 5]
    gen = WeightGenerator(Circuit(n, 2, "ry"), k, cfg, numels, torch.rand(3) + 0.1, torch.randn(3) * 0.1)
    with torch.no_grad():  # a spread of hidden values, both signs, past relu's and tanh's knees
        gen.angles.mul_(3)
        for p in gen.mapping.parameters():
            p.mul_(2)
    return gen


def _run(gen: WeightGenerator, compiled: bool, upstream: torch.Tensor):
    gen.compiled = compiled
    gen.zero_grad(set_to_none=True)
    out = gen()
    (out * upstream).sum().backward()
    return out.detach(), {name: p.grad.clone() for name, p in gen.named_parameters()}


def _close(a: torch.Tensor, b: torch.Tensor, rtol: float = 1e-5) -> None:
    # relative to the tensor's scale: values near zero carry the rounding of their neighbours
    torch.testing.assert_close(a, b, rtol=rtol, atol=rtol * float(b.abs().max()) + 1e-30)


def _grads_close(grads: dict, ref_grads: dict, rtol: float) -> None:
    assert grads.keys() == ref_grads.keys()
    scale = max(float(g.abs().max()) for g in ref_grads.values())
    for name, g in ref_grads.items():
        if g.abs().max() < 1e-3 * scale:
            # a direction the output does not depend on (the output bias under standardisation or
            # the mean's removal, the hidden bias of a linear mapping): both are rounding, ~0
            assert grads[name].abs().max() < 1e-5 * scale, name
            continue
        _close(grads[name], g, rtol=rtol)


# every combination, less 13 qubits x chunk 66 with width 4 or relu/none (slow, and covered
# by the other 13-qubit, chunk 66 cases)
CASES = [(n, width, k, act, scaling) for n in (4, 7, 11, 13) for width in (4, 20) for k in (1, 3, 66)
         for act in ("gelu", "relu", "tanh", "none") for scaling in ("tensor", "none")
         if not (n == 13 and k == 66 and (width == 4 or act in ("relu", "none")))]


@pytest.mark.parametrize("n, width, k, act, scaling", CASES)
def test_kernel_matches_torch_path(n, width, k, act, scaling):
    gen = _generator(n, width, k, act, scaling)
    upstream = torch.randn(gen.size)
    ref, ref_grads = _run(gen, False, upstream)
    out, grads = _run(gen, True, upstream)
    _close(out, ref)
    _grads_close(grads, ref_grads, rtol=2e-5)


@pytest.mark.parametrize("n, k, act, scaling", [(11, 1, "gelu", "tensor"), (11, 3, "tanh", "none"),
                                                (11, 66, "gelu", "tensor"), (8, 1, "relu", "tensor")])
def test_kernel_maps_only_the_states_that_hold_weights(n, k, act, scaling):
    """M well below 2^n k (the toolkit CNN: 6,690 of 8,192): the kernel maps whole tiles up to M
    only, and values and gradients still equal the torch path, which maps every state."""
    size = 2**n * k * 5 // 8 + 7
    gen = _generator(n, 20, k, act, scaling, size)
    gen.compiled = True
    gen()
    assert gen._kernel_plan.rows < 2**n
    upstream = torch.randn(gen.size)
    ref, ref_grads = _run(gen, False, upstream)
    out, grads = _run(gen, True, upstream)
    _close(out, ref)
    _grads_close(grads, ref_grads, rtol=2e-5)


def test_zero_probabilities_are_masked_like_torch():
    """p = 0 is clamped in the post-processing, and its gradient masked, as in fused.Features."""
    gen = _generator(6, 20, 1, "gelu", "none")
    p = torch.rand(64)
    p[::5] = 0
    p = p / p.sum()
    upstream = torch.randn(gen.size)

    def torch_path(q):
        flat = gen._mapping(q).reshape(-1)[: gen.size]
        return flat - flat.mean()

    runs = []
    for fn in (torch_path, lambda q: generate(gen, q)):
        q = p.clone().requires_grad_()
        gen.zero_grad(set_to_none=True)
        out = fn(q)
        (out * upstream).sum().backward()
        runs.append((out.detach(), {"p": q.grad, **{n: w.grad for n, w in gen.mapping.named_parameters()}}))
    (ref, ref_grads), (out, grads) = runs
    _close(out, ref)
    gp, ref_gp = grads.pop("p"), ref_grads.pop("p")
    assert torch.isfinite(gp).all() and (gp[::5] == 0).all()
    _close(gp, ref_gp, rtol=2e-5)
    _grads_close(grads, ref_grads, rtol=2e-5)


def test_unsupported_mappings_fall_back():
    torch.manual_seed(0)
    cfg = QTConfig(qubits=5, chunk=2, mapping_hidden=(8, 4))
    gen = WeightGenerator(Circuit(5, 2, "ry"), 2, cfg, [60], torch.ones(1), torch.zeros(1))
    assert generate(gen, gen.probabilities()) is None
    gen.compiled = True
    ref = gen._mapping(gen.probabilities()).reshape(-1)[:60]
    assert torch.isfinite(gen()).all() and ref.shape == (60,)


def test_quantum_train_step_matches_eager_gradients():
    from qtrain.compiled import use_compiled_kernel
    from qtrain.models import digits_cnn

    grads = []
    for compiled in (False, True):
        torch.manual_seed(0)
        model = digits_cnn()
        x, y = torch.randn(16, 1, 8, 8), torch.randint(0, 10, (16,))
        torch.manual_seed(1)
        qt = QuantumTrain(model, QTConfig(qubits=11, blocks=2))
        if compiled:
            use_compiled_kernel(qt, torch.device("cpu"))
            assert qt.generator.compiled
        torch.nn.functional.cross_entropy(qt(x), y).backward()
        grads.append({name: p.grad.clone() for name, p in qt.named_parameters()})
    _grads_close(grads[1], grads[0], rtol=1e-4)


def _qt_grads(qt, x, y):
    qt.zero_grad(set_to_none=True)
    loss = torch.nn.functional.cross_entropy(qt(x), y)
    loss.backward()
    return loss.item(), {name: p.grad.clone() for name, p in qt.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("precision, qubits, chunk", [("exact", 11, 1), ("fast", 11, 1), ("exact", 10, 2),
                                                     ("fast", 9, 5)])
def test_whole_generator_node_equals_separate_kernels(monkeypatch, precision, qubits, chunk):
    """--compile's one-node generator (qtrain.generator_kernel) gives the loss and every gradient of
    the same kernels run as separate nodes, and counts its circuit runs."""
    import qtrain.generator_kernel as gk
    from qtrain.compiled import use_compiled_kernel
    from qtrain.models import digits_cnn

    torch.manual_seed(0)
    x, y = torch.randn(16, 1, 8, 8), torch.randint(0, 10, (16,))
    runs = []
    for fused in (True, False):
        torch.manual_seed(1)
        qt = QuantumTrain(digits_cnn(), QTConfig(qubits=qubits, chunk=chunk, blocks=3,
                                                 circuit_precision=precision))
        use_compiled_kernel(qt, torch.device("cpu"))
        if not fused:
            monkeypatch.setattr(gk, "generate", lambda *a: None)
        weights = qt.generate()
        assert all(w.grad_fn is not None and (type(w.grad_fn).__name__ == "GeneratorKernelBackward") == fused
                   for w in weights.values())
        runs.append((*_qt_grads(qt, x, y), qt.generator.circuit_executions))
    (loss, grads, count), (ref_loss, ref_grads, ref_count) = runs
    assert loss == ref_loss and count == ref_count == 2
    assert grads.keys() == ref_grads.keys() and len(grads) == 7
    for name, g in ref_grads.items():
        torch.testing.assert_close(grads[name], g, rtol=0, atol=0)


def test_whole_generator_node_with_frozen_angles_and_without_grad():
    from qtrain.compiled import use_compiled_kernel
    from qtrain.models import digits_cnn

    torch.manual_seed(1)
    qt = QuantumTrain(digits_cnn(), QTConfig(qubits=11, blocks=2))
    use_compiled_kernel(qt, torch.device("cpu"))
    qt.generator.angles.requires_grad_(False)
    _, grads = _qt_grads(qt, torch.randn(4, 1, 8, 8), torch.arange(4))
    assert "generator.angles" not in grads and grads["generator.mapping.0.weight"].abs().max() > 0
    with torch.no_grad():
        weights = qt.generate()
    assert all(w.grad_fn is None for w in weights.values())
    assert any(not keep for _, keep, _ in qt.generator._kernel_plan.layouts)  # no states kept
    ref = qt.layout.unflatten(qt.generator().detach())  # the separate nodes
    for name, w in weights.items():
        torch.testing.assert_close(w, ref[name], rtol=0, atol=0)


@pytest.mark.parametrize("change", [dict(scaling="none"), dict(grad="parameter-shift"),
                                    dict(mapping_hidden=(8, 4)), dict(chunk=40)])
def test_whole_generator_node_leaves_what_it_does_not_cover(change):
    """Other scalings, gradient methods, deeper or wider mappings: the generator's own path."""
    from qtrain.compiled import use_compiled_kernel
    from qtrain.generator_kernel import generate
    from qtrain.models import digits_cnn

    qt = QuantumTrain(digits_cnn(), QTConfig(blocks=2, **change))
    use_compiled_kernel(qt, torch.device("cpu"))
    assert generate(qt.generator, qt.layout.shapes) is None
    weights = qt.generate()
    assert all(torch.isfinite(w).all() for w in weights.values())


def test_compiled_quantum_train_deep_copies_and_swaps_back():
    """A compiled QuantumTrain survives copy.deepcopy after a step (the kernel's work-space
    layouts hold ctypes pointers), and the copy generates the same weights into its own network."""
    import copy

    from qtrain.compiled import use_compiled_kernel
    from qtrain.models import digits_cnn

    torch.manual_seed(0)
    qt = QuantumTrain(digits_cnn(), QTConfig(qubits=11, blocks=2))
    use_compiled_kernel(qt, torch.device("cpu"))
    x = torch.randn(4, 1, 8, 8)
    _qt_grads(qt, x, torch.arange(4))
    twin = copy.deepcopy(qt)
    with torch.no_grad():
        torch.testing.assert_close(twin(x), qt(x), rtol=0, atol=0)
    assert all(p is not q for p, q in zip(twin.target.parameters(), qt.target.parameters(), strict=True))
    assert all(isinstance(p, torch.nn.Parameter) for p in twin.target.parameters())
