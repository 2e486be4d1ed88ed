"""Native statevector simulation in torch, batched over angle sets, on any torch device.

``ry`` runs in real arithmetic. Each rotation layer is applied as Kronecker factors over small
groups of adjacent qubits (a few batched matmuls instead of one kernel per qubit), and the whole
CNOT ring is one precomputed index permutation.
"""

from __future__ import annotations

import numpy as np
import torch

from .circuits import Circuit, ring_pairs

GROUP = 4  # qubits per Kronecker factor: 16x16 matmuls balance kernel count against flops


def qubit_groups(n: int, size: int = GROUP) -> list[tuple[int, int]]:
    """Split qubits 0..n-1 into contiguous (start, length) groups of at most ``size``."""
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


def _kron_groups(mats: torch.Tensor, groups) -> list[torch.Tensor]:
    """Per group, the batched Kronecker product of its single-qubit matrices (B, 2^g, 2^g)."""
    out = []
    batch = mats.shape[0]
    for start, length in groups:
        k = mats[:, start]
        for q in range(start + 1, start + length):
            size = k.shape[-1] * 2
            k = (k[:, :, None, :, None] * mats[:, q, None, :, None, :]).reshape(batch, size, size)
        out.append(k)
    return out


def _apply_layer(state: torch.Tensor, mats: torch.Tensor, n: int, groups) -> torch.Tensor:
    """Apply one single-qubit matrix per qubit (mats: (B, n, 2, 2)) to ``state`` (B, 2^n)."""
    batch = state.shape[0]
    for (start, length), k in zip(groups, _kron_groups(mats, groups), strict=True):
        view = state.reshape(batch, 2**start, 2**length, 2 ** (n - start - length))
        state = torch.matmul(k[:, None], view).reshape(batch, -1)
    return state


def ry_matrices(theta: torch.Tensor) -> torch.Tensor:
    """RY(theta) for theta of shape (B, n): (B, n, 2, 2), real."""
    c, s = torch.cos(theta / 2), torch.sin(theta / 2)
    return torch.stack([torch.stack([c, -s], -1), torch.stack([s, c], -1)], -2)


def _phase(x: torch.Tensor) -> torch.Tensor:
    return torch.complex(torch.cos(x), torch.sin(x))


def u3_matrices(angles: torch.Tensor) -> torch.Tensor:
    """U3(theta, phi, lambda) for angles (..., 3): (..., 2, 2), complex (PennyLane's convention)."""
    theta, phi, lam = angles.unbind(-1)
    c = torch.complex(torch.cos(theta / 2), torch.zeros_like(theta))
    s = torch.complex(torch.sin(theta / 2), torch.zeros_like(theta))
    row0 = torch.stack([c, -_phase(lam) * s], -1)
    row1 = torch.stack([_phase(phi) * s, _phase(phi + lam) * c], -1)
    return torch.stack([row0, row1], -2)


def _apply_controlled(state: torch.Tensor, u: torch.Tensor, control: int, target: int, n: int):
    """Apply U (B, 2, 2) to ``target`` where ``control`` is 1."""
    batch = state.shape[0]
    lo, hi = min(control, target), max(control, target)
    view = state.reshape(batch, 2**lo, 2, 2 ** (hi - lo - 1), 2, 2 ** (n - hi - 1))
    c_axis = 2 if control == lo else 4
    on = view.select(c_axis, 1)
    t_axis = 2 if target == lo else 3
    on = torch.movedim(on, t_axis, -1)
    on = torch.matmul(on.unsqueeze(-2), u.transpose(-1, -2).reshape(batch, 1, 1, 1, 2, 2))
    on = torch.movedim(on.squeeze(-2), -1, t_axis)
    off = view.select(c_axis, 0)
    return torch.stack([off, on], c_axis).reshape(batch, -1)


class NativeSimulator:
    """Probabilities of a :class:`Circuit`, differentiable by torch autograd.

    Args:
        circuit: the ansatz and its size.
    """

    def __init__(self, circuit: Circuit):
        self.circuit = circuit
        self.groups = qubit_groups(circuit.qubits)
        self._perm = ring_permutation(circuit.qubits) if circuit.ansatz == "ry" else None
        self._perm_cache: dict[torch.device, torch.Tensor] = {}

    def _perm_on(self, device: torch.device) -> torch.Tensor:
        if device not in self._perm_cache:
            self._perm_cache[device] = self._perm.to(device)
        return self._perm_cache[device]

    def probs(self, angles: torch.Tensor) -> torch.Tensor:
        """Basis-state probabilities for angles (P,) or a batch (B, P): (2^n,) or (B, 2^n)."""
        single = angles.dim() == 1
        a = angles.reshape(1, -1) if single else angles
        c = self.circuit
        n, batch = c.qubits, a.shape[0]
        if c.ansatz == "ry":
            theta = a.reshape(batch, c.blocks, n)
            state = torch.zeros(batch, c.dim, dtype=a.dtype, device=a.device)
            state[:, 0] = 1
            perm = self._perm_on(a.device)
            for b in range(c.blocks):
                state = _apply_layer(state, ry_matrices(theta[:, b]), n, self.groups)
                state = state[:, perm]
            p = state * state
        else:
            ang = a.reshape(batch, c.blocks, 2, n, 3)
            cdtype = torch.complex128 if a.dtype == torch.float64 else torch.complex64
            state = torch.zeros(batch, c.dim, dtype=cdtype, device=a.device)
            state[:, 0] = 1
            for b in range(c.blocks):
                state = _apply_layer(state, u3_matrices(ang[:, b, 0]), n, self.groups)
                cu = u3_matrices(ang[:, b, 1])
                for i, (ctrl, tgt) in enumerate(ring_pairs(n)):
                    state = _apply_controlled(state, cu[:, i], ctrl, tgt, n)
            p = state.real**2 + state.imag**2
        return p[0] if single else p
