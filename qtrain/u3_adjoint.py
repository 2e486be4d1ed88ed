"""The ``u3`` circuit's final state as one autograd node, differentiated by the adjoint method.

A block (U3 on every qubit, then the CU3 ring (0,1), ..., (n-2,n-1), (n-1,0)) is cut into a few
windows of adjacent qubits, each one dense matrix applied by one batched matmul on a view of the
state (no copies):

- window 0 is qubits 0..w-1: their U3 gates and the CU3 chain inside them;
- window k starts on the previous window's last qubit: the U3 of its new qubits and the CU3
  chain from that shared qubit on (the shared qubit's U3 and earlier CU3s came before);
- the last window also takes the ring's closing CU3(n-1, 0): it acts on qubit 0 and the last
  qubits, applied as 2x2 blocks of matmuls over the qubit-0 halves of the state.

The window matrices of every block are built by autograd from the angles (small tensors); the
state passes are this Function: the forward keeps each window's input, the backward carries the
gradient back (F^H mu) and returns each window matrix's gradient (mu x^H).
"""

from __future__ import annotations

import torch

NEW_QUBITS = 2  # qubits each window adds: windows of 3 (8x8 complex) measured best at 13 qubits


def window_spans(n: int, new: int = NEW_QUBITS) -> list[tuple[int, int]]:
    """(start, end) inclusive of each window of one block, in order; windows after the first
    share their first qubit with the previous window's last."""
    spans, end = [(0, min(new, n - 1))], min(new, n - 1)
    while end < n - 1:
        start, end = end, min(end + new, n - 1)
        spans.append((start, end))
    return spans


def _kron(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    m, k = a.shape[-1], b.shape[-1]
    out = a[..., :, None, :, None] * b[..., None, :, None, :]
    return out.reshape(*out.shape[:-4], m * k, m * k)


def _eye(size: int, like: torch.Tensor) -> torch.Tensor:
    return torch.eye(size, dtype=like.dtype, device=like.device).expand(*like.shape[:-2], -1, -1)


def window_matrices(u: torch.Tensor, cu: torch.Tensor, n: int) -> list[torch.Tensor]:
    """Per window, its matrix for every angle set and block: (B, L, 2^w, 2^w) over the window's
    qubits in order (the last window: qubit 0 first, then its span).

    Args:
        u: U3 matrices (B, L, n, 2, 2) of every qubit.
        cu: CU3 matrices (B, L, n, 4, 4), control first, of ring pair i = (i, i+1 mod n).
    """
    spans = window_spans(n)
    mats = []
    for k, (start, end) in enumerate(spans):
        first = start if k == 0 else start + 1
        layer = u[:, :, first]
        for q in range(first + 1, end + 1):
            layer = _kron(layer, u[:, :, q])
        if k:
            layer = _kron(_eye(2, layer), layer)  # the shared qubit's U3 came before
        length = end - start + 1
        m = layer
        for i in range(length - 1):  # CU3 (start + i, start + i + 1) on local qubits i, i+1
            gate = cu[:, :, start + i]
            if i:
                gate = _kron(_eye(2**i, gate), gate)
            if length - i - 2:
                gate = _kron(gate, _eye(2 ** (length - i - 2), gate))
            m = torch.matmul(gate, m)
        if k == len(spans) - 1:  # the ring's closing CU3(n-1 -> 0): qubit 0 goes first
            size = 2**length
            m = _kron(_eye(2, m), m)
            proj = torch.zeros(2, 2, dtype=m.dtype, device=m.device)
            proj1 = proj.clone()
            proj[0, 0], proj1[1, 1] = 1, 1
            rest = torch.eye(size // 2, dtype=m.dtype, device=m.device)
            off = _kron(rest, proj)  # control |0>: identity on qubit 0
            on = _kron(rest, proj1)
            close = _kron(_eye(2, m), off) + _kron(cu[:, :, n - 1, 2:, 2:], on)
            m = torch.matmul(close, m)
        mats.append(m)
    return mats


class _Op:
    """One window's application to a (B, 2^n) state as views and batched matmuls."""

    def __init__(self, n: int, start: int, end: int, wrap: bool):
        self.wrap, self.n = wrap, n
        self.size = 2 ** (end - start + 1)
        self.pre, self.post = 2**start, 2 ** (n - end - 1)
        if wrap:  # qubit 0 and start..n-1 (end == n-1)
            self.mid = 2 ** (n - 1) // self.size

    def forward(self, f: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> None:
        """y = F x for f (B, S, S) (or (B, 2S, 2S) with wrap), x and y (B, 2^n)."""
        batch, s = x.shape[0], self.size
        if self.wrap:
            xv, yv = x.view(batch, 2, self.mid, s), y.view(batch, 2, self.mid, s)
            g = f.view(batch, 2, s, 2, s)
            for a in range(2):
                out = yv[:, a]
                torch.bmm(xv[:, 0], g[:, a, :, 0].mT, out=out)
                out.baddbmm_(xv[:, 1], g[:, a, :, 1].mT)
            return
        if self.post == 1:
            torch.bmm(x.view(batch, self.pre, s), f.mT, out=y.view(batch, self.pre, s))
        elif self.pre == 1:
            torch.bmm(f, x.view(batch, s, self.post), out=y.view(batch, s, self.post))
        elif batch == 1:
            torch.bmm(f.expand(self.pre, s, s), x.view(self.pre, s, self.post),
                      out=y.view(self.pre, s, self.post))
        else:
            y.view(batch, self.pre, s, self.post).copy_(
                torch.matmul(f[:, None], x.view(batch, self.pre, s, self.post)))

    def backward(self, f: torch.Tensor, x: torch.Tensor, mu: torch.Tensor, dst: torch.Tensor):
        """dst = F^H mu (dL/dx); returns dL/dF (B, S, S) = sum mu x^H."""
        batch, s = x.shape[0], self.size
        if self.wrap:
            xv, mv, dv = (t.view(batch, 2, self.mid, s) for t in (x, mu, dst))
            g = f.view(batch, 2, s, 2, s)
            gf = f.new_empty(batch, 2, s, 2, s)
            for a in range(2):
                out = dv[:, a]
                torch.bmm(mv[:, 0], g[:, 0, :, a].conj(), out=out)
                out.baddbmm_(mv[:, 1], g[:, 1, :, a].conj())
                for b in range(2):
                    gf[:, b, :, a] = torch.bmm(xv[:, a].mH, mv[:, b]).mT
            return gf.view(batch, 2 * s, 2 * s)
        if self.post == 1:
            xv, mv = x.view(batch, self.pre, s), mu.view(batch, self.pre, s)
            torch.bmm(mv, f.conj(), out=dst.view(batch, self.pre, s))
            return torch.bmm(xv.mH, mv).mT
        if self.pre == 1:
            xv, mv = x.view(batch, s, self.post), mu.view(batch, s, self.post)
            torch.bmm(f.mH, mv, out=dst.view(batch, s, self.post))
            return torch.bmm(mv, xv.mH)
        xv = x.view(batch, self.pre, s, self.post)
        mv = mu.view(batch, self.pre, s, self.post)
        dst.view(batch, self.pre, s, self.post).copy_(torch.matmul(f.mH[:, None], mv))
        return torch.matmul(mv, xv.mH).sum(1)


class U3Plan:
    """The window operations of an n-qubit u3 circuit."""

    def __init__(self, n: int):
        spans = window_spans(n)
        self.n = n
        self.ops = [_Op(n, s, e, k == len(spans) - 1) for k, (s, e) in enumerate(spans)]


class U3State(torch.autograd.Function):
    """The final state (B, 2^n) of the u3 circuit from its window matrices (B, L, S_k, S_k)."""

    @staticmethod
    def forward(ctx, plan: U3Plan, *mats):
        batch, blocks = mats[0].shape[:2]
        ops, dim = plan.ops, 2**plan.n
        count = len(ops)
        states = mats[0].new_empty(blocks * count + 1, batch, dim)
        states[0].zero_()
        states[0, :, 0] = 1
        for b in range(blocks):
            for k, op in enumerate(ops):
                i = b * count + k
                op.forward(mats[k][:, b], states[i], states[i + 1])
        ctx.plan, ctx.states = plan, states
        ctx.save_for_backward(*mats)
        return states[-1].clone()

    @staticmethod
    def backward(ctx, grad):
        mats = ctx.saved_tensors
        plan, states = ctx.plan, ctx.states
        ops, count = plan.ops, len(plan.ops)
        blocks = mats[0].shape[1]
        grads = [torch.empty_like(m) for m in mats]
        mu, spare = grad.contiguous().clone(), torch.empty_like(grad)
        for b in reversed(range(blocks)):
            for k in reversed(range(count)):
                i = b * count + k
                grads[k][:, b] = ops[k].backward(mats[k][:, b], states[i], mu, spare)
                mu, spare = spare, mu
        ctx.states = None
        return (None, *grads)
