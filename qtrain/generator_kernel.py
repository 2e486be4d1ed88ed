"""``--compile``'s whole generator as one autograd node: angles -> the named weight tensors.

The ry circuit, the post-processing, the mapping and the per-tensor standardisation run in one
call to the compiled library each way (``gen_forward`` and ``gen_backward`` in
``qtrain/map_kernel.cpp``, on top of the kernels of :mod:`qtrain.native_kernel` and
:mod:`qtrain.mapping_kernel`), with their buffers in one work space. The kernel writes the
target's tensors (each its own) and reads their gradients where autograd hands them over: no
split, views or concatenation. Within a training step every torch call costs several
microseconds (the network has just pushed the caches out): timed inside the toolkit MNIST CNN's
~6.5 ms step, the node's forward + backward took 0.56-0.58 ms, against 0.72 ms for a first
version that called the circuit's and the mapping's wrappers in turn (an ad-hoc script;
BENCHMARKS.md, fifth pass).

It applies where those kernels cover the generator whole: ``grad="backprop"`` with exact
probabilities (no shots), a mapping with one hidden layer and fewer than 32 outputs, ``scaling
"tensor"`` and float32 parameters on the CPU. :func:`generate` returns ``None`` otherwise, and
:meth:`qtrain.QuantumTrain.generate` takes the generator's own path (whose kernels are the same).
"""

from __future__ import annotations

import ctypes

import torch

from .mapping_kernel import float32_cpu, kernel_plan
from .native_kernel import load, stores_blocks
from .ry_adjoint import grad_needed
from .simulate import EXACT_QUBITS


class _Shape(ctypes.Structure):
    _fields_ = [("L", ctypes.c_int), ("n", ctypes.c_int), ("exact", ctypes.c_int), ("stored", ctypes.c_int),
                ("rows", ctypes.c_int64), ("lob", ctypes.c_int), ("H", ctypes.c_int), ("K", ctypes.c_int),
                ("act", ctypes.c_int), ("T", ctypes.c_int), ("numels", ctypes.c_void_p)]


class _Layout:
    """The work space of one (generator, precision, with or without the angles' gradient): byte
    offsets of each buffer in one allocation, and the shape the kernel reads."""

    def __init__(self, plan, blocks: int, exact: bool, keep: bool):
        n, num, width, k = plan.qubits, plan.num, plan.width, plan.k
        itemsize = 8 if exact else 4
        stored = keep and stores_blocks(blocks, n, torch.float64 if exact else torch.float32)
        sizes = {"states": (blocks if stored else 1) * num * itemsize, "probs": 4 * num, "x": 4 * num,
                 "slope": 4 * num, "A": 4 * num * width, "D": 4 * num * width if plan.gelu else 0,
                 "mapped": 4 * num * k, "centred": 4 * plan.size, "istd": 4 * len(plan.numel_list)}
        self.offsets, total = {}, 0
        for name, size in sizes.items():
            self.offsets[name] = total
            total += -(-size // 64) * 64  # 64-byte aligned, as the kernels' vector loads prefer
        self.bytes = total
        self.numels = plan.numels  # kept alive: the shape points at it
        self.shape = _Shape(blocks, n, int(exact), int(stored), plan.rows, plan.lob, width, k, plan.act,
                            len(plan.numel_list), plan.numels.data_ptr())
        self.backward_bytes = 4 * num * k + 4 * num + 8 * blocks * n  # gflat, gp, the angles' in float64


def _pointers(tensors) -> ctypes.Array:
    return (ctypes.c_void_p * len(tensors))(*[t.data_ptr() for t in tensors])


class GeneratorKernel(torch.autograd.Function):
    """(angles, mapping, gain, shift) -> the generated tensors, in ``shapes``."""

    @staticmethod
    def forward(ctx, angles, w1, b1, w2, b2, gain, shift, ref, plan, exact, shapes, keep):
        kernel = load()
        blocks = angles.numel() // plan.qubits
        key = (exact, keep, blocks)
        lay = plan.layouts.get(key) or plan.layouts.setdefault(key, _Layout(plan, blocks, exact, keep))
        ws = torch.empty(lay.bytes, dtype=torch.uint8)
        outs = tuple(torch.empty(s) for s in shapes)
        at = ws.data_ptr()
        o = {name: at + off for name, off in lay.offsets.items()}
        angles, w1, b1, w2, b2, gain, shift = (t.contiguous() for t in (angles, w1, b1, w2, b2, gain, shift))
        kernel.gen_forward(ctypes.byref(lay.shape), angles.data_ptr(), o["states"], o["probs"], *plan.post,
                           w1.data_ptr(), b1.data_ptr(), w2.data_ptr(), b2.data_ptr(), o["x"], o["slope"],
                           o["A"], o["D"], o["mapped"], ref.data_ptr(), gain.data_ptr(), shift.data_ptr(),
                           o["centred"], o["istd"], _pointers(outs))
        ctx.lay, ctx.ws, ctx.o, ctx.kept = lay, ws, o, (angles, w1, w2, ref, gain)
        return outs

    @staticmethod
    def backward(ctx, *grads):
        lay, o = ctx.lay, ctx.o
        angles, w1, w2, ref, gain = ctx.kept
        grads = [g if g.is_contiguous() else g.contiguous() for g in grads]
        work = torch.empty(lay.backward_bytes, dtype=torch.uint8)
        num, k = 1 << lay.shape.n, lay.shape.K
        gflat = work.data_ptr()
        gp, gdouble = gflat + 4 * num * k, gflat + 4 * num * (k + 1)
        gangles = torch.empty_like(angles) if ctx.needs_input_grad[0] else None
        gw1, gb1, gw2 = torch.empty_like(w1), torch.empty(w1.shape[0]), torch.empty_like(w2)
        gb2, ggain, gshift = torch.empty(k), torch.empty_like(gain), torch.empty_like(gain)
        load().gen_backward(ctypes.byref(lay.shape), _pointers(grads), angles.data_ptr(), o["states"], o["x"],
                            o["slope"], o["A"], o["D"], w1.data_ptr(), w2.data_ptr(), ref.data_ptr(),
                            gain.data_ptr(), o["centred"], o["istd"], gflat, gp, gdouble,
                            gw1.data_ptr(), gb1.data_ptr(), gw2.data_ptr(), gb2.data_ptr(), ggain.data_ptr(),
                            gshift.data_ptr(), gangles.data_ptr() if gangles is not None else None)
        return gangles, gw1, gb1, gw2, gb2, ggain, gshift, None, None, None, None, None


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
    if not float32_cpu(gen.angles, first.weight, last.weight, gen.gain):
        return None
    exact = gen.estimator.simulator.precision == "exact" and gen.circuit.qubits <= EXACT_QUBITS
    gen.estimator._count(1)
    return GeneratorKernel.apply(gen.angles, first.weight, first.bias, last.weight, last.bias, gen.gain,
                                 gen.shift, gen.ref, plan, exact, shapes, grad_needed(gen.angles))
