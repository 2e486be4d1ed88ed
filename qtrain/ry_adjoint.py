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
  gradients follow by one fixed linear map;
- block 0 acts on |0...0>, so its states are products of the factors' first columns: its output
  is built by outer products and its C's by small products with the output's gradient.
"""

from __future__ import annotations

from functools import partial

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
        self.gather_flat = self.gather.flatten()
        self.signs = {}
        self.device = device
        self._free: dict[tuple, list[Workspace]] = {}

    def signs_for(self, dtype: torch.dtype) -> torch.Tensor:
        """Every group's sign map times 2 (the factor of dL/dpsi = 2 psi dL/dp, exact in
        floating point), one after the other as the factors are, with zero columns for the
        other groups' qubits: (sum 4^length, n)."""
        if dtype not in self.signs:
            full = torch.zeros(sum(s * s for s in self.sizes), self.qubits, dtype=torch.float64)
            row = 0
            for start, length in self.groups:
                full[row: row + 4**length, start: start + length] = 2 * _sign_map(length)
                row += 4**length
            self.signs[dtype] = full.to(self.device, dtype)
        return self.signs[dtype]

    def factors(self, theta: torch.Tensor, ws: Workspace) -> None:
        """Every group's factor for every block and angle set of theta (B, L, n), written into
        ``ws.factors`` (L, B, sum 4^g), each group's flattened after the previous one's;
        ``ws.table`` (3n + 1, L B) holds rows cos, sin, -sin of the half angles and a last row
        of ones, ``ws.entries`` (longest group * sum 4^g, L B) the gathered ones."""
        n, table, out, entries = theta.shape[-1], ws.table, ws.factors, ws.entries
        # the half angles and their negatives in the sin and -sin rows (in the table's dtype,
        # whatever the angles'), cos of the first, then sin of both in place: sin is odd
        signed = table[n: 3 * n].view(2, n, *theta.shape[1::-1])
        torch.mul(theta.permute(2, 1, 0), ws.halves, out=signed)
        torch.cos(table[n: 2 * n], out=table[:n])
        torch.sin(table[n: 3 * n], out=table[n: 3 * n])
        torch.index_select(table, 0, self.gather_flat, out=entries)
        torch.prod(entries.view(*self.gather.shape, -1), 0, out=out.view(-1, out.shape[-1]).t())

    def workspace(self, batch: int, blocks: int, dtype, keep: bool) -> Workspace:
        """A free workspace of this shape; give it back with :meth:`release` when done."""
        free = self._free.setdefault((batch, blocks, dtype, keep), [])
        ws = free.pop() if free else Workspace(self, batch, blocks, dtype, keep)
        ws.owner = None
        return ws

    def release(self, ws: Workspace) -> None:
        if any(w is ws for free in self._free.values() for w in free):
            return
        if len(self._free) > 8:  # many shapes (parameter-shift chunks): keep memory bounded
            self._free.clear()
        key = (ws.inputs.shape[1], ws.factors.shape[0], ws.inputs.dtype, ws.keep)
        self._free.setdefault(key, []).append(ws)


def _gather(src: torch.Tensor, dst: torch.Tensor, index: torch.Tensor):
    """A callable writing ``src[:, index]`` into ``dst`` (both (B, 2^n)); a 1-D gather when B
    is 1, which is measurably cheaper."""
    if src.shape[0] == 1:
        return partial(torch.index_select, src.view(-1), 0, index, out=dst.view(-1))
    return partial(torch.index_select, src, 1, index, out=dst)


def _matmul(a: torch.Tensor, b: torch.Tensor, out: torch.Tensor):
    """A callable writing the batched product ``a @ b`` into ``out`` (B, ., .): one ``mm`` of
    the 2-D views when B is 1 (5% faster than ``bmm`` at 13 qubits)."""
    if a.shape[0] == 1:
        return partial(torch.mm, a[0], b[0], out=out[0])
    return partial(torch.bmm, a, b, out=out)


def _views(buf: torch.Tensor, size: int, transpose: bool = False):
    """Per block, ``buf[b]`` (B, 2^n) viewed as (B, size, rest), or as (B, rest, size)."""
    blocks, batch, dim = buf.shape
    if transpose:
        return buf.view(blocks, batch, dim // size, size).unbind(0)
    return buf.view(blocks, batch, size, dim // size).unbind(0)


class Workspace:
    """The buffers of one ry evaluation and every view of them, built once and reused by later
    calls of the same shape (building the views costs more than the arithmetic at 13 qubits).

    With ``keep`` (a differentiable call) every factor application's output is kept, one
    (L, B, 2^n) buffer per group, for :meth:`backward`; without it, one block's worth is reused.
    """

    def __init__(self, plan: RyPlan, batch: int, blocks: int, dtype, keep: bool):
        self.plan, self.keep, self.owner = plan, keep, None
        dev, dim, count = plan.device, 2**plan.qubits, len(plan.groups)
        slots = blocks if keep else 1
        new = partial(torch.empty, dtype=dtype, device=dev)
        self.factors = new(blocks, batch, sum(s * s for s in plan.sizes))
        factors = [f.unflatten(-1, (s, s)) for f, s in
                   zip(self.factors.split([s * s for s in plan.sizes], -1), plan.sizes, strict=True)]
        self.inputs = new(1, batch, dim)  # the current block's input, after the ring
        self.table = new(3 * plan.qubits + 1, blocks * batch)
        self.table[-1] = 1
        self.entries = new(plan.gather_flat.numel(), blocks * batch)
        self.halves = torch.tensor([0.5, -0.5], dtype=dtype, device=dev).view(2, 1, 1, 1)
        # the final state (after the last ring), kept for the backward pass, and its gradient
        self.psi, self.psi_grad = new(batch, dim), new(batch, dim)
        self.outputs = [new(slots, batch, dim) for _ in range(count)]
        self.forward_ops = []  # per group, last first: (factors, input views, output views)
        for g in reversed(range(count)):
            size = plan.sizes[g]
            if g == count - 1:
                ins = [_views(self.inputs, size, transpose=True)[0].transpose(1, 2)] * slots
            else:
                ins = [v.transpose(1, 2) for v in _views(self.outputs[g + 1], size, transpose=True)]
            self.forward_ops.append((factors[g].unbind(0), ins, _views(self.outputs[g], size)))
        self.ring = [_gather(y, self.inputs[0], plan.perm) for y in self.outputs[0].unbind(0)]
        self.last = self.outputs[0][-1]  # the final state before the last ring
        # block 0 acts on |0...0>: its state after group g is the Kronecker product of the first
        # columns f_k of the factors k >= g, so the block's output is f_0 x ... x f_{c-1}, built
        # by outer products as left products L_{g+1} = L_g x f_g (kept for the backward pass)
        self.firsts = [f[0][:, :, 0] for f in factors]  # f_g of every batch row, (B, size)
        self.left = [self.firsts[0]]
        self.forward_calls = []
        for g in range(1, count):
            width = self.left[-1].shape[-1]
            if g == count - 1:
                out = self.outputs[0][0].view(batch, width, -1)
            else:
                out = new(batch, width, plan.sizes[g])
            self.forward_calls.append(partial(torch.mul, self.left[-1].unsqueeze(2),
                                              self.firsts[g].unsqueeze(1), out=out))
            self.left.append(out.view(batch, -1))
        if count == 1:
            self.forward_calls.append(partial(self.outputs[0][0].copy_, self.firsts[0]))
        # the whole forward pass as a flat list of bound calls (no per-call Python indexing)
        for b in range(1, blocks):
            slot = b if keep else 0
            self.forward_calls.append(self.ring[b - 1 if keep else 0])
            for fs, ins, outs in self.forward_ops:
                self.forward_calls.append(_matmul(fs[b], ins[slot], outs[slot]))
        if keep:
            self._backward_buffers(factors, batch, blocks)

    def _backward_buffers(self, factors, batch: int, blocks: int):
        plan, count = self.plan, len(self.outputs)
        # dL/d(each factor's output), one block's worth: each block's C = mu y^T is taken right
        # after its mu, while mu is still in the cache (4 MB less working set at 13 qubits)
        self.grads = [y.new_empty(1, *y.shape[1:]) for y in self.outputs]
        to_input = torch.empty_like(self.inputs)  # dL/d(the current block's input)
        self.backward_ops = []  # per group, first first: (mu^T view, factors, destination)
        for g in range(count):
            size = plan.sizes[g]
            mu = _views(self.grads[g], size)[0].transpose(1, 2)
            dst = _views(to_input if g == count - 1 else self.grads[g + 1], size, transpose=True)[0]
            self.backward_ops.append((mu, factors[g].unbind(0), dst))
        self.ring_back = _gather(to_input[0], self.grads[0][0], plan.inverse)
        self.last_grad = self.grads[0][0]
        # per group: C = mu y^T of every block and batch row, all groups' side by side as the
        # factors are, so that one product with the sign maps gives every angle's gradient
        # (with more than one angle set, a group's C's would not be contiguous there, which
        # costs bmm a copy: one buffer per group then, and one product per group)
        squares = [s * s for s in plan.sizes]
        signs = plan.signs_for(self.inputs.dtype)
        if batch == 1:
            cs = [self.inputs.new_empty(blocks, batch, sum(squares))]
            self.terms = [(cs[0].view(blocks, -1), signs)]
            cs = cs[0].split(squares, -1)
        else:
            cs = [self.inputs.new_empty(blocks, batch, q) for q in squares]
            self.terms = [(c.view(blocks * batch, -1), sign) for c, sign in
                          zip(cs, signs.split(squares), strict=True)]
        self.pairs = [c.unflatten(-1, (s, s)) for c, s in zip(cs, plan.sizes, strict=True)]
        mus = [mu.view(batch, size, -1) for mu, size in zip(self.grads, plan.sizes, strict=True)]
        ys = [_views(y, size) for y, size in zip(self.outputs, plan.sizes, strict=True)]
        self.backward_calls = []
        for b in reversed(range(1, blocks)):
            for mu, fs, dst in self.backward_ops:
                self.backward_calls.append(_matmul(mu, fs[b], dst))
            for g in range(count):
                self.backward_calls.append(_matmul(mus[g], ys[g][b].transpose(1, 2),
                                                   self.pairs[g][b]))
            self.backward_calls.append(self.ring_back)
        self._first_block_backward(batch)
        # the angles' gradient, linear in the C's, accumulated over the groups
        self.angle_grad = self.inputs.new_empty(blocks * batch, plan.qubits)

    def _first_block_backward(self, batch: int):
        """Block 0's C_g = mu_g y_g^T with y_g = f_g w^T of rank one (the forward pass's product
        state): C_g = u_g f_g^T where u_g contracts the block's output gradient mu with f_k on
        every group k but g. With right partials R_g (mu contracted with f_k, k > g) and the left
        products L_g, C_g = R_g^T L_{g+1}, both viewed (B, prod_{k<g} size_k, size_g)."""
        plan, count = self.plan, len(self.outputs)
        right = [self.grads[0][0]]  # R_{c-1} = mu, then R_g = R_{g+1} f_{g+1}, (B, prod_{k<=g})
        for g in reversed(range(count - 1)):
            out = self.inputs.new_empty(batch, right[0].shape[-1] // plan.sizes[g + 1], 1)
            self.backward_calls.append(_matmul(right[0].view(batch, out.shape[1], -1),
                                               self.firsts[g + 1].unsqueeze(2), out))
            right.insert(0, out.view(batch, -1))
        for g, size in enumerate(plan.sizes):
            self.backward_calls.append(_matmul(right[g].view(batch, -1, size).transpose(1, 2),
                                               self.left[g].view(batch, -1, size),
                                               self.pairs[g][0]))

    def forward(self, theta: torch.Tensor) -> None:
        """Runs the circuit for angles (B, L, n); the final state, before the last ring, is left
        in ``self.last`` (the state is ``self.last[:, perm]``)."""
        self.plan.factors(theta, self)
        for step in self.forward_calls:
            step()

    def backward(self) -> torch.Tensor:
        """dL/dtheta (B, L, n) given ``self.last_grad`` = dL/d(``self.last``) / 2 (the factor 2
        is in the sign maps)."""
        for step in self.backward_calls:
            step()
        out = self.angle_grad
        for i, (c, signs) in enumerate(self.terms):
            if i:
                out.addmm_(c, signs)
            else:
                torch.mm(c, signs, out=out)
        blocks, batch = self.outputs[0].shape[0], self.outputs[0].shape[1]
        return out.view(blocks, batch, -1).transpose(0, 1)


def _permute(x: torch.Tensor, index: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """x[:, index] for x (B, 2^n)."""
    if x.shape[0] == 1:
        flat = None if out is None else out.view(-1)
        return torch.index_select(x.view(-1), 0, index, out=flat).view(1, -1)
    return torch.index_select(x, 1, index, out=out)


def grad_needed(t: torch.Tensor) -> bool:
    """Whether a Function applied to ``t`` now will be differentiated: to be asked before
    ``apply``, because ``ctx.needs_input_grad`` is also True under ``torch.no_grad()``."""
    return torch.is_grad_enabled() and t.requires_grad


class RyProbs(torch.autograd.Function):
    """Probabilities (B, 2^n) of the ry circuit for angles (B, L, n), run in ``dtype`` (the
    angles' by default), returned and differentiated in the angles' dtype. ``keep``: keep what the
    backward pass needs (:func:`grad_needed`; a no-grad call without it reuses its buffers)."""

    @staticmethod
    def forward(ctx, theta, plan, dtype=None, keep=True):
        dtype = dtype or theta.dtype
        ws = plan.workspace(theta.shape[0], theta.shape[1], dtype, keep)
        ws.forward(theta)
        psi = _permute(ws.last, plan.perm, out=ws.psi)
        if keep:
            ws.owner = ctx.token = object()
            ctx.plan, ctx.ws = plan, ws
        else:
            plan.release(ws)
        # squared in the circuit's dtype, rounded once to the angles'
        return torch.mul(psi, psi, out=theta.new_empty(psi.shape))

    @staticmethod
    def backward(ctx, grad_p):
        ws = ctx.ws
        if ws.owner is not ctx.token:  # a second backward (retain_graph) after a later forward
            raise RuntimeError("the ry circuit's saved states were reused by a later forward "
                               "pass: run its backward once, before the next forward")
        # dL/dpsi = 2 psi dL/dp, taken back through the last ring (the 2 is in the sign maps)
        _permute(torch.mul(grad_p, ws.psi, out=ws.psi_grad), ctx.plan.inverse, out=ws.last_grad)
        grad = ws.backward().to(grad_p.dtype, copy=True)
        ctx.plan.release(ws)  # still ours until another forward takes it
        return grad, None, None, None
