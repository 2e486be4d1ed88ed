"""Circuit sizing, and weight generation by QuantumTrain's WeightGenerator."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from qtrain import QTConfig, QTrainError, QuantumTrain
from qtrain.circuits import Circuit
from qtrain.generator import basis_bits
from qtrain.layout import size_circuit
from qtrain.models import toolkit_cnn


def _smallest_qubits(m: int, k: int) -> int:
    n = 2
    while 2**n * k < m:
        n += 1
    return n


# ----------------------------------------------------------------------------- sizing


@pytest.mark.parametrize("m", [5, 100, 4096, 4097, 6690, 8192, 8193, 285_226])
@pytest.mark.parametrize("k", [1, 3, 16])
def test_auto_qubits_is_ceil_log2_of_chunks(m, k):
    """With --chunk k and no --qubits, n = ceil(log2 ceil(M/k)) (at least 2) and k is kept."""
    n, chunk = size_circuit(m, None, k)
    assert chunk == k
    assert n == _smallest_qubits(m, k)
    if m > 2 * k:
        assert n == math.ceil(math.log2(math.ceil(m / k)))


@pytest.mark.parametrize("m", [100, 6690, 8193, 100_000])
@pytest.mark.parametrize("qubits", [4, 8, 13])
def test_auto_chunk_is_smallest_that_fits(m, qubits):
    """With --qubits n and no --chunk, k is the smallest chunk with 2^n * k >= M."""
    n, k = size_circuit(m, qubits, None)
    assert n == qubits
    assert 2**n * k >= m
    assert k == 1 or 2**n * (k - 1) < m


def test_known_sizes():
    """The toolkit CNN (M=6,690) gets 13 qubits and chunk 1; CIFAR's M=285,226 gets 19 qubits."""
    assert size_circuit(6690, None, None) == (13, 1)
    assert size_circuit(285_226, None, None) == (19, 1)


@pytest.mark.parametrize("m", [1_000_000, 3_000_000])
def test_large_models_compress_within_20_qubits(m):
    """A model with millions of weights is sized at <= 20 qubits by raising the chunk instead."""
    n, k = size_circuit(m, None, None)
    assert n <= 20
    assert 2**n * k >= m
    assert 2**n * (k - 1) < m


def test_too_few_qubits_for_chunk_1_names_the_fix():
    """Forcing chunk 1 with 12 qubits for M=6,690 raises and suggests --qubits 13 or --chunk 2."""
    with pytest.raises(QTrainError, match=r"--qubits 13 or --chunk 2"):
        size_circuit(6690, 12, 1)


def test_too_many_qubits_refuses_with_memory_estimate():
    """--qubits 40 is refused with a GiB estimate, by size_circuit and by QuantumTrain alike."""
    with pytest.raises(QTrainError, match=r"--qubits 40 needs about [\d,]+ GiB"):
        size_circuit(6690, 40, None)
    with pytest.raises(QTrainError, match="GiB"):
        QuantumTrain(toolkit_cnn(), QTConfig(qubits=40))


def test_too_few_qubits_rejected():
    """--qubits 1 is rejected: the ring needs two wires."""
    with pytest.raises(QTrainError, match="--qubits 1 is too few"):
        size_circuit(10, 1, None)


def test_basis_bits_msb_first():
    """basis_bits gives each index's bits as +-1 with qubit 0 the most significant bit."""
    bits = basis_bits(3)
    assert bits.shape == (8, 3)
    assert bits[0].tolist() == [-1, -1, -1]
    assert bits[1].tolist() == [-1, -1, 1]
    assert bits[4].tolist() == [1, -1, -1]


# ----------------------------------------------------------------------------- generation


class _Mixed(nn.Module):
    """Conv, BatchNorm (constant weight and bias), LayerNorm, and a 1-element bias."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(16, 6)
        self.ln = nn.LayerNorm(6)
        self.head = nn.Linear(6, 1)
        with torch.no_grad():
            self.fc.bias.fill_(0.25)  # constant and non-zero

    def forward(self, x):
        h = self.bn(self.conv(x)).relu().flatten(1)
        return self.head(self.ln(self.fc(h)))


def test_tensor_scaling_matches_initial_statistics():
    """With scaling="tensor" every generated tensor starts with its parameter's own mean and std."""
    torch.manual_seed(0)
    model = _Mixed()
    qt = QuantumTrain(model, QTConfig(blocks=2))
    generated = qt.generate()
    named = dict(model.named_parameters())
    assert set(generated) == set(named)
    for name, w in generated.items():
        ref = named[name].detach()
        assert w.shape == ref.shape, name
        std, mean = ref.std(unbiased=False).item(), ref.mean().item()
        gstd, gmean = w.std(unbiased=False).item(), w.mean().item()
        scale = max(std, abs(mean), 1e-3)
        assert abs(gmean - mean) <= 1e-4 * scale, (name, gmean, mean)
        if std > 0:
            assert abs(gstd - std) <= 1e-4 * std, (name, gstd, std)
        else:
            torch.testing.assert_close(w, ref, rtol=0, atol=1e-6)  # constant tensors stay constant
    torch.testing.assert_close(generated["bn.weight"], torch.ones(4), rtol=0, atol=1e-6)
    torch.testing.assert_close(generated["bn.bias"], torch.zeros(4), rtol=0, atol=1e-6)
    torch.testing.assert_close(generated["head.bias"], named["head.bias"].detach(), rtol=0, atol=1e-6)
    # the generated weights are not a copy of the initial ones, only their statistics match
    assert not torch.allclose(generated["conv.weight"], named["conv.weight"], atol=1e-3)


def test_scaling_none_is_mean_free():
    """With scaling="none" (the toolkit's recipe) the flat generated vector has mean 0."""
    torch.manual_seed(0)
    qt = QuantumTrain(toolkit_cnn(), QTConfig(scaling="none", blocks=2))
    flat = qt.generator()
    assert flat.shape == (6690,)
    assert abs(flat.mean().item()) < 1e-5
    assert flat.std().item() > 0
    assert qt.counts()["scaling"] == 0
    assert not hasattr(qt.generator, "gain")


def test_toolkit_cnn_counts():
    """Toolkit CNN: M=6,690, 104 ry angles at 13x8, mapping 14->20->1 of 321, trainable summed."""
    torch.manual_seed(0)
    qt = QuantumTrain(toolkit_cnn(), QTConfig(qubits=13, blocks=8, mapping_hidden=(20,)))
    c = qt.counts()
    assert c["generated"] == 6690
    assert c["target_params"] == 6690
    assert c["angles"] == 104
    assert c["mapping"] == 14 * 20 + 20 + 20 + 1 == 321
    assert c["scaling"] == 2 * 8  # gain and shift per generated tensor
    assert c["classical"] == 0
    assert c["trainable_params"] == sum(p.numel() for p in qt.parameters()) == 104 + 321 + 16
    assert c["compression_ratio"] == pytest.approx(6690 / 441)
    assert qt.chunk == 1 and qt.circuit.qubits == 13
    # the target's own parameters are not QuantumTrain parameters
    own = {id(p) for p in qt.parameters()}
    assert not any(id(p) in own for p in qt.target.parameters())


def test_toolkit_mapping_size():
    """The toolkit mapping 14->4->20->4->1 has 249 parameters."""
    qt = QuantumTrain(toolkit_cnn(), QTConfig(blocks=1, mapping_hidden=(4, 20, 4)))
    assert qt.counts()["mapping"] == 249


def test_exclude_keeps_parameters_classical():
    """Excluded parameters are kept classical: in qt.parameters(), counted, and trained."""
    torch.manual_seed(0)
    model = toolkit_cnn()
    qt = QuantumTrain(model, QTConfig(blocks=2, exclude=("9.*",)))
    assert qt.layout.classical == ["9.weight", "9.bias"]
    assert "9.weight" not in qt.layout.names
    assert qt.layout.size == 6690 - 210
    own = {id(p) for p in qt.parameters()}
    assert id(model[9].weight) in own and id(model[9].bias) in own
    c = qt.counts()
    assert c["classical"] == 210
    assert c["target_params"] == 6690
    assert c["trainable_params"] == sum(p.numel() for p in qt.parameters())
    assert c["trainable_params"] == c["angles"] + c["mapping"] + c["scaling"] + 210
    qt(torch.randn(2, 1, 28, 28)).pow(2).mean().backward()
    assert model[9].weight.grad is not None and model[9].weight.grad.abs().sum() > 0
    assert model[0].weight.grad is None  # generated: the target's own tensor is unused


def test_include_selects_generated_parameters():
    """--include keeps only matching parameters generated; the rest stay classical."""
    qt = QuantumTrain(toolkit_cnn(), QTConfig(blocks=1, include=("0.*", "3.*")))
    assert qt.layout.names == ["0.weight", "0.bias", "3.weight", "3.bias"]
    assert qt.layout.size == 8 * 25 + 8 + 12 * 8 * 25 + 12
    assert qt.layout.classical == ["7.weight", "7.bias", "9.weight", "9.bias"]


def test_glob_matching_nothing_raises():
    """An --include or --exclude pattern that matches no parameter raises and shows real names."""
    with pytest.raises(QTrainError, match=r"--include 'nope\*' matches no parameter.*0\.weight"):
        QuantumTrain(toolkit_cnn(), QTConfig(include=("nope*",)))
    with pytest.raises(QTrainError, match=r"--exclude 'fc\.\*' matches no parameter"):
        QuantumTrain(toolkit_cnn(), QTConfig(exclude=("fc.*",)))


def test_excluding_everything_raises():
    """Excluding every parameter leaves nothing to generate, which is an error."""
    with pytest.raises(QTrainError, match="left no parameter to generate"):
        QuantumTrain(toolkit_cnn(), QTConfig(exclude=("*",)))


def test_frozen_parameters_are_neither_generated_nor_trained():
    """Parameters with requires_grad=False are left out of the layout and of qt.parameters()."""
    model = toolkit_cnn()
    model[9].requires_grad_(False)
    qt = QuantumTrain(model, QTConfig(blocks=1))
    assert qt.layout.size == 6690 - 210
    assert "9.weight" not in qt.layout.names and qt.layout.classical == []
    own = {id(p) for p in qt.parameters()}
    assert id(model[9].weight) not in own


def test_chunk_greater_than_one():
    """chunk > 1: the mapping emits k outputs per basis state and exactly M weights are used."""
    torch.manual_seed(0)
    qt = QuantumTrain(toolkit_cnn(), QTConfig(chunk=4, blocks=2))
    assert qt.chunk == 4
    assert qt.circuit.qubits == 11  # ceil(log2 ceil(6690 / 4)) = ceil(log2 1673)
    assert qt.generator.mapping[-1].out_features == 4
    assert qt.generator.mapping[0].in_features == 12
    assert qt.generator().shape == (6690,)
    out = qt(torch.randn(3, 1, 28, 28))
    assert out.shape == (3, 10) and torch.isfinite(out).all()


def test_features_post_processing():
    """features(p) is (beta tanh(gamma 2^(n-1) p))^alpha minus its mean, with the config's values."""
    cfg = QTConfig(blocks=1, gamma=0.2, beta=0.7, alpha=0.5)
    qt = QuantumTrain(nn.Linear(3, 2), cfg)  # M = 8 -> 3 qubits
    n = qt.circuit.qubits
    assert n == 3
    p = torch.tensor([0.5, 0.25, 0.125, 0.0625, 0.03125, 0.015625, 0.01, 0.005625], dtype=torch.float64)
    x = (0.7 * torch.tanh(0.2 * 2 ** (n - 1) * p)) ** 0.5
    torch.testing.assert_close(qt.generator.features(p), x - x.mean(), rtol=0, atol=1e-12)
    torch.testing.assert_close(qt.generator.features(p).sum(), torch.tensor(0.0, dtype=torch.float64),
                               rtol=0, atol=1e-12)


def test_features_gradient_is_finite_at_zero_probability():
    """A zero probability does not make the post-processing gradient NaN."""
    qt = QuantumTrain(nn.Linear(3, 2), QTConfig(blocks=1))
    p = torch.tensor([1.0, 0, 0, 0, 0, 0, 0, 0], requires_grad=True)
    qt.generator.features(p).pow(2).sum().backward()
    assert torch.isfinite(p.grad).all()


def test_gradients_reach_every_generator_part():
    """A backward pass through qt(x) gives non-zero gradients on angles, mapping, gain and shift.

    The mapping's output bias is the exception: it adds one constant to every weight, which the
    per-tensor standardisation removes, so its gradient is zero (up to rounding)."""
    torch.manual_seed(0)
    qt = QuantumTrain(toolkit_cnn(act="relu"), QTConfig(blocks=2))
    x, y = torch.randn(4, 1, 28, 28), torch.tensor([0, 1, 2, 3])
    nn.functional.cross_entropy(qt(x), y).backward()
    g = qt.generator
    inert = g.mapping[-1].bias
    for name, p in [("angles", g.angles), ("gain", g.gain), ("shift", g.shift),
                    *g.mapping.named_parameters()]:
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        if p is not inert:
            assert p.grad.abs().sum() > 0, name
    assert inert.grad.abs().max() < 1e-5 * g.mapping[-1].weight.grad.abs().max()


def test_first_layer_equals_the_mapping_on_bits_and_features():
    """The Kronecker-sum first layer equals the mapping's Linear on [bits(i), x_i], values and grads."""
    from qtrain.generator import WeightGenerator

    for n in (2, 5, 8):
        c = Circuit(n, 2)
        gen = WeightGenerator(c, 3, QTConfig(mapping_hidden=(7,)), [3 * 2**n],
                              torch.ones(1), torch.zeros(1)).double()
        x = torch.randn(2**n, dtype=torch.float64, requires_grad=True)
        ours = gen._first_layer(x)
        ref = gen.mapping[0](torch.cat([basis_bits(n).double(), x[:, None]], 1))
        torch.testing.assert_close(ours, ref, rtol=0, atol=1e-12)
        r = torch.randn_like(ref)
        g_ours = torch.autograd.grad((ours * r).sum(), [x, *gen.mapping[0].parameters()])
        g_ref = torch.autograd.grad((ref * r).sum(), [x, *gen.mapping[0].parameters()])
        for a, b in zip(g_ours, g_ref, strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-10)


@pytest.mark.parametrize("by_slices,numbers", [(True, True), (True, False), (False, True)])
def test_standardise_equals_the_plain_formula(by_slices, numbers, monkeypatch):
    """Standardise gives (w - mean) / std * ref gain + ref shift per tensor and its gradients,
    dropping the padding past M."""
    from qtrain import fused
    from qtrain.fused import Segments, Standardise

    monkeypatch.setattr(fused, "number_scalars", lambda device: numbers)  # False: the GPU form

    numels = [7, 1, 30, 5]
    g = torch.Generator().manual_seed(0)
    flat = torch.randn(47, dtype=torch.float64, generator=g).requires_grad_(True)
    gain = torch.rand(4, dtype=torch.float64, generator=g).add(0.5).requires_grad_(True)
    shift = torch.randn(4, dtype=torch.float64, generator=g).requires_grad_(True)
    ref = torch.rand(4, dtype=torch.float64, generator=g).add(0.1)
    counts = torch.tensor(numels, dtype=torch.float64)
    segs = Segments(numels)
    if by_slices != segs.by_slices:
        segs.by_slices, segs.index = by_slices, torch.repeat_interleave(torch.arange(4), torch.tensor(numels))
    ours = Standardise.apply(flat, gain, shift, ref, counts, segs)
    parts = flat[:43].split(numels)
    ref_out = torch.cat([(p - p.mean()) / torch.sqrt(p.var(unbiased=False) + 1e-12) * r * a + r * b
                         for p, r, a, b in zip(parts, ref, gain, shift, strict=True)])
    torch.testing.assert_close(ours, ref_out, rtol=0, atol=1e-12)
    w = torch.randn(43, dtype=torch.float64, generator=g)
    got = torch.autograd.grad((ours * w).sum(), [flat, gain, shift])
    want = torch.autograd.grad((ref_out * w).sum(), [flat, gain, shift])
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-10)
    assert got[0][43:].abs().max() == 0 and got[0][:43].abs().max() > 1e-3
