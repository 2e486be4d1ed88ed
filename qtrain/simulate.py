"""Native statevector simulation in torch, batched over angle sets, on any torch device.

What makes it fast (measured in benchmarks/bench_circuit.py):
- ``ry`` runs in real arithmetic as one autograd node with an adjoint backward
  (:mod:`qtrain.ry_adjoint`);
- a rotation layer is applied as Kronecker factors over groups of adjacent qubits, a few batched
  matmuls instead of one kernel per qubit; the factors of every block are built at once;
- the whole CNOT ring is one precomputed index permutation;
- ``u3`` from 4 qubits runs as one autograd node with an adjoint backward
  (:mod:`qtrain.u3_adjoint`): a block is a few windows of adjacent qubits, each with its U3s and
  CU3 chain in one matrix, applied by one batched matmul on a view of the state; for 2 and 3
  qubits the first layer acts on |0...0> (the outer product of the factors' first columns), and
  the CU3 gates inside a group are multiplied into one factor with the group's U3 layer.
"""

from __future__ import annotations

import numpy as np
import torch

from .circuits import Circuit, ring_pairs
from .ry_adjoint import RyPlan, RyProbs, grad_needed
from .u3_adjoint import U3Plan, U3State, window_matrices, window_spans


def group_size(n: int) -> int:
    """Qubits per Kronecker factor (ry), as measured best on 2 CPU cores: bigger factors mean
    fewer kernels but more flops per amplitude (8 blocks fwd + bwd, one thread: 4 beat 3, 5 and
    6 from 9 to 15 qubits, in float64 and float32, by 5-15% at 13-15; 5 beat 6 and 7 above)."""
    return 4 if n <= 15 else 5


def qubit_groups(n: int, size: int | None = None) -> list[tuple[int, int]]:
    """Split qubits 0..n-1 into balanced contiguous (start, length) groups of at most ``size``."""
    size = size or group_size(n)
    count = -(-n // size)
    base, extra = divmod(n, count)
    groups, start = [], 0
    for g in range(count):
        length = base + (1 if g < extra else 0)
        groups.append((start, length))
        start += length
    return groups


def ring_permutation(n: int) -> torch.Tensor:
    """Index ``perm`` with ``state[..., perm]`` equal to the state after the whole CNOT ring."""
    idx = np.arange(2**n, dtype=np.int64)
    shifts = n - 1 - np.arange(n)  # qubit 0 is the most significant bit
    bits = (idx[:, None] >> shifts) & 1
    for c, t in ring_pairs(n):
        bits[:, t] ^= bits[:, c]
    image = (bits << shifts).sum(axis=1)
    perm = np.empty_like(image)
    perm[image] = idx
    return torch.from_numpy(perm)


def _phase(x: torch.Tensor) -> torch.Tensor:
    return torch.polar(torch.ones_like(x), x)


def u3_matrices(angles: torch.Tensor) -> torch.Tensor:
    """U3(theta, phi, lambda) for angles (..., 3): (..., 2, 2), complex (PennyLane's convention)."""
    theta, phi, lam = angles.unbind(-1)
    c = torch.cos(theta / 2).to(_complex(angles.dtype))
    s = torch.sin(theta / 2).to(_complex(angles.dtype))
    return torch.stack([c, -_phase(lam) * s, _phase(phi) * s, _phase(phi + lam) * c],
                       -1).unflatten(-1, (2, 2))


def _complex(dtype: torch.dtype) -> torch.dtype:
    return torch.complex128 if dtype == torch.float64 else torch.complex64


def kron(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Batched Kronecker product of square matrices over the last two dims."""
    m, k = a.shape[-1], b.shape[-1]
    out = a[..., :, None, :, None] * b[..., None, :, None, :]
    return out.reshape(*out.shape[:-4], m * k, m * k)


def _kron_all(mats: torch.Tensor) -> torch.Tensor:
    """Kronecker product of mats[..., 0, :, :], mats[..., 1, :, :], ... (qubit 0 first)."""
    out = mats[..., 0, :, :]
    for q in range(1, mats.shape[-3]):
        out = kron(out, mats[..., q, :, :])
    return out


def _apply(state: torch.Tensor, mat: torch.Tensor, start: int, length: int, n: int):
    """Apply a (B, 2^length, 2^length) matrix to qubits start..start+length-1 of (B, 2^n)."""
    batch, size = state.shape[0], 2**length
    post = 2 ** (n - start - length)
    if post == 1:  # the factor is on the last qubits: one plain batched matmul
        view = state.reshape(batch, -1, size)
        return torch.matmul(view, mat.transpose(-1, -2)).reshape(batch, -1)
    view = state.reshape(batch, 2**start, size, post)
    return torch.matmul(mat[:, None], view).reshape(batch, -1)


def _product_state(columns: list[torch.Tensor]) -> torch.Tensor:
    """The outer product of per-group state vectors (B, 2^g): the layer applied to |0...0>."""
    state = columns[0]
    for col in columns[1:]:
        state = (state[:, :, None] * col[:, None, :]).reshape(state.shape[0], -1)
    return state


def _controlled(u: torch.Tensor) -> torch.Tensor:
    """The 4x4 matrix of a controlled U (control first): block-diag(I, U) for u (..., 2, 2)."""
    eye = torch.eye(2, dtype=u.dtype, device=u.device).expand_as(u)
    zero = torch.zeros_like(u)
    top = torch.cat([eye, zero], -1)
    bottom = torch.cat([zero, u], -1)
    return torch.cat([top, bottom], -2)


def _embed_pair(cu: torch.Tensor, i: int, length: int) -> torch.Tensor:
    """A 4x4 gate on adjacent local qubits (i, i+1) as a (2^length)-dim matrix."""
    eye_pre = torch.eye(2**i, dtype=cu.dtype, device=cu.device)
    eye_post = torch.eye(2 ** (length - i - 2), dtype=cu.dtype, device=cu.device)
    out = cu
    if i:
        out = kron(eye_pre.expand(*cu.shape[:-2], -1, -1), out)
    if length - i - 2:
        out = kron(out, eye_post.expand(*cu.shape[:-2], -1, -1))
    return out


EXACT_QUBITS = 16


class NativeSimulator:
    """Probabilities of a :class:`Circuit`, differentiable by torch autograd.

    Args:
        circuit: the ansatz and its size.
        precision: ``exact`` runs ``ry`` in float64 up to :data:`EXACT_QUBITS` whatever the
            angles' dtype (probabilities come back in the angles' dtype; MPS has no float64 and
            runs it as ``fast``); ``fast`` runs it in the angles' dtype.
        compiled: run ``ry`` on the CPU with the C++ kernel of :mod:`qtrain.native_kernel`
            (``--compile``), in the same precision; other ansatze and devices are unaffected.
    """

    def __init__(self, circuit: Circuit, precision: str = "exact", compiled: bool = False):
        self.circuit, self.precision, self.compiled = circuit, precision, compiled
        # u3 multiplies its CU3 chains into group-sized complex matrices: keep those small
        self.groups = qubit_groups(circuit.qubits, 4 if circuit.ansatz == "u3" else None)
        self._perm = ring_permutation(circuit.qubits) if circuit.ansatz == "ry" else None
        self._plans: dict[torch.device, RyPlan] = {}
        # u3 from 4 qubits: windows of adjacent qubits through one adjoint Function
        self._u3 = U3Plan(circuit.qubits) if circuit.ansatz == "u3" and \
            len(window_spans(circuit.qubits)) > 1 else None

    def _plan_on(self, device: torch.device) -> RyPlan:
        if device not in self._plans:
            self._plans[device] = RyPlan(self.circuit.qubits, self.groups, self._perm, device)
        return self._plans[device]

    # runs eager under torch.compile: pre-built calls on reused buffers are not traceable, and
    # Inductor's version of the same algorithm was slower (benchmarks/bench_circuit.py --compile)
    @torch.compiler.disable
    def probs(self, angles: torch.Tensor) -> torch.Tensor:
        """Basis-state probabilities for angles (P,) or a batch (B, P): (2^n,) or (B, 2^n)."""
        single = angles.dim() == 1
        if self.circuit.ansatz == "ry":
            p = self._ry_probs(angles)
        else:
            state = self._u3_state(angles.reshape(1, -1) if single else angles)
            p = state.real**2 + state.imag**2
        # a view the backward pass only reshapes (indexing would zero-fill a gradient)
        return p.squeeze(0) if single else p

    def _layer_factors(self, mats: torch.Tensor) -> list[torch.Tensor]:
        """Per group, its Kronecker factor for every block: (B, L, 2^g, 2^g)."""
        return [_kron_all(mats[:, :, s: s + ln]) for s, ln in self.groups]

    # Blocks are taken with unbind(1), once, rather than indexed one at a time: indexing would
    # make the backward pass zero-fill a full-size gradient for every block.

    def _ry_probs(self, a: torch.Tensor) -> torch.Tensor:
        c = self.circuit
        # one view of the angles (P,) or (B, P), one node for autograd
        theta = a.reshape(1 if a.dim() == 1 else a.shape[0], c.blocks, c.qubits)
        # a float32 gradient is ~1e-6 relative off the exact one: enough for training to drift
        # from exact parameter-shift by ~1e-5 within two digits epochs (tests/test_gradients.py)
        exact = self.precision == "exact" and c.qubits <= EXACT_QUBITS and a.device.type != "mps"
        if self.compiled and a.device.type == "cpu":
            from .native_kernel import ry_probs

            return ry_probs(theta, self._perm, dtype=torch.float64 if exact else None)
        if exact:
            return RyProbs.apply(theta, self._plan_on(a.device), torch.float64, grad_needed(a))
        return RyProbs.apply(theta, self._plan_on(a.device), None, grad_needed(a))

    def _u3_state(self, a: torch.Tensor) -> torch.Tensor:
        c, n, groups = self.circuit, self.circuit.qubits, self.groups
        ang = a.reshape(a.shape[0], c.blocks, 2, n, 3)
        if self._u3 is not None:
            mats = window_matrices(u3_matrices(ang), n, self._u3.layout)
            return U3State.apply(self._u3, *mats)
        factors = self._layer_factors(u3_matrices(ang[:, :, 0]))
        cu = _controlled(u3_matrices(ang[:, :, 1]))  # (B, L, n, 4, 4), pair i = (i, i+1 mod n)
        # inside a group the CU3 chain is one matrix; the group's U3 factor folds into it only
        # for group 0 (for later groups, the CU3 that crosses into them must come in between)
        chains = []
        for start, length in groups:
            chain = None
            for i in range(length - 1):
                gate = _embed_pair(cu[:, :, start + i], i, length)
                chain = gate if chain is None else torch.matmul(gate, chain)
            chains.append(chain)
        first = factors[0] if chains[0] is None else torch.matmul(chains[0], factors[0])
        first = first.unbind(1)
        rest = [f.unbind(1) for f in factors[1:]]
        chains = [None if ch is None else ch.unbind(1) for ch in chains]
        cu = cu.unbind(1)
        state = None
        for b in range(c.blocks):
            if state is None:  # block 0 acts on |0...0>
                state = _product_state([first[0][:, :, 0]] + [f[0][:, :, 0] for f in rest])
            else:
                for (start, length), f in zip(groups[1:], rest, strict=True):
                    state = _apply(state, f[b], start, length, n)
                state = _apply(state, first[b], 0, groups[0][1], n)
            for g, (start, length) in enumerate(groups):
                if g and chains[g] is not None:
                    state = _apply(state, chains[g][b], start, length, n)
                end = start + length - 1
                if g + 1 < len(groups):  # the CU3 from this group's last qubit into the next
                    state = _apply(state, cu[b][:, end], end, 2, n)
            state = self._wrap(state, cu[b][:, n - 1], n)
        return state

    @staticmethod
    def _wrap(state: torch.Tensor, cu: torch.Tensor, n: int) -> torch.Tensor:
        """CU3 with control qubit n-1 and target qubit 0 (the ring's closing gate)."""
        batch = state.shape[0]
        view = state.reshape(batch, 2, 2 ** (n - 2), 2)  # (target, middle, control)
        gate = cu.reshape(batch, 2, 2, 2, 2)  # [c', t', c, t]
        out = torch.einsum("bpqrs,bsmr->bqmp", gate, view)
        return out.reshape(batch, -1)
