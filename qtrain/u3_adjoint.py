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


def new_qubits(n: int) -> int:
    """Qubits each window adds (measured on 2 CPU cores, 8 blocks: 2, windows of 3 qubits, up to
    11 qubits; 3 from 12, where fewer passes beat the bigger matrices' flops)."""
    return 2 if n <= 11 else 3


def window_spans(n: int, new: int | None = None) -> list[tuple[int, int]]:
    """(start, end) inclusive of each window of one block, in order; windows after the first
    share their first qubit with the previous window's last."""
    new = new or new_qubits(n)
    spans, end = [(0, min(new, n - 1))], min(new, n - 1)
    while end < n - 1:
        start, end = end, min(end + new, n - 1)
        spans.append((start, end))
    return spans


def _kron(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    m, k = a.shape[-1], b.shape[-1]
    out = a[..., :, None, :, None] * b[..., None, :, None, :]
    return out.reshape(*out.shape[:-4], m * k, m * k)


class _Layout:
    """Which U3 and CU3 fill each position of each window, padded to the longest window with
    identities (index n); the shorter windows are cut out of their padded matrix."""

    def __init__(self, n: int):
        self.spans = window_spans(n)
        self.width = max(e - s + 1 for s, e in self.spans)
        layer, pairs = [], []
        for k, (start, end) in enumerate(self.spans):
            for j in range(self.width):
                q = start + j
                layer.append(q if q <= end and (j or not k) else n)
            for j in range(self.width - 1):
                q = start + j
                pairs.append(q if q + 1 <= end else n)
        self.layer, self.pairs = torch.tensor(layer), torch.tensor(pairs)
        self._on: dict = {}

    def on(self, device):
        if device not in self._on:
            self._on[device] = (self.layer.to(device), self.pairs.to(device))
        return self._on[device]


def window_matrices(u: torch.Tensor, n: int, layout: _Layout | None = None) -> list[torch.Tensor]:
    """Per window, its matrix for every angle set and block: (B, L, 2^w, 2^w) over the window's
    qubits in order (the last window: qubit 0 first, then its span).

    Args:
        u: U3 matrices (B, L, 2, n, 2, 2): ``[:, :, 0, q]`` the U3 on qubit q, ``[:, :, 1, i]``
            the U3 that CU3 pair i = (i, i+1 mod n) applies to its target.
    """
    layout = layout or _Layout(n)
    batch, blocks = u.shape[:2]
    count, width = len(layout.spans), layout.width
    eye = torch.eye(2, dtype=u.dtype, device=u.device).expand(batch, blocks, 1, 2, 2)
    layer_idx, pair_idx = layout.on(u.device)
    table = torch.cat([u[:, :, 0], eye], 2).index_select(2, layer_idx)
    table = table.view(batch, blocks, count, width, 2, 2)
    gates = torch.cat([u[:, :, 1], eye], 2).index_select(2, pair_idx)
    gates = gates.view(batch, blocks, count, width - 1, 2, 2)
    m = table[:, :, :, 0]
    for j in range(1, width):
        m = _kron(m, table[:, :, :, j])
    size = 2**width
    for j in range(width - 1):  # CU3 on local (j, j+1): U on the target where the control is 1
        v = m.view(batch, blocks, count, 2**j, 2, 2, -1)
        hit = torch.matmul(gates[:, :, :, j, None], v[:, :, :, :, 1])
        m = torch.stack([v[:, :, :, :, 0], hit], 4).view(batch, blocks, count, size, size)
    mats = []
    for k, (start, end) in enumerate(layout.spans):
        step = 2 ** (width - (end - start + 1))
        mats.append(m[:, :, k, ::step, ::step] if step > 1 else m[:, :, k])
    # the ring's closing CU3(n-1 -> 0) after the last window, qubit 0 first: rows whose last
    # qubit is 1 get U on qubit 0, the others the identity
    last = mats[-1]
    s = last.shape[-1]
    close = torch.stack([eye[:, :, 0], u[:, :, 1, n - 1]], -1)  # (B, L, 2, 2, 2): [a, a', c]
    close = close[..., None, :].expand(batch, blocks, 2, 2, s // 2, 2).reshape(batch, blocks, 2, 2, s)
    full = close[..., :, None] * last[:, :, None, None]  # (B, L, a, a', i, j)
    mats[-1] = full.transpose(3, 4).reshape(batch, blocks, 2 * s, 2 * s)
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
        self.n, self.layout = n, _Layout(n)
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
        return (None, *grads)
