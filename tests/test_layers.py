"""The target runs as it is through torch.func.functional_call, so any layer works unchanged."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from qtrain import QTConfig, QuantumTrain


class _First(nn.Module):
    """Wrap a module that returns a tuple (LSTM, GRU) so that forward returns one tensor."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner(x)[0]


class _SelfAttention(nn.Module):
    def __init__(self, dim: int = 8, heads: int = 2):
        super().__init__()
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x):
        out, _ = self.attn(x, x, x, need_weights=False)
        return self.norm(x + out)


class _Tied(nn.Module):
    """A tiny language model whose output Linear shares the embedding's weight."""

    def __init__(self, vocab: int = 11, dim: int = 6):
        super().__init__()
        self.emb = nn.Embedding(vocab, dim)
        self.mix = nn.Linear(dim, dim)
        self.out = nn.Linear(dim, vocab, bias=False)
        self.out.weight = self.emb.weight

    def forward(self, tokens):
        return self.out(torch.tanh(self.mix(self.emb(tokens))))


def _conv_bn():
    return nn.Sequential(
        nn.Conv2d(4, 8, 3, padding=2, stride=2, dilation=2, groups=2), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 4, 3, padding=1, padding_mode="circular"), nn.Flatten(),
        nn.Linear(4 * 5 * 5, 3),
    )


CASES = {
    "conv_dilated_grouped": (lambda: nn.Conv2d(4, 8, 3, padding=2, stride=2, dilation=2, groups=2),
                             lambda: torch.randn(2, 4, 9, 9)),
    "conv_bn": (_conv_bn, lambda: torch.randn(3, 4, 9, 9)),
    "conv_transpose": (lambda: nn.ConvTranspose2d(3, 2, 3, stride=2, padding=1, output_padding=1),
                       lambda: torch.randn(2, 3, 4, 4)),
    "conv1d_batchnorm1d": (lambda: nn.Sequential(nn.Conv1d(3, 5, 3, padding="same"), nn.BatchNorm1d(5)),
                           lambda: torch.randn(4, 3, 7)),
    "lstm": (lambda: _First(nn.LSTM(4, 8, num_layers=2, batch_first=True)), lambda: torch.randn(3, 5, 4)),
    "gru": (lambda: _First(nn.GRU(4, 6, batch_first=True, bidirectional=True)),
            lambda: torch.randn(3, 5, 4)),
    "multihead_attention": (_SelfAttention, lambda: torch.randn(2, 5, 8)),
    "tied": (_Tied, lambda: torch.randint(0, 11, (3, 4))),
}


def _build(case: str, **cfg):
    torch.manual_seed(0)
    make_model, make_input = CASES[case]
    model = make_model()
    x = make_input()
    qt = QuantumTrain(model, QTConfig(blocks=2, **cfg))
    return model, qt, x


@pytest.mark.parametrize("case", list(CASES))
def test_forward_equals_materialized_module(case):
    """qt(x) equals the plain module run after materialize() copied the generated weights into it."""
    model, qt, x = _build(case)
    qt.eval()
    with torch.no_grad():
        before = model(x)
        out = qt(x)
        plain = qt.materialize()(x)
    assert qt.materialize() is model
    torch.testing.assert_close(out, plain, rtol=0, atol=1e-6)
    assert not torch.allclose(before, plain, atol=1e-4)  # the generated weights were really used


@pytest.mark.parametrize("case", list(CASES))
def test_backward_reaches_angles(case):
    """A loss on qt(x) gives non-zero, finite gradients on the circuit angles."""
    _, qt, x = _build(case)
    qt.train()
    out = qt(x)
    out.float().pow(2).mean().backward()
    grad = qt.generator.angles.grad
    assert grad is not None
    assert torch.isfinite(grad).all()
    assert grad.abs().sum() > 0


def test_batchnorm_buffers_stay_classical():
    """BN buffers are not generated; a train-mode forward through qt updates them in the target."""
    model, qt, x = _build("conv_bn")
    bn = model[1]
    assert not any("running" in n or "num_batches" in n for n in qt.layout.names)
    assert {"1.weight", "1.bias"} <= set(qt.layout.names)
    assert qt.layout.size == sum(p.numel() for p in model.parameters())
    mean0, var0 = bn.running_mean.clone(), bn.running_var.clone()
    qt.train()
    qt(x)
    assert int(bn.num_batches_tracked) == 1
    assert not torch.allclose(bn.running_mean, mean0)
    assert not torch.allclose(bn.running_var, var0)
    qt(x)
    assert int(bn.num_batches_tracked) == 2
    # eval mode uses the running statistics, in qt and in the materialized module alike
    qt.eval()
    assert not model.training
    with torch.no_grad():
        torch.testing.assert_close(qt(x), qt.materialize()(x), rtol=0, atol=1e-6)


def test_tied_weights_generated_once():
    """Tied weights appear once in the layout, count once in M, and share values when materialized."""
    model, qt, x = _build("tied")
    assert qt.layout.names.count("emb.weight") == 1
    assert "out.weight" not in qt.layout.names
    assert qt.layout.size == 11 * 6 + 6 * 6 + 6
    assert qt.counts()["generated"] == 11 * 6 + 6 * 6 + 6
    generated = qt.generate()
    target = qt.materialize()
    torch.testing.assert_close(target.emb.weight.detach(), generated["emb.weight"].detach())
    torch.testing.assert_close(target.out.weight.detach(), generated["emb.weight"].detach())
    assert target.out.weight is target.emb.weight  # still tied after materialize


def test_tied_weights_untied_run_differs():
    """qt(x) uses the generated weight for BOTH tied uses (not the stale original in one of them)."""
    model, qt, x = _build("tied")
    with torch.no_grad():
        generated = qt.generate()
        out = qt(x, weights=generated)
        # same generated weights, but the output layer left at the original embedding values
        original = model.emb.weight.detach().clone()
        stale = torch.func.functional_call(
            model, {**generated, "out.weight": original}, (x,), tie_weights=False)
    assert not torch.allclose(out, stale, atol=1e-4)


@pytest.mark.parametrize("case", ["conv_bn", "lstm", "multihead_attention"])
def test_a_few_optimizer_steps_reduce_the_loss(case):
    """Five Adam steps on qt.parameters() reduce a regression loss toward a fixed target."""
    _, qt, x = _build(case)
    qt.train()
    with torch.no_grad():
        target = torch.randn(qt(x).shape, generator=torch.Generator().manual_seed(1))
    opt = torch.optim.Adam(qt.parameters(), lr=2e-2)
    losses = []
    for _ in range(6):
        opt.zero_grad()
        loss = (qt(x) - target).pow(2).mean()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
