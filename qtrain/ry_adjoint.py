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


def _permute(x: torch.Tensor, index: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """x[:, index] for x (B, 2^n); a 1-D gather when B is 1 (measurably cheaper)."""
    if x.shape[0] == 1:
        flat = None if out is None else out.view(-1)
        return torch.index_select(x.view(-1), 0, index, out=flat).view(1, -1)
    return torch.index_select(x, 1, index, out=out)


def ry_forward(theta: torch.Tensor, plan: RyPlan, keep: bool):
    """The final state (B, 2^n) for angles (B, L, n). With ``keep``, also what
    :func:`ry_backward` needs: the factors, and the output of every factor application, one
    (L, B, 2^n) buffer per group."""
    batch, blocks = theta.shape[0], theta.shape[1]
    factors = plan.factors(theta)
    dim = 2**plan.qubits
    kept = [theta.new_empty(blocks, batch, dim) for _ in factors] if keep else None
    x = theta.new_zeros(batch, dim)
    x[:, 0] = 1
    for b in range(blocks):
        if b:
            x = _permute(x, plan.perm)
        for g in reversed(range(len(factors))):
            f = factors[g][b]
            size = f.shape[-1]
            out = None if kept is None else kept[g][b].view(batch, size, -1)
            x = torch.bmm(f, x.view(batch, -1, size).transpose(1, 2), out=out).view(batch, -1)
    return _permute(x, plan.perm), factors, kept


def ry_backward(lam: torch.Tensor, plan: RyPlan, factors, kept) -> torch.Tensor:
    """dL/dtheta (B, L, n) from lam = dL/dpsi (B, 2^n) of the final state."""
    batch, count, blocks = lam.shape[0], len(factors), kept[0].shape[0]
    grads = [torch.empty_like(y) for y in kept]  # dL/d(each factor's output)
    _permute(lam, plan.inverse, out=grads[0][blocks - 1])
    for b in reversed(range(blocks)):
        for g in range(count):  # the reverse of the forward's order: group 0 first
            f = factors[g][b]
            size = f.shape[-1]
            mu = grads[g][b].view(batch, size, -1)
            if g + 1 < count:
                torch.bmm(mu.transpose(1, 2), f, out=grads[g + 1][b].view(batch, -1, size))
            elif b:
                x = torch.bmm(mu.transpose(1, 2), f).view(batch, -1)
                _permute(x, plan.inverse, out=grads[0][b - 1])
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
