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
    activations (2^n, H) when ``full`` is False. With ``std`` = (gain, shift, ref, numels) the
    output is standardised as well (:class:`StandardiseKernel`, in the same node): (M,)."""

    @staticmethod
    def forward(ctx, p, w1, b1, w2, b2, gain, shift, lob: int, act: int, post: tuple[float, float, float],
                full: bool, std: tuple[torch.Tensor, torch.Tensor] | None):
        kernel = load()
        num, width = p.shape[0], w1.shape[0]
        k = w2.shape[0] if full else 0
        w1, w2 = w1.contiguous(), w2.contiguous()
        p = p.contiguous()
        x, slope = torch.empty(num), torch.empty(num)
        a, d = torch.empty(num * width), torch.empty(num * width if act == ACT_CODES[nn.GELU] else 0)
        out = torch.empty(num, k if full else width)
        kernel.map_forward(p.data_ptr(), num, lob, width, k, act, *post, w1.data_ptr(),
                           b1.contiguous().data_ptr(), w2.data_ptr(), b2.contiguous().data_ptr(),
                           x.data_ptr(), slope.data_ptr(), a.data_ptr(), d.data_ptr(), out.data_ptr())
        saved = [x, slope, a, d, w1, w2]
        ctx.shape = (num, lob, width, k, act)
        if std is not None:
            ref, numels = std
            gain, shift = gain.contiguous(), shift.contiguous()
            out, centred, istd = _standardise(kernel, out.view(-1), gain, shift, ref, numels)
            saved += [centred, istd, ref, gain, numels]
        ctx.save_for_backward(*saved)
        return out

    @staticmethod
    def backward(ctx, grad):
        kernel = load()
        x, slope, a, d, w1, w2, *std = ctx.saved_tensors
        num, lob, width, k, act = ctx.shape
        grad = grad.contiguous()
        ggain = gshift = None
        if std:
            grad, ggain, gshift = _standardise_backward(kernel, grad, num * k, *std)
        gp, gw1, gb1 = torch.empty(num), torch.empty_like(w1), torch.empty(width)
        gw2, gb2 = torch.empty(max(k, 1), width), torch.empty(max(k, 1))
        kernel.map_backward(grad.data_ptr(), num, lob, width, k, act, x.data_ptr(), slope.data_ptr(),
                            a.data_ptr(), d.data_ptr(), w1.data_ptr(), w2.data_ptr(), gp.data_ptr(),
                            gw1.data_ptr(), gb1.data_ptr(), gw2.data_ptr(), gb2.data_ptr())
        if k == 0:
            gw2 = gb2 = None
        return gp, gw1, gb1, gw2, gb2, ggain, gshift, None, None, None, None, None


def _standardise(kernel, flat, gain, shift, ref, numels):
    size = int(numels.sum())
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
        out, centred, istd = _standardise(load(), flat.contiguous(), gain, shift, ref, numels)
        ctx.save_for_backward(centred, istd, ref, gain, numels)
        ctx.length = flat.shape[0]
        return out

    @staticmethod
    def backward(ctx, grad):
        saved = ctx.saved_tensors
        gflat, ggain, gshift = _standardise_backward(load(), grad.contiguous(), ctx.length, *saved)
        return gflat, ggain, gshift, None, None


def _cpu32(*tensors: torch.Tensor) -> bool:
    return all(t.dtype == torch.float32 and t.device.type == "cpu" for t in tensors)


def generate(gen, p: torch.Tensor) -> torch.Tensor | None:
    """The generator's flat output (M,) for probabilities ``p``: the post-processing, the mapping
    and the scaling by the kernel, or ``None`` where the kernel does not apply (the caller then runs
    the torch path)."""
    layers = gen.mapping
    if len(layers) != 3 or type(layers[1]) not in ACT_CODES:
        return None
    first, last = layers[0], layers[2]
    if not _cpu32(p, first.weight, first.bias, last.weight, last.bias) or p.shape[0] < 4:
        return None
    c, n = gen.cfg, gen.circuit.qubits
    post = (float(c.gamma * 2 ** (n - 1)), float(c.beta), float(c.alpha))
    full = last.out_features < ROWS_MIN_OUT
    tensor = c.scaling == "tensor" and _cpu32(gen.gain, gen.shift, gen.ref)
    if tensor:
        numels = getattr(gen, "_numels", None)
        if numels is None:
            numels = gen._numels = torch.tensor(gen.segments.numels, dtype=torch.int64)
        gain, shift, std = gen.gain, gen.shift, (gen.ref, numels)
    else:
        gain = shift = std = None
    out = MappingKernel.apply(p, first.weight, first.bias, last.weight, last.bias, gain, shift,
                              n - gen.bits_hi.shape[1], ACT_CODES[type(layers[1])], post, full,
                              std if full else None)
    if full and tensor:
        return out
    if not full:
        out = LinearRows.apply(out, last.weight, last.bias)
    flat = out.reshape(-1)
    if tensor:
        return StandardiseKernel.apply(flat, gen.gain, gen.shift, gen.ref, std[1])
    if c.scaling != "none":
        return None
    flat = flat[: gen.size]
    return flat - flat.mean()
