"""Angles -> probabilities -> mapping MLP -> the flat vector of generated weights."""

from __future__ import annotations

import torch
from torch import nn

from .circuits import Circuit
from .config import QTConfig
from .fused import BitsLinear, Features, LinearColumn, LinearRows, Segments, Standardise

ROWS_MIN_OUT = 32  # output width from which LinearRows beats addmm (benchmarks/bench_step.py)

_ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh, "none": nn.Identity}


def basis_bits(n: int) -> torch.Tensor:
    """The n bits of every basis index as +-1, qubit 0 the most significant: (2^n, n)."""
    idx = torch.arange(2**n)
    bits = (idx[:, None] >> torch.arange(n - 1, -1, -1)) & 1
    return bits.float() * 2 - 1


def mapping_mlp(inputs: int, hidden, outputs: int, act: str) -> nn.Sequential:
    widths = [inputs, *hidden, outputs]
    layers: list[nn.Module] = []
    for i in range(len(widths) - 1):
        if i:
            layers.append(_ACTIVATIONS[act]())
        layers.append(nn.Linear(widths[i], widths[i + 1]))
    return nn.Sequential(*layers)


class WeightGenerator(nn.Module):
    """Generates M weights from a circuit's probabilities and a mapping MLP.

    Args:
        circuit: the ansatz and its size (n qubits).
        chunk: k, the weights the mapping emits per basis state.
        cfg: mapping, post-processing, scaling and backend settings.
        numels: the sizes of the generated tensors, in order (they sum to M).
        init_std, init_mean: per tensor, the statistics of its initial values; with
            ``scaling="tensor"`` each generated tensor starts with exactly this std and mean.
    """

    # set by qtrain.compiled.use_compiled_kernel (--compile): the post-processing, the mapping and
    # the scaling by the C++ kernel of qtrain.mapping_kernel where it applies
    compiled = False

    def __init__(self, circuit: Circuit, chunk: int, cfg: QTConfig, numels: list[int],
                 init_std: torch.Tensor, init_mean: torch.Tensor):
        super().__init__()
        self.circuit, self.chunk, self.cfg = circuit, chunk, cfg
        self.size = sum(numels)
        self.angles = nn.Parameter(circuit.init_angles())
        self.mapping = mapping_mlp(circuit.qubits + 1, cfg.mapping_hidden, chunk, cfg.mapping_act)
        hi = (circuit.qubits + 1) // 2
        self.register_buffer("bits_hi", basis_bits(hi), persistent=False)
        self.register_buffer("bits_lo", basis_bits(circuit.qubits - hi), persistent=False)
        if cfg.scaling == "tensor":
            # gain and shift are in units of a per-tensor reference scale (the init std), so
            # Adam moves every tensor's scale by the same relative step, whatever its size
            ref = torch.where(init_std > 0, init_std, init_mean.abs())
            ref = torch.where(ref > 0, ref, torch.ones_like(ref)).float()
            self.register_buffer("ref", ref)
            self.gain = nn.Parameter(init_std.float() / ref)
            self.shift = nn.Parameter(init_mean.float() / ref)
            self.segments = Segments(numels)
            self.register_buffer("counts", torch.tensor(numels).float(), persistent=False)
        self._estimator = None

    @property
    def estimator(self):
        """Runs the circuit by ``cfg.grad`` and ``cfg.shots``, and counts what it runs."""
        if self._estimator is None:
            from .gradients import make_estimator

            self._estimator = make_estimator(self.circuit, self.cfg)
        return self._estimator

    @property
    def circuit_executions(self) -> int:
        """Circuits run so far by this generator (forward passes and gradient estimates)."""
        return self._estimator.executions if self._estimator is not None else 0

    def probabilities(self) -> torch.Tensor:
        """p_i = |<i|psi>|^2 for every basis state i: (2^n,), estimated from ``cfg.shots``
        measurements when set; the angles' gradient follows ``cfg.grad``."""
        return self.estimator(self.angles)

    def features(self, p: torch.Tensor) -> torch.Tensor:
        """The toolkit's post-processing: (beta tanh(gamma 2^(n-1) p))^alpha, minus its mean."""
        c = self.cfg
        return Features.apply(p, c.gamma * 2 ** (self.circuit.qubits - 1), c.beta, c.alpha)

    # --compile-network leaves the generator out of torch.compile: its hand-fused steps (and
    # --compile's kernels) measured faster than Inductor's code for them
    @torch.compiler.disable
    def forward(self) -> torch.Tensor:
        """The flat vector of M generated weights."""
        p = self.probabilities()
        if self.compiled:
            from .mapping_kernel import generate

            out = generate(self, p)
            if out is not None:
                return out
        flat = self._mapping(p).reshape(-1)
        if self.cfg.scaling == "none":
            return self.centre(flat)
        return Standardise.apply(flat, self.gain, self.shift, self.ref, self.counts, self.segments)

    def centre(self, flat: torch.Tensor) -> torch.Tensor:
        """``--scaling none``: the first M values of the mapping's output minus their mean."""
        flat = flat[: self.size]
        return flat - flat.mean()

    def _mapping(self, p: torch.Tensor) -> torch.Tensor:
        """The post-processing and the mapping MLP by torch ops: (2^n, k)."""
        h = self._first_layer(self.features(p))
        if len(self.mapping) > 1:  # the output layer (no hidden layer: it is the first)
            last = self.mapping[-1]
            h = self.mapping[1:-1](h)
            # by rows for wide outputs, by matrix-vector products for one (chunk 1, as at 13
            # qubits for the toolkit CNN), plain addmm between (the [h, 1] copy costs more than
            # the bias broadcast it saves)
            if last.out_features >= ROWS_MIN_OUT:
                h = LinearRows.apply(h, last.weight, last.bias)
            elif last.out_features == 1:
                h = LinearColumn.apply(h, last.weight, last.bias)
            else:
                h = last(h)
        return h

    def _first_layer(self, x: torch.Tensor) -> torch.Tensor:
        """The mapping's first Linear on [bits(i), x_i] for every basis state i: (2^n, width)."""
        layer = self.mapping[0]
        w = layer.weight
        return BitsLinear.apply(x.to(w.dtype), w, layer.bias, self.bits_hi.to(w.dtype),
                                self.bits_lo.to(w.dtype))
