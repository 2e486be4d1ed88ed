"""QuantumTrain: a target network whose weights all come from a WeightGenerator."""

from __future__ import annotations

import torch
from torch import nn

from .circuits import Circuit
from .config import QTConfig
from .generator import WeightGenerator
from .layout import select, size_circuit
from .swap import ParamSwap


def _init_stats(tensors: list[torch.Tensor]):
    std, mean = [], []
    for t in tensors:
        t = t.detach().float()
        mean.append(t.mean())
        std.append(t.std(unbiased=False) if t.numel() > 1 else torch.ones(()))
    return torch.stack(std), torch.stack(mean)


class _Frozen(nn.Module):
    """The parameters kept at the model's values under ``freeze_rest``: saved, never trained."""

    def __init__(self, tensors: dict[str, torch.Tensor]):
        super().__init__()
        for name, t in tensors.items():
            self.register_buffer(name, t.detach().clone())


class QuantumTrain(nn.Module):
    """Wraps a target network so that its selected parameters are generated, not trained.

    ``parameters()`` yields only what is trained: the circuit angles, the mapping MLP, the
    per-tensor gain and shift, and the trainable parameters kept classical (unless
    ``config.freeze_rest`` keeps those frozen, as buffers). The target's own
    buffers (BatchNorm statistics) stay classical state and update in its forward pass.

    Args:
        model: any ``nn.Module``. Its current weights set the init-aware scaling.
        config: sizing, circuit and mapping settings.

    Example:
        >>> qt = QuantumTrain(model, QTConfig(blocks=8))
        >>> opt = torch.optim.Adam(qt.parameters(), lr=1e-2)
        >>> loss = F.cross_entropy(qt(x), y)
    """

    def __init__(self, model: nn.Module, config: QTConfig | None = None):
        super().__init__()
        cfg = config or QTConfig()
        layout = select(model, cfg.include, cfg.exclude)
        qubits, chunk = size_circuit(layout.size, cfg.qubits, cfg.chunk, cfg.max_auto_qubits)
        named = dict(model.named_parameters())
        std, mean = _init_stats([named[n] for n in layout.names])
        self.config, self.layout = cfg, layout
        self.circuit = Circuit(qubits, cfg.blocks, cfg.ansatz)
        self.generator = WeightGenerator(self.circuit, chunk, cfg, layout.numels, std, mean)
        rest = {n.replace(".", "/"): named[n] for n in layout.classical}
        self.classical = nn.ParameterDict({} if cfg.freeze_rest else rest)
        self.frozen = _Frozen(rest if cfg.freeze_rest else {})
        self.__dict__["target"] = model  # not a submodule: its parameters are not ours to train
        self.__dict__["_swap"] = ParamSwap(model)

    @property
    def chunk(self) -> int:
        return self.generator.chunk

    def generate(self) -> dict[str, torch.Tensor]:
        """The generated weights as named tensors of the target's shapes."""
        if self.generator.compiled:  # --compile: one node from the angles to the tensors
            from .generator_kernel import generate

            parts = generate(self.generator, self.layout.shapes)
            if parts is not None:
                return dict(zip(self.layout.names, parts, strict=True))
        return self.layout.unflatten(self.generator())

    def forward(self, *args, weights: dict[str, torch.Tensor] | None = None, **kwargs):
        """Run the target on the generated weights (computed now unless ``weights`` is given)."""
        params = dict(weights if weights is not None else self.generate())
        params.update({n.replace("/", "."): p for n, p in self.classical.items()})
        params.update({n.replace("/", "."): p for n, p in self.frozen.named_buffers()})
        return self._swap(params, args, kwargs)

    def train(self, mode: bool = True):
        super().train(mode)
        self.target.train(mode)
        return self

    def _apply(self, fn, recurse=True):
        super()._apply(fn, recurse)
        self.target._apply(fn, recurse)
        return self

    @torch.no_grad()
    def materialize(self, weights: dict[str, torch.Tensor] | None = None) -> nn.Module:
        """Copy the generated weights (``weights``, or generated now) into the target and return
        it: a plain classical model."""
        named = dict(self.target.named_parameters())
        for name, w in (weights if weights is not None else self.generate()).items():
            named[name].copy_(w)
        for name, w in self.frozen.named_buffers():  # copies: loading a checkpoint fills them
            named[name.replace("/", ".")].copy_(w)
        return self.target

    def counts(self) -> dict[str, int]:
        """Generated weights (M), the target's trainable size, and what is trained, by kind.

        ``compression_ratio`` is the target's trainable parameters (generated plus kept
        classical or frozen) over what the compressed form stores: the trainable Quantum-Train
        parameters plus any frozen rest. With everything generated it is M / trainable.
        ``generated_ratio`` is the same for the generated part alone: M over the angles,
        mapping and scaling.
        """
        g = self.generator
        scaling = g.gain.numel() + g.shift.numel() if hasattr(g, "gain") else 0
        classical = sum(p.numel() for p in self.classical.values())
        frozen = sum(b.numel() for b in self.frozen.buffers())
        out = {
            "generated": self.layout.size,
            "target_params": self.layout.size + classical + frozen,
            "angles": g.angles.numel(),
            "mapping": sum(p.numel() for p in g.mapping.parameters()),
            "scaling": scaling,
            "classical": classical,
            "frozen": frozen,
        }
        out["trainable_params"] = sum(p.numel() for p in self.parameters() if p.requires_grad)
        out["compression_ratio"] = out["target_params"] / (out["trainable_params"] + frozen)
        out["generated_ratio"] = out["generated"] / (out["angles"] + out["mapping"] + scaling)
        return out

