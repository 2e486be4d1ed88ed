"""``--compile``'s whole generator as one autograd node: angles -> the named weight tensors.

The circuit kernel (:func:`qtrain.native_kernel.circuit_forward`), the post-processing, mapping
and standardisation kernel (:func:`qtrain.mapping_kernel.map_forward`) and the cut into the
target's tensors run in one ``autograd.Function``; its backward pass takes the tensors'
gradients straight back to the angles and the mapping. Against the same kernels as separate
nodes (circuit, mapping, then ``split`` and a ``view`` per tensor) this drops about a dozen
autograd nodes and their Python per step: the toolkit MNIST CNN's generator costs ~0.6 ms
rather than ~0.75 ms of a ~6.7 ms training step (benchmarks/bench_step.py).

It applies where the kernels cover the generator whole: ``grad="backprop"`` with exact
probabilities (no shots), a mapping with one hidden layer and fewer than 32 outputs, ``scaling
"tensor"`` and float32 parameters on the CPU. :func:`generate` returns ``None`` otherwise, and
:meth:`qtrain.QuantumTrain.generate` takes the generator's own path.
"""

from __future__ import annotations

import types

import torch

from .mapping_kernel import kernel_plan, map_backward, map_forward
from .native_kernel import circuit_backward, circuit_forward
from .simulate import EXACT_QUBITS


class GeneratorKernel(torch.autograd.Function):
    """(angles, mapping, gain, shift) -> the generated tensors, in ``shapes``."""

    @staticmethod
    def forward(ctx, angles, w1, b1, w2, b2, gain, shift, ref, plan, dtype, shapes):
        ctx.circuit, ctx.mapping = types.SimpleNamespace(), types.SimpleNamespace()
        n = plan.qubits
        probs = circuit_forward(ctx.circuit, angles.reshape(1, -1, n), dtype, ctx.needs_input_grad[0])
        flat = map_forward(ctx.mapping, probs.reshape(-1), w1, b1, w2, b2, gain, shift, ref, plan)
        ctx.angles_shape = angles.shape
        return tuple(t.view(s) for t, s in zip(flat.split(plan.numel_list), shapes, strict=True))

    @staticmethod
    def backward(ctx, *grads):
        grad = torch.cat([g.reshape(-1) for g in grads])
        gp, gw1, gb1, gw2, gb2, ggain, gshift = map_backward(ctx.mapping, grad)
        gangles = None
        if ctx.needs_input_grad[0]:
            gangles = circuit_backward(ctx.circuit, gp.reshape(1, -1)).reshape(ctx.angles_shape)
        return gangles, gw1, gb1, gw2, gb2, ggain, gshift, None, None, None, None


# torch.compile (--compile-network) runs this eager, as it does the generator's forward
@torch.compiler.disable
def generate(gen, shapes: list[tuple[int, ...]]) -> tuple[torch.Tensor, ...] | None:
    """The generated tensors of ``gen`` (a compiled :class:`~qtrain.generator.WeightGenerator`)
    in ``shapes``, or ``None`` where this node does not cover the generator."""
    cfg = gen.cfg
    if cfg.grad != "backprop" or cfg.shots:
        return None
    plan = kernel_plan(gen)
    if not (plan.ok and plan.fuse_std):
        return None
    first, last = gen.mapping[0], gen.mapping[2]
    for t in (gen.angles, first.weight, last.weight, gen.gain):
        if t.dtype != torch.float32 or t.device.type != "cpu":
            return None
    sim = gen.estimator.simulator
    exact = sim.precision == "exact" and gen.circuit.qubits <= EXACT_QUBITS
    gen.estimator._count(1)
    return GeneratorKernel.apply(gen.angles, first.weight, first.bias, last.weight, last.bias, gen.gain,
                                 gen.shift, gen.ref, plan, torch.float64 if exact else torch.float32,
                                 shapes)
