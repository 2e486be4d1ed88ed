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
        # one gather for all factors: each group's codes, padded with a constant 1 (index 3n)
        pad = 3 * qubits
        parts, self.sizes = [], []
        for start, length in self.groups:
            code = _entry_index(length)
            idx = 3 * (start + torch.arange(length))[:, None] + code
            if length < longest:
                idx = torch.cat([idx, torch.full((longest - length, idx.shape[1]), pad)])
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
        """Per group, its factor for every block and angle set: (B, L, 2^g, 2^g)."""
        half = theta * 0.5
        c, s = torch.cos(half), torch.sin(half)
        table = torch.stack([c, s, -s], -1).flatten(-2)  # (B, L, 3n)
        table = torch.cat([table, torch.ones_like(table[..., :1])], -1)
        entries = table.index_select(-1, self.gather.flatten()).unflatten(-1, self.gather.shape)
        flat = entries.prod(-2)  # (B, L, sum 4^g)
        return [f.unflatten(-1, (s, s)) for f, s in
                zip(flat.split([s * s for s in self.sizes], -1), self.sizes, strict=True)]


def _layer(x: torch.Tensor, factors, outs: list | None = None) -> torch.Tensor:
    """Apply one rotation layer to x (B, 2^n), last group first (see the module docstring)."""
    batch = x.shape[0]
    for f in reversed(factors):
        x = torch.bmm(f, x.view(batch, -1, f.shape[-1]).transpose(1, 2))
        if outs is not None:
            outs.append(x)
        x = x.view(batch, -1)
    return x


def ry_forward(theta: torch.Tensor, plan: RyPlan, keep: bool):
    """The final state (B, 2^n) for angles (B, L, n); with ``keep``, also every factor and the
    output of every factor application, for :func:`ry_backward`."""
    batch, blocks = theta.shape[0], theta.shape[1]
    factors = [f.unbind(1) for f in plan.factors(theta)]
    per_block = list(zip(*factors, strict=True))
    x = torch.zeros(batch, 2**plan.qubits, dtype=theta.dtype, device=theta.device)
    x[:, 0] = 1
    kept = []
    for b in range(blocks):
        if b:
            x = x.index_select(1, plan.perm)
        outs = [] if keep else None
        x = _layer(x, per_block[b], outs)
        kept.append(outs)
    return x.index_select(1, plan.perm), per_block, kept


def ry_backward(lam: torch.Tensor, plan: RyPlan, per_block, kept) -> torch.Tensor:
    """dL/dtheta (B, L, n) from lam = dL/dpsi (B, 2^n) of the final state."""
    batch, groups = lam.shape[0], plan.groups
    count, blocks = len(groups), len(kept)
    lam = lam.index_select(1, plan.inverse)
    cs = [lam.new_empty(blocks, batch, 2**ln, 2**ln) for _, ln in groups]
    for b in reversed(range(blocks)):
        outs, fs = kept[b], per_block[b]
        for g in range(count):  # the reverse of the forward's order: group 0 first
            y = outs[count - 1 - g]  # (B, 2^g, rest), this factor's output
            mu = lam.view(y.shape)
            torch.bmm(mu, y.transpose(1, 2), out=cs[g][b])
            if b or g < count - 1:
                lam = torch.bmm(mu.transpose(1, 2), fs[g]).view(batch, -1)
        if b:
            lam = lam.index_select(1, plan.inverse)
    grads = [c.flatten(2) @ plan.signs_for(ln, c.dtype) for c, (_, ln) in zip(cs, groups, strict=True)]
    return torch.cat(grads, 2).transpose(0, 1)


class RyProbs(torch.autograd.Function):
    """Probabilities (B, 2^n) of the ry circuit for angles (B, L, n), computed in ``work`` dtype
    and returned in the angles' dtype."""

    @staticmethod
    def forward(ctx, theta, plan, work):
        psi, per_block, kept = ry_forward(theta.to(work), plan, keep=ctx.needs_input_grad[0])
        ctx.plan, ctx.per_block, ctx.kept, ctx.psi = plan, per_block, kept, psi
        ctx.dtype = theta.dtype
        return (psi * psi).to(theta.dtype)

    @staticmethod
    def backward(ctx, grad_p):
        psi = ctx.psi
        lam = 2 * psi * grad_p.to(psi.dtype)
        grad = ry_backward(lam, ctx.plan, ctx.per_block, ctx.kept)
        ctx.per_block = ctx.kept = ctx.psi = None
        return grad.to(ctx.dtype), None, None
