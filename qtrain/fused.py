"""Autograd Functions that do a generator step in fewer passes than its plain torch form.

Each is checked against the plain form (values and gradients) in tests/test_generator.py.
"""

from __future__ import annotations

import torch


class BitsLinear(torch.autograd.Function):
    """A Linear layer on [bits(i), x_i] for every basis index i, without forming the inputs.

    The bits' part is a Kronecker sum: the high and the low half of the bits each go through
    their columns of the weight (2^(n/2) rows each) and are added by broadcasting. Forward and
    backward then take a few passes over the (2^n, width) output instead of a (2^n, n + 1)
    matmul and its two backward matmuls (benchmarks/bench_step.py).
    """

    @staticmethod
    def forward(ctx, x, weight, bias, bits_hi, bits_lo):
        hi, n = bits_hi.shape[1], weight.shape[1] - 1
        top = bits_hi @ weight[:, :hi].t()
        low = torch.addmm(bias, bits_lo, weight[:, hi:n].t())
        h = (top[:, None, :] + low[None, :, :]).reshape(-1, weight.shape[0])
        ctx.save_for_backward(x, weight, bits_hi, bits_lo)
        return h.addcmul_(x[:, None], weight[:, n])

    @staticmethod
    def backward(ctx, grad):
        x, weight, bits_hi, bits_lo = ctx.saved_tensors
        n = weight.shape[1] - 1
        g = grad.view(bits_hi.shape[0], bits_lo.shape[0], -1)
        g_top, g_low = g.sum(1), g.sum(0)
        grad_w = torch.cat([g_top.t() @ bits_hi, g_low.t() @ bits_lo, (grad.t() @ x)[:, None]], 1)
        return grad @ weight[:, n], grad_w, g_low.sum(0), None, None


class Standardise(torch.autograd.Function):
    """Per generated tensor t: (w - mean_t) / std_t * ref_t gain_t + ref_t shift_t.

    ``flat`` may be longer than sum(numels) (the mapping's padding past M): the rest is dropped.
    The tensors are contiguous slices of ``flat``, so every per-tensor sum is a plain reduction
    over a slice, and the per-tensor coefficients are applied slice by slice: no segment-index
    scatter or gather over all M weights (at M = 1M those took most of a training step).
    """

    @staticmethod
    def forward(ctx, flat, gain, shift, ref, counts, numels):
        size = sum(numels)
        parts = flat[:size].split(numels)
        mean = torch.stack([p.sum() for p in parts]) / counts
        centred = flat.new_empty(size)
        cparts = centred.split(numels)
        for p, c, m in zip(parts, cparts, mean.unbind(), strict=True):
            torch.sub(p, m, out=c)
        istd = torch.rsqrt(torch.stack([torch.dot(c, c) for c in cparts]) / counts + 1e-12)
        scale, offset = ref * gain * istd, ref * shift
        out = torch.empty_like(centred)
        for c, o, a, b in zip(cparts, out.split(numels), scale.unbind(), offset.unbind(), strict=True):
            torch.addcmul(b, c, a, out=o)
        ctx.save_for_backward(centred, istd, scale, ref, counts)
        ctx.numels, ctx.length = numels, flat.shape[0]
        return out

    @staticmethod
    def backward(ctx, grad):
        centred, istd, scale, ref, counts = ctx.saved_tensors
        numels = ctx.numels
        gparts, cparts = grad.split(numels), centred.split(numels)
        s1 = torch.stack([g.sum() for g in gparts])
        s2 = torch.stack([torch.dot(g, c) for g, c in zip(gparts, cparts, strict=True)])
        # d/dw = scale (dy - mean(dy) - c mean(dy c) / var), var = 1 / istd^2
        k1, k2 = -scale * s1 / counts, -scale * istd * istd * s2 / counts
        out = grad.new_empty(ctx.length)
        out[centred.shape[0]:].zero_()
        for g, c, o, a, b, k in zip(gparts, cparts, out[: centred.shape[0]].split(numels),
                                    scale.unbind(), k1.unbind(),
                                    k2.unbind(), strict=True):
            torch.addcmul(b, c, k, out=o).addcmul_(g, a)
        return out, ref * s2 * istd, ref * s1, None, None, None
