"""ParamSwap, QuantumTrain's cheap functional_call: the same outputs and gradients as
torch.func.functional_call, the module's own parameters back afterwards, and the fallbacks."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.func import functional_call
from torch.nn.utils.parametrizations import weight_norm

from qtrain.swap import ParamSwap


class _Tied(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Linear(4, 6, bias=False)
        self.head = nn.Linear(6, 4, bias=False)
        self.out = nn.Linear(6, 4, bias=False)
        self.out.weight = self.head.weight  # two names, one parameter

    def forward(self, x):
        h = torch.tanh(self.embed(x))
        return self.head(h) + self.out(h)


def _new_tensors(module: nn.Module, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {n: torch.randn(p.shape, generator=g).requires_grad_() for n, p in module.named_parameters()}


@pytest.mark.parametrize("make, shape", [
    (lambda: nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 4)), (3, 4)),
    (_Tied, (3, 4)),
    (lambda: nn.Sequential(nn.Conv1d(4, 4, 3, padding=1), nn.BatchNorm1d(4)), (3, 4, 5)),
    # parametrized weights: the slots are the parametrization's originals
    (lambda: nn.Sequential(weight_norm(nn.Linear(4, 5)), nn.Tanh(), nn.Linear(5, 3)), (3, 4)),
])
def test_equals_functional_call_and_restores(make, shape):
    torch.manual_seed(0)
    module = make()
    before = dict(module.named_parameters(remove_duplicate=False))
    swap = ParamSwap(module)
    assert swap.plain
    x = torch.randn(shape)
    outs = []
    for fn in (swap, lambda p, a, k: functional_call(module, p, a, k)):
        params = _new_tensors(module, seed=1)
        y = fn(params, (x,), {})
        grads = torch.autograd.grad(y.square().sum(), list(params.values()))
        outs.append((y.detach(), grads))
    torch.testing.assert_close(outs[0][0], outs[1][0])
    for a, b in zip(outs[0][1], outs[1][1], strict=True):
        torch.testing.assert_close(a, b)
    after = dict(module.named_parameters(remove_duplicate=False))
    assert after.keys() == before.keys() and all(after[n] is before[n] for n in before)


def test_tied_alias_gets_the_same_tensor():
    module = _Tied()
    params = _new_tensors(module, seed=2)
    assert "out.weight" not in params  # named_parameters names a tied parameter once
    seen = {}
    module.out.register_forward_pre_hook(lambda m, a: seen.update(w=m.weight))
    ParamSwap(module)(params, (torch.randn(2, 4),), {})
    assert seen["w"] is params["head.weight"]


def test_parameters_come_back_after_an_error():
    module = nn.Linear(3, 2)
    weight = module.weight
    with pytest.raises(RuntimeError):
        ParamSwap(module)({"weight": torch.zeros(2, 3)}, (torch.randn(4, 5),), {})  # wrong input width
    assert module.weight is weight and isinstance(module._parameters["weight"], nn.Parameter)


def test_falls_back_where_setattr_caches_or_a_name_is_no_parameter(monkeypatch):
    calls = []
    monkeypatch.setattr("qtrain.swap.functional_call",
                        lambda *a, **k: calls.append(len(calls) + 1) or functional_call(*a, **k))
    lstm = nn.LSTM(3, 4, batch_first=True)  # caches _flat_weights on setattr
    swap = ParamSwap(lstm)
    assert not swap.plain
    params, x = _new_tensors(lstm, seed=3), torch.randn(2, 5, 3)
    out = swap(params, (x,), {})[0]
    assert calls == [1]
    torch.testing.assert_close(out, functional_call(lstm, params, (x,))[0])
    assert not torch.allclose(out, lstm(x)[0])  # the given tensors were used, not the module's
    bn = nn.BatchNorm1d(3)
    ParamSwap(bn)({"running_mean": torch.zeros(3)}, (torch.randn(4, 3),), {})  # a buffer
    assert calls == [1, 2]
