"""``--compile``'s generator step besides the circuit: the post-processing and a mapping MLP with one
hidden layer, forward and backward, by the C++ kernel ``qtrain/map_kernel.cpp`` (built into the
library of :mod:`qtrain.native_kernel`).

One autograd node from the probabilities p (2^n,) to the mapping's output (2^n, k): the kernel takes
a few passes over tiles of 64 basis states where the torch path takes one op (and one temporary of
2^n x H values) per step; it equals the torch path (:class:`qtrain.fused.Features`,
:class:`~qtrain.fused.BitsLinear`, the activation and the output Linear) to float32 rounding
(tests/test_mapping_kernel.py). Wide outputs (k >= 32) leave the output layer to
:class:`~qtrain.fused.LinearRows` (one GEMM beats the kernel's loops there): the kernel then ends at
the activation.

Handled: float32 on the CPU, a mapping with exactly one hidden layer (any width), activations
gelu, relu, tanh, none, 4 or more basis states. :func:`mapping` returns ``None`` for anything else
and the generator runs its torch path.
"""

from __future__ import annotations

import torch
from torch import nn

from .fused import LinearRows
from .native_kernel import load

ACT_CODES = {nn.Identity: 0, nn.GELU: 1, nn.ReLU: 2, nn.Tanh: 3}
ROWS_MIN_OUT = 32  # output width from which the output layer runs as one GEMM (LinearRows)


def _ptr(t: torch.Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


class MappingKernel(torch.autograd.Function):
    """out = mapping([bits(i), features(p)_i]) for every basis state i: (2^n, k), or the hidden
    activations (2^n, H) when ``plan.full`` is False. With ``plan.fuse_std`` the output is
    standardised as well (:class:`StandardiseKernel`, in the same node): (M,).

    The kernel's own buffers (x, its slope, the activations and gelu's derivative) are one
    workspace kept on ``ctx``: per-call Python costs count at these sizes (~0.2 ms of kernel work)."""

    @staticmethod
    def forward(ctx, p, w1, b1, w2, b2, gain, shift, ref, plan: _Plan):
        kernel = load()
        num, width, k = p.shape[0], w1.shape[0], plan.k
        w1, w2 = w1.contiguous(), w2.contiguous()
        hidden = num * width
        ws = torch.empty(2 * num + hidden * (2 if plan.gelu else 1))
        base = ws.data_ptr()
        out = torch.empty(num, k) if k else torch.empty(num, width)
        kernel.map_forward(p.contiguous().data_ptr(), num, plan.rows, plan.lob, width, k, plan.act,
                           *plan.post, w1.data_ptr(), b1.contiguous().data_ptr(), w2.data_ptr(),
                           b2.contiguous().data_ptr(), base, base + 4 * num, base + 8 * num,
                           base + 4 * (2 * num + hidden), out.data_ptr())
        ctx.ws, ctx.plan, ctx.w1, ctx.w2 = ws, plan, w1, w2
        if plan.fuse_std:
            gain = gain.contiguous()
            out, ctx.centred, ctx.istd = _standardise(kernel, out, gain, shift.contiguous(), ref, plan.numels,
                                                      plan.size)
            ctx.gain, ctx.ref = gain, ref
        return out

    @staticmethod
    def backward(ctx, grad):
        kernel, plan, w1 = load(), ctx.plan, ctx.w1
        num, width, k = plan.num, w1.shape[0], plan.k
        ggain = gshift = None
        grad = grad.contiguous()
        if plan.fuse_std:
            grad, ggain, gshift = _standardise_backward(kernel, grad, num * k, ctx.centred, ctx.istd, ctx.ref,
                                                        ctx.gain, plan.numels)
        gp, gw1, gb1 = torch.empty(num), torch.empty_like(w1), torch.empty(width)
        gw2, gb2 = (torch.empty(k, width), torch.empty(k)) if k else (None, None)
        base, hidden = ctx.ws.data_ptr(), num * width
        kernel.map_backward(grad.data_ptr(), num, plan.rows, plan.lob, width, k, plan.act, base,
                            base + 4 * num, base + 8 * num, base + 4 * (2 * num + hidden), w1.data_ptr(),
                            ctx.w2.data_ptr(), gp.data_ptr(), gw1.data_ptr(), gb1.data_ptr(),
                            gw2.data_ptr() if k else None, gb2.data_ptr() if k else None)
        return gp, gw1, gb1, gw2, gb2, ggain, gshift, None, None


class _Plan:
    """What :func:`generate` passes the kernel for one generator (fixed after construction)."""

    def __init__(self, gen):
        c, n = gen.cfg, gen.circuit.qubits
        layers = gen.mapping
        self.ok = len(layers) == 3 and type(layers[1]) in ACT_CODES
        if not self.ok:
            return
        self.qubits, self.num, self.lob = n, 2**n, n - gen.bits_hi.shape[1]
        self.width = layers[0].out_features
        self.layouts = {}  # qtrain.generator_kernel's work space layouts
        self.act = ACT_CODES[type(layers[1])]
        self.gelu = self.act == ACT_CODES[nn.GELU]
        self.post = (float(c.gamma * 2 ** (n - 1)), float(c.beta), float(c.alpha))
        self.full = layers[2].out_features < ROWS_MIN_OUT
        self.k = layers[2].out_features if self.full else 0
        self.tensor = c.scaling == "tensor"
        self.numel_list = list(gen.segments.numels) if self.tensor else None
        self.numels = torch.tensor(self.numel_list, dtype=torch.int64) if self.tensor else None
        self.size = gen.size
        # the basis states whose outputs hold the M weights, in whole tiles of 64 (the kernel's)
        tile, needed = min(64, self.num), -(-gen.size // gen.chunk)
        self.rows = min(self.num, -(-needed // tile) * tile)
        # standardised in the same node when the kernel ends at the output layer
        self.fuse_std = self.tensor and self.full

    def __getstate__(self):  # copies and pickles: the layouts hold ctypes pointers, rebuilt on use
        return {**self.__dict__, "layouts": {}}


def _standardise(kernel, flat, gain, shift, ref, numels, size: int):
    centred, out, istd = torch.empty(size), torch.empty(size), torch.empty(numels.shape[0])
    kernel.std_forward(flat.data_ptr(), numels.shape[0], numels.data_ptr(), ref.data_ptr(),
                       gain.data_ptr(), shift.data_ptr(), centred.data_ptr(), istd.data_ptr(),
                       out.data_ptr())
    return out, centred, istd


def _standardise_backward(kernel, grad, length, centred, istd, ref, gain, numels):
    gflat, ggain, gshift = torch.empty(length), torch.empty_like(gain), torch.empty_like(gain)
    kernel.std_backward(grad.data_ptr(), numels.shape[0], numels.data_ptr(), length, centred.data_ptr(),
                        istd.data_ptr(), ref.data_ptr(), gain.data_ptr(), gflat.data_ptr(),
                        ggain.data_ptr(), gshift.data_ptr())
    return gflat, ggain, gshift


class StandardiseKernel(torch.autograd.Function):
    """:class:`qtrain.fused.Standardise` by the kernel (float32 on the CPU)."""

    @staticmethod
    def forward(ctx, flat, gain, shift, ref, numels: torch.Tensor):
        gain, shift = gain.contiguous(), shift.contiguous()
        out, centred, istd = _standardise(load(), flat.contiguous(), gain, shift, ref, numels,
                                          int(numels.sum()))
        ctx.save_for_backward(centred, istd, ref, gain, numels)
        ctx.length = flat.shape[0]
        return out

    @staticmethod
    def backward(ctx, grad):
        saved = ctx.saved_tensors
        gflat, ggain, gshift = _standardise_backward(load(), grad.contiguous(), ctx.length, *saved)
        return gflat, ggain, gshift, None, None


def float32_cpu(*tensors: torch.Tensor) -> bool:
    """Whether the kernels can take these tensors: float32, on the CPU."""
    return all(t.dtype == torch.float32 and t.device.type == "cpu" for t in tensors)


def kernel_plan(gen) -> _Plan:
    """The kernel's plan for ``gen``, made on first use and kept on it."""
    plan = gen.__dict__.get("_kernel_plan")
    if plan is None:
        plan = gen.__dict__["_kernel_plan"] = _Plan(gen)
    return plan


def generate(gen, p: torch.Tensor) -> torch.Tensor | None:
    """The generator's flat output (M,) for probabilities ``p``: the post-processing, the mapping
    and the scaling by the kernel, or ``None`` where the kernel does not apply (the caller then runs
    the torch path)."""
    plan = kernel_plan(gen)
    if not plan.ok or p.shape[0] < 4:
        return None
    first, last = gen.mapping[0], gen.mapping[2]
    if not float32_cpu(p, first.weight, last.weight, *((gen.gain,) if plan.tensor else ())):
        return None
    std = (gen.gain, gen.shift, gen.ref) if plan.fuse_std else (None, None, None)
    out = MappingKernel.apply(p, first.weight, first.bias, last.weight, last.bias, *std, plan)
    if plan.fuse_std:
        return out
    if not plan.full:
        out = LinearRows.apply(out, last.weight, last.bias)
    flat = out.reshape(-1)
    if plan.tensor:
        return StandardiseKernel.apply(flat, gen.gain, gen.shift, gen.ref, plan.numels)
    return gen.centre(flat)
