"""The same circuits as PennyLane QNodes, on any installed PennyLane device."""

from __future__ import annotations

import torch

from .circuits import Circuit, ring_pairs
from .errors import QTrainError


def import_pennylane():
    """Import PennyLane lazily, with an install hint when it is missing."""
    try:
        import pennylane as qml
    except ImportError as exc:  # pragma: no cover - exercised only without pennylane
        raise QTrainError(
            "the pennylane backend needs PennyLane: pip install pennylane "
            "(or use --backend native)"
        ) from exc
    return qml


class PennyLaneSimulator:
    """Probabilities of a :class:`Circuit` from a PennyLane QNode (torch interface).

    Args:
        circuit: the ansatz and its size.
        device: a PennyLane device name, e.g. ``default.qubit`` or ``lightning.qubit``.
        diff_method: PennyLane's differentiation method for the QNode.
        device_kwargs: passed through to ``qml.device`` (shots, plugin options).
    """

    def __init__(self, circuit: Circuit, device: str = "default.qubit",
                 diff_method: str = "best", **device_kwargs):
        qml = import_pennylane()
        self.circuit = circuit
        try:
            dev = qml.device(device, wires=circuit.qubits, **device_kwargs)
        except Exception as exc:
            raise QTrainError(
                f"PennyLane device {device!r} could not be created ({exc}): "
                "install its plugin or choose another --pl-device"
            ) from exc
        self._qnode = qml.QNode(self._body, dev, interface="torch", diff_method=diff_method)

    def _body(self, angles):
        import pennylane as qml

        c = self.circuit
        n = c.qubits
        a = angles.reshape(*angles.shape[:-1], c.blocks, c.angles_per_block)
        for b in range(c.blocks):
            blk = a[..., b, :]
            if c.ansatz == "ry":
                for q in range(n):
                    qml.RY(blk[..., q], wires=q)
                for ctrl, tgt in ring_pairs(n):
                    qml.CNOT(wires=[ctrl, tgt])
            else:
                u = blk.reshape(*blk.shape[:-1], 2, n, 3)
                for q in range(n):
                    qml.U3(u[..., 0, q, 0], u[..., 0, q, 1], u[..., 0, q, 2], wires=q)
                for i, (ctrl, tgt) in enumerate(ring_pairs(n)):
                    qml.ctrl(qml.U3, control=ctrl)(
                        u[..., 1, i, 0], u[..., 1, i, 1], u[..., 1, i, 2], wires=tgt
                    )
        return qml.probs(wires=range(n))

    def probs(self, angles: torch.Tensor) -> torch.Tensor:
        """Basis-state probabilities for angles (P,) or a broadcast batch (B, P)."""
        return self._qnode(angles).to(angles.dtype)
