"""LinearRows (the mapping's output layer) against torch's Linear, and the generator with and
without hidden mapping layers."""

from __future__ import annotations

import torch

from qtrain import QTConfig
from qtrain.circuits import Circuit
from qtrain.fused import LinearRows
from qtrain.generator import WeightGenerator


def test_linear_rows_matches_linear():
    g = torch.Generator().manual_seed(0)
    h = torch.randn(300, 7, dtype=torch.float64, generator=g, requires_grad=True)
    lin = torch.nn.Linear(7, 5).double()
    up = torch.randn(300, 5, dtype=torch.float64, generator=g)
    ours = LinearRows.apply(h, lin.weight, lin.bias)
    mine = torch.autograd.grad((ours * up).sum(), (h, lin.weight, lin.bias))
    ref = torch.nn.functional.linear(h, lin.weight, lin.bias)
    theirs = torch.autograd.grad((ref * up).sum(), (h, lin.weight, lin.bias))
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-12)
    for a, b in zip(mine, theirs, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-11)


def test_generator_output_layer_equals_plain_mapping():
    """With and without hidden layers the generated vector is the mapping's plain output,
    standardised; its gradients match the plain torch form."""
    for hidden in ((), (6,), (4, 3)):
        cfg = QTConfig(qubits=4, blocks=2, mapping_hidden=hidden, scaling="none")
        torch.manual_seed(1)
        gen = WeightGenerator(Circuit(4, 2, "ry"), 3, cfg, [20, 5, 10], torch.ones(3), torch.zeros(3))
        flat = gen()
        x = gen.features(gen.probabilities())
        bits = torch.cat([gen.bits_hi.repeat_interleave(gen.bits_lo.shape[0], 0),
                          gen.bits_lo.repeat(gen.bits_hi.shape[0], 1)], 1)
        plain = gen.mapping(torch.cat([bits, x[:, None]], 1)).reshape(-1)[: gen.size]
        plain = plain - plain.mean()
        torch.testing.assert_close(flat, plain, rtol=1e-5, atol=1e-6)
        w = torch.randn(gen.size)
        params = list(gen.mapping.parameters())
        ours = torch.autograd.grad((flat * w).sum(), params, retain_graph=True)
        theirs = torch.autograd.grad((plain * w).sum(), params)
        for a, b in zip(ours, theirs, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
