"""Run a module on other tensors in place of its parameters: ``functional_call``, made cheap.

``torch.func.functional_call`` re-resolves every name, checks ties and swaps attributes through
``setattr`` on each call: ~0.15-0.2 ms of the toolkit MNIST CNN's ~6.7 ms training step with
``--compile`` (8 tensors; BENCHMARKS.md, fifth pass), where the whole generator costs ~0.6 ms.
:class:`ParamSwap` resolves the slots once (every alias of a tied parameter included) and swaps
the entries of the owning modules' ``_parameters`` dicts for the call. ``nn.Module.__getattr__``
reads from that dict, so the forward pass sees the new tensors, and autograd tracks them.

It falls back to ``functional_call`` wherever the dict swap could differ from it:
- a module class that overrides ``__setattr__`` or ``__getattr__`` (``nn.LSTM`` and ``nn.GRU``
  cache their weights in ``_flat_weights`` on ``setattr``);
- a name that is not a parameter of the module (a buffer);
- inside ``torch.compile`` (``--compile-network``), which traces ``functional_call``.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.func import functional_call


def _plain(module: nn.Module) -> bool:
    cls = type(module)
    return cls.__setattr__ is nn.Module.__setattr__ and cls.__getattr__ is nn.Module.__getattr__


class ParamSwap:
    """Calls ``module`` with tensors in place of its named parameters.

    Args:
        module: the network; its parameter set must not change after this is built (the
            slots are resolved once).
    """

    def __init__(self, module: nn.Module):
        self.module = module
        owner: dict[int, str] = {}
        self.slots: dict[str, list[tuple[dict, str]]] = {}
        plain = True
        for name, p in module.named_parameters(remove_duplicate=False):
            prefix, _, leaf = name.rpartition(".")
            sub = module.get_submodule(prefix)
            plain = plain and _plain(sub)
            # an alias of a tied parameter takes the tensor given for its first name
            canonical = owner.setdefault(id(p), name)
            self.slots.setdefault(canonical, []).append((sub._parameters, leaf))
        self.plain = plain

    def __call__(self, params: dict[str, torch.Tensor], args: tuple, kwargs: dict):
        slots = self.slots
        if not self.plain or torch.compiler.is_compiling() or not slots.keys() >= params.keys():
            return functional_call(self.module, params, args, kwargs)
        saved = []
        try:
            for name, t in params.items():
                for table, leaf in slots[name]:
                    saved.append((table, leaf, table[leaf]))
                    table[leaf] = t
            return self.module(*args, **kwargs)
        finally:
            for table, leaf, old in reversed(saved):
                table[leaf] = old
