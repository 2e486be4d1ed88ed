"""The ``ry`` circuit's probabilities as one autograd node, differentiated by the adjoint method.

How it is laid out (each choice measured in benchmarks/bench_circuit.py):

- real arithmetic; the rotation layer is one dense Kronecker factor per group of adjacent qubits,
  built for every block at once by one gather and one product;
- a factor is applied as ``F @ x^T`` with ``x`` viewed as (rest, group): one ``bmm`` that reads a
  transposed view and writes the group's qubits first, so the next group is then last. After all
  groups the qubit order is back where it started: no copies, no strided einsums;
- the whole CNOT ring is one precomputed index permutation;
- the forward pass keeps each factor's output (a few states per block, small next to the
  network), so the backward pass only carries the gradient back: per group and block one ``bmm``
  for it and one for the factor's gradient ``C = mu y^T``, from which all the group's angle
  gradients follow by one fixed linear map.
"""

from __future__ import annotations

import numpy as np
import torch


def _entry_index(length: int) -> torch.Tensor:
    """For a group of ``length`` qubits, which RY entry each qubit contributes to F[i, j]:
    (length, 4^length) codes 0 (cos), 1 (sin), 2 (-sin), qubit 0 the most significant."""
    size = 2**length
    i = np.arange(size)[:, None] >> np.arange(length - 1, -1, -1)  # (size, length) bits
    ii, jj = i[:, None, :] & 1, i[None, :, :] & 1
    code = np.where(ii == jj, 0, np.where(ii == 1, 1, 2))  # RY = [[c, -s], [s, c]]
    return torch.from_numpy(code.reshape(size * size, length).T.copy())


def _sign_map(length: int) -> torch.Tensor:
    """(4^length, length) S with dL/dtheta_q = C.flatten() @ S[:, q]: +-1/2 on the pairs
    (i, i with bit q cleared) of C = sum mu y^T (the adjoint rule <mu| A_q |y> / 2)."""
    size = 2**length
    s = torch.zeros(size, size, length, dtype=torch.float64)
    for q in range(length):
        bit = 1 << (length - 1 - q)
        r = torch.arange(size)
        r = r[(r & bit) != 0]
        s[r, r ^ bit, q] = 0.5
        s[r ^ bit, r, q] = -0.5
    return s.reshape(size * size, length)


class RyPlan:
    """Precomputed indices for one circuit size on one device: groups, ring permutation, the
    gather that builds every factor, and the gradient sign maps.

    Args:
        qubits: n.
        groups: (start, length) of each Kronecker factor, contiguous, covering 0..n-1.
        perm: the ring permutation, ``state[..., perm]`` applies the whole CNOT ring.
        device: where the indices live.
    """

    def __init__(self, qubits: int, groups, perm: torch.Tensor, device):
        self.qubits, self.groups = qubits, list(groups)
        self.perm = perm.to(device)
        self.inverse = torch.argsort(self.perm)
        longest = max(length for _, length in self.groups)
        # one gather for all factors from a table of rows cos (q), sin (n + q), -sin (2n + q)
        # and a constant 1 (3n) that pads the shorter groups
        parts, self.sizes = [], []
        for start, length in self.groups:
            idx = _entry_index(length) * qubits + (start + torch.arange(length))[:, None]
            if length < longest:
                idx = torch.cat([idx, torch.full((longest - length, idx.shape[1]), 3 * qubits)])
            parts.append(idx)
            self.sizes.append(2**length)
        self.gather = torch.cat(parts, 1).to(device)  # (longest, sum 4^g)
        self.signs = {}
        self.device = device

    def signs_for(self, length: int, dtype: torch.dtype) -> torch.Tensor:
        key = (length, dtype)
        if key not in self.signs:
            self.signs[key] = _sign_map(length).to(self.device, dtype)
        return self.signs[key]

    def factors(self, theta: torch.Tensor) -> list[torch.Tensor]:
        """Per group, its factor for every block and angle set: (L, B, 2^g, 2^g)."""
        batch, blocks, n = theta.shape
        half = theta.transpose(0, 1).reshape(-1, n).t() * 0.5
        c, s = torch.cos(half), torch.sin(half)
        table = torch.cat([c, s, -s, torch.ones_like(c[:1])])  # (3n + 1, B L)
        entries = table.index_select(0, self.gather.flatten()).view(*self.gather.shape, -1)
        flat = entries.prod(0).t().contiguous().view(blocks, batch, -1)
        return [f.unflatten(-1, (s, s)) for f, s in
                zip(flat.split([s * s for s in self.sizes], -1), self.sizes, strict=True)]


def _gathers(src: torch.Tensor, dst: torch.Tensor, index: torch.Tensor):
    """For every block b, a callable writing ``src[b][:, index]`` into ``dst[b]`` (both
    (L, B, 2^n)); a 1-D gather when B is 1, which is measurably cheaper."""
    if src.shape[1] == 1:
        pairs = zip(src.view(src.shape[0], src.shape[2]).unbind(0),
                    dst.view(dst.shape[0], dst.shape[2]).unbind(0),
                    strict=True)
        return [lambda s=s, d=d: torch.index_select(s, 0, index, out=d) for s, d in pairs]
    pairs = zip(src.unbind(0), dst.unbind(0), strict=True)
    return [lambda s=s, d=d: torch.index_select(s, 1, index, out=d) for s, d in pairs]


def _views(buf: torch.Tensor, size: int, transpose: bool = False):
    """Per block, ``buf[b]`` (B, 2^n) viewed as (B, size, rest), or as (B, rest, size)."""
    blocks, batch, dim = buf.shape
    if transpose:
        return buf.view(blocks, batch, dim // size, size).unbind(0)
    return buf.view(blocks, batch, size, dim // size).unbind(0)


def ry_forward(theta: torch.Tensor, plan: RyPlan, keep: bool):
    """The final state (B, 2^n) for angles (B, L, n). With ``keep``, also what
    :func:`ry_backward` needs: the factors, and the output of every factor application, one
    (L, B, 2^n) buffer per group (without it, one block's worth of buffers is reused)."""
    batch, blocks = theta.shape[0], theta.shape[1]
    factors = plan.factors(theta)
    count, dim = len(factors), 2**plan.qubits
    slots = blocks if keep else 1
    inputs = theta.new_zeros(slots, batch, dim)  # each block's input, after the ring
    inputs[0, :, 0] = 1
    outputs = [theta.new_empty(slots, batch, dim) for _ in factors]
    ops = []  # per group: (factors, input views, output views), block by block
    for g, f in enumerate(factors):
        size = f.shape[-1]
        src = inputs if g == count - 1 else outputs[g + 1]
        ins = [v.transpose(1, 2) for v in _views(src, size, transpose=True)]
        ops.append((f.unbind(0), ins, _views(outputs[g], size)))
    ring = _gathers(outputs[0][:-1], inputs[1:], plan.perm) if keep else \
        _gathers(outputs[0], inputs, plan.perm)
    for b in range(blocks):
        slot = b if keep else 0
        if b:
            ring[b - 1 if keep else 0]()
        for fs, ins, outs in reversed(ops):
            torch.bmm(fs[b], ins[slot], out=outs[slot])
    last = outputs[0][-1]
    psi = last.view(-1).index_select(0, plan.perm).view(batch, -1) if batch == 1 else \
        last.index_select(1, plan.perm)
    return psi, factors, outputs if keep else None


def ry_backward(lam: torch.Tensor, plan: RyPlan, factors, kept) -> torch.Tensor:
    """dL/dtheta (B, L, n) from lam = dL/dpsi (B, 2^n) of the final state."""
    batch, count, blocks = lam.shape[0], len(factors), kept[0].shape[0]
    grads = [torch.empty_like(y) for y in kept]  # dL/d(each factor's output)
    to_input = lam.new_empty(blocks, batch, lam.shape[1])  # dL/d(each block's input)
    ops = []
    for g, f in enumerate(factors):
        size = f.shape[-1]
        dst = to_input if g == count - 1 else grads[g + 1]
        mus = [v.transpose(1, 2) for v in _views(grads[g], size)]
        ops.append((f.unbind(0), mus, _views(dst, size, transpose=True)))
    last = grads[0][-1]
    if batch == 1:
        torch.index_select(lam.view(-1), 0, plan.inverse, out=last.view(-1))
    else:
        torch.index_select(lam, 1, plan.inverse, out=last)
    ring = _gathers(to_input[1:], grads[0][:-1], plan.inverse)
    for b in reversed(range(blocks)):
        for g, (fs, mus, dsts) in enumerate(ops):
            if b or g < count - 1:
                torch.bmm(mus[b], fs[b], out=dsts[b])
        if b:
            ring[b - 1]()
    out = []
    for g, (mu, y) in enumerate(zip(grads, kept, strict=True)):
        size = factors[g].shape[-1]
        mu, y = mu.view(-1, size, mu.shape[-1] // size), y.view(-1, size, y.shape[-1] // size)
        c = torch.bmm(mu, y.transpose(1, 2)).flatten(1)  # C = sum mu y^T per block and batch row
        out.append(c @ plan.signs_for(plan.groups[g][1], c.dtype))
    return torch.cat(out, 1).view(blocks, batch, -1).transpose(0, 1)


class RyProbs(torch.autograd.Function):
    """Probabilities (B, 2^n) of the ry circuit for angles (B, L, n), computed in ``work`` dtype
    and returned in the angles' dtype."""

    @staticmethod
    def forward(ctx, theta, plan, work):
        psi, factors, kept = ry_forward(theta.to(work), plan, keep=ctx.needs_input_grad[0])
        ctx.plan, ctx.factors, ctx.kept, ctx.psi = plan, factors, kept, psi
        ctx.dtype = theta.dtype
        return (psi * psi).to(theta.dtype)

    @staticmethod
    def backward(ctx, grad_p):
        psi = ctx.psi
        lam = 2 * psi * grad_p.to(psi.dtype)
        grad = ry_backward(lam, ctx.plan, ctx.factors, ctx.kept)
        ctx.factors = ctx.kept = ctx.psi = None
        return grad.to(ctx.dtype), None, None
