"""Autograd Functions that do a generator step in fewer passes than its plain torch form.

Each is checked against the plain form (values and gradients) in tests/test_generator.py.
"""

from __future__ import annotations

import torch


class Features(torch.autograd.Function):
    """The post-processing x = (beta tanh(k p)).clamp_min(1e-12)^alpha - mean, as one node: the
    forward runs the plain form's ops, the backward one short chain (d x / d xc as x / xc)."""

    @staticmethod
    def forward(ctx, p, k: float, beta: float, alpha: float):
        t = torch.tanh(k * p)
        xb = beta * t
        xc = xb.clamp_min(1e-12)  # a zero probability would make the gradient NaN
        x = xc**alpha
        ctx.save_for_backward(t, xb, xc, x)
        ctx.scale = alpha * beta * k
        return x - x.mean()

    @staticmethod
    def backward(ctx, grad):
        t, xb, xc, x = ctx.saved_tensors
        slope = torch.div(x, xc).mul_(torch.addcmul(torch.ones_like(t), t, t, value=-1))
        slope.masked_fill_(xb < 1e-12, 0)
        return (grad - grad.mean()).mul_(slope).mul_(ctx.scale), None, None, None


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
        ctx.save_for_backward(x, weight, bits_hi, bits_lo)
        # top + x w_n first, then low: both broadcasts run twice as fast as the other order;
        # w_n contiguous, or the broadcast loop runs unvectorised (10x slower)
        h = torch.addcmul(top[:, None, :], x.reshape(top.shape[0], -1, 1), weight[:, n].contiguous())
        return h.add_(low).view(-1, weight.shape[0])

    @staticmethod
    def backward(ctx, grad):
        x, weight, bits_hi, bits_lo = ctx.saved_tensors
        n = weight.shape[1] - 1
        g = grad.view(bits_hi.shape[0], bits_lo.shape[0], -1)
        g_top, g_low = g.sum(1), g.sum(0)
        grad_w = torch.cat([g_top.t() @ bits_hi, g_low.t() @ bits_lo, (grad.t() @ x)[:, None]], 1)
        return grad @ weight[:, n].contiguous(), grad_w, g_low.sum(0), None, None


class LinearRows(torch.autograd.Function):
    """``F.linear(h, weight, bias)`` for h (rows, in) with many rows, as one matmul of
    [h, 1] with [weight, bias]: ``addmm`` would first copy the broadcast bias into the whole
    (rows, out) output, and its backward reduce the gradient over the rows for the bias; here
    the weight's and the bias's gradients are one (in + 1, rows) x (rows, out) matmul
    (benchmarks/bench_step.py: the mapping's 16384 x 66 output layer)."""

    @staticmethod
    def forward(ctx, h, weight, bias):
        ones = torch.cat([h, h.new_ones(h.shape[0], 1)], 1)
        ctx.save_for_backward(ones, weight)
        return ones @ torch.cat([weight, bias[:, None]], 1).t()

    @staticmethod
    def backward(ctx, grad):
        ones, weight = ctx.saved_tensors
        grad_h = grad @ weight if ctx.needs_input_grad[0] else None
        grad_wb = (ones.t() @ grad).t()
        return grad_h, grad_wb[:, :-1], grad_wb[:, -1]


class LinearColumn(torch.autograd.Function):
    """``F.linear(h, weight, bias)`` for a single output (weight (1, in)), by matrix-vector
    products: addmm with one output column, and its backward's (rows, 1) x (1, in) product,
    run as unblocked matmuls (the latter 280 us for the 8192 x 20 mapping, against 15 us for
    the same products as a broadcast multiply)."""

    @staticmethod
    def forward(ctx, h, weight, bias):
        ctx.save_for_backward(h, weight)
        return torch.addmv(bias, h, weight[0]).unsqueeze(1)

    @staticmethod
    def backward(ctx, grad):
        h, weight = ctx.saved_tensors
        grad_h = grad * weight if ctx.needs_input_grad[0] else None
        return grad_h, torch.mv(h.t(), grad[:, 0]).unsqueeze(0), grad.sum(0)


DENSE_MAX = 16  # segments up to which short ones are summed by an indicator matrix
SLICE_MIN = 4096  # average elements per tensor above which per-slice ops beat a segment index


def number_scalars(device: torch.device) -> bool:
    """Whether per-segment scalars go to kernels as Python numbers (CPU: no device sync)."""
    return device.type == "cpu"


class Segments:
    """The generated tensors as contiguous segments of a flat vector: per-segment sums and
    per-segment affine maps, by slices when the segments are long (a few ops per tensor) and by
    a segment index when they are short (a few ops in all; index_add costs ~2 ns per element).

    Args:
        numels: the segments' lengths, in order.
    """

    def __init__(self, numels):
        self.numels, self.size = list(numels), sum(numels)
        self.by_slices = self.size >= SLICE_MIN * len(self.numels)
        self.index = None if self.by_slices else \
            torch.repeat_interleave(torch.arange(len(self.numels)), torch.tensor(self.numels))
        # few short segments: sums as one matrix-vector product with the 0/1 segment indicator
        # (T, size), ~4x faster than index_add (6,690 values in 8 tensors: 4 vs 16 us)
        self.dense = not self.by_slices and len(self.numels) <= DENSE_MAX
        self._on: dict[torch.device, torch.Tensor] = {}
        self._indicator: dict[tuple, torch.Tensor] = {}

    def _index(self, device: torch.device) -> torch.Tensor:
        if device not in self._on:
            self._on[device] = self.index.to(device)
        return self._on[device]

    def _dense(self, v: torch.Tensor) -> torch.Tensor:
        key = (v.device, v.dtype)
        if key not in self._indicator:
            index = self._index(v.device)
            ind = torch.zeros(len(self.numels), self.size, dtype=v.dtype, device=v.device)
            self._indicator[key] = ind.scatter_(0, index[None], 1)
        return self._indicator[key]

    def sums(self, v: torch.Tensor, w: torch.Tensor | None = None) -> torch.Tensor:
        """Per segment, sum(v), or sum(v * w) when ``w`` is given: (T,)."""
        if self.by_slices:
            if w is None:
                return torch.stack([p.sum() for p in v.split(self.numels)])
            return torch.stack([torch.dot(a, b) for a, b in
                                zip(v.split(self.numels), w.split(self.numels), strict=True)])
        v = v if w is None else v * w
        if self.dense:
            return torch.mv(self._dense(v), v)
        return v.new_zeros(len(self.numels)).index_add_(0, self._index(v.device), v)

    def affine(self, v: torch.Tensor, scale: torch.Tensor, offset: torch.Tensor, out: torch.Tensor,
               extra: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """out = v * scale_t + offset_t per segment, plus extra[0] * extra[1]_t if given."""
        if self.by_slices:
            # on CPU, add(b, v, alpha=a) runs a vectorised loop where addcmul with 0-d operands
            # runs a generic one at half the speed; alpha must be a number, hence tolist()
            cpu = number_scalars(out.device)
            scales = scale.tolist() if cpu else scale.unbind()
            parts = [out.split(self.numels), v.split(self.numels), scales, offset.unbind()]
            if extra is not None:
                parts += [extra[0].split(self.numels), extra[1].tolist() if cpu else extra[1].unbind()]
            for o, p, a, b, *more in zip(*parts, strict=True):
                if cpu:
                    torch.add(b, p, alpha=a, out=o)
                    if more:
                        o.add_(more[0], alpha=more[1])
                else:
                    torch.addcmul(b, p, a, out=o)
                    if more:
                        o.addcmul_(more[0], more[1])
            return out
        index = self._index(v.device)
        torch.addcmul(offset.index_select(0, index), v, scale.index_select(0, index), out=out)
        if extra is not None:
            out.addcmul_(extra[0], extra[1].index_select(0, index))
        return out


class Standardise(torch.autograd.Function):
    """Per generated tensor t: (w - mean_t) / std_t * ref_t gain_t + ref_t shift_t.

    ``flat`` may be longer than the segments (the mapping's padding past M): the rest is
    dropped inside, so no slice of the full vector (and its zero-filled backward) is needed.
    """

    @staticmethod
    def forward(ctx, flat, gain, shift, ref, counts, segs: Segments):
        part = flat[: segs.size]
        mean = segs.sums(part) / counts
        centred = segs.affine(part, torch.ones_like(mean), -mean, out=torch.empty_like(part))
        istd = torch.rsqrt(segs.sums(centred, centred) / counts + 1e-12)
        scale = ref * gain * istd
        out = segs.affine(centred, scale, ref * shift, out=torch.empty_like(part))
        ctx.save_for_backward(centred, istd, scale, ref, counts)
        ctx.segs, ctx.length = segs, flat.shape[0]
        return out

    @staticmethod
    def backward(ctx, grad):
        centred, istd, scale, ref, counts = ctx.saved_tensors
        segs = ctx.segs
        s1, s2 = segs.sums(grad), segs.sums(grad, centred)
        # d/dw = scale (dy - mean(dy) - c mean(dy c) / var), var = 1 / istd^2
        k1, k2 = -scale * s1 / counts, -scale * istd * istd * s2 / counts
        out = grad.new_empty(ctx.length)
        out[segs.size:].zero_()
        segs.affine(centred, k2, k1, out=out[: segs.size], extra=(grad, scale))
        return out, ref * s2 * istd, ref * s1, None, None, None
