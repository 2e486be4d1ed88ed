"""The same circuits as PennyLane QNodes, on any installed PennyLane device.

The controlled rotation of ``u3`` is written as its exact decomposition
CU3(theta, phi, lam) = ControlledPhaseShift(phi) CRY(theta) ControlledPhaseShift(lam), because
PennyLane has no shift rule for ``ctrl(U3)`` (its parameter-shift raises on it) while these three
gates carry their own (CRY its four-term rule, ControlledPhaseShift the two-term rule).
"""

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


class ExecutionCounter:
    """Stands in for a device's ``tracker``: counts circuits run and shots, keeps no history.

    PennyLane's simulators report a broadcast tape of B parameter sets as B executions, as a
    device without broadcasting would run (and bill) them.
    """

    active = True

    def __init__(self):
        self.executions = 0
        self.shots = 0

    def update(self, **kwargs):
        if "executions" not in kwargs:
            return
        self.executions += int(kwargs["executions"] or 0)
        self.shots += int(kwargs.get("shots") or 0)

    def record(self):
        pass

    def reset(self):
        self.executions = self.shots = 0


def make_device(qml, name: str, wires: int, seed: int | None, options: dict):
    """``qml.device(name, wires=..., seed=..., **options)``; ``seed`` only where accepted."""
    kwargs = dict(options)
    if seed is not None and "seed" not in kwargs:
        kwargs["seed"] = seed
    try:
        try:
            return qml.device(name, wires=wires, **kwargs)
        except TypeError as exc:
            if "seed" not in str(exc) or "seed" in options:
                raise
            kwargs.pop("seed")
            return qml.device(name, wires=wires, **kwargs)
    except Exception as exc:
        raise QTrainError(
            f"PennyLane device {name!r} could not be created ({str(exc).splitlines()[0]}): "
            "install its plugin, check --pl-option, or choose another --pl-device"
        ) from exc


class PennyLaneSimulator:
    """Probabilities of a :class:`Circuit` from a PennyLane QNode (torch interface).

    Args:
        circuit: the ansatz and its size.
        device: a PennyLane device name, e.g. ``default.qubit`` or ``lightning.qubit``.
        diff_method: PennyLane's differentiation method for the QNode.
        shots: measurements per circuit; ``None`` is analytic.
        seed: seeds the device's sampler, where the device accepts a ``seed``.
        gradient_kwargs: passed to PennyLane's gradient transform (e.g. ``broadcast``, ``h``).
        **device_kwargs: passed through to ``qml.device`` (plugin options).
    """

    def __init__(self, circuit: Circuit, device: str = "default.qubit",
                 diff_method: str = "best", *, shots: int | None = None, seed: int | None = None,
                 gradient_kwargs: dict | None = None, **device_kwargs):
        qml = import_pennylane()
        self.circuit = circuit
        self.counter = ExecutionCounter()
        self.device = make_device(qml, device, circuit.qubits, seed, device_kwargs)
        if hasattr(self.device, "tracker"):
            self.device.tracker = self.counter
        extra = {"shots": shots} if shots is not None else {}
        self._qnode = qml.QNode(self._body, self.device, interface="torch", diff_method=diff_method,
                                gradient_kwargs=dict(gradient_kwargs or {}), **extra)

    @property
    def gradient_kwargs(self) -> dict:
        """The QNode's gradient-transform options, read at each call (SPSA sets ``h`` per step)."""
        return self._qnode.gradient_kwargs

    @property
    def executions(self) -> int:
        """Circuits the device has run so far (broadcast sets counted one by one)."""
        return self.counter.executions

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
                    # CU3(theta, phi, lam) = CPhase(phi) CRY(theta) CPhase(lam), applied right to left
                    qml.ControlledPhaseShift(u[..., 1, i, 2], wires=[ctrl, tgt])
                    qml.CRY(u[..., 1, i, 0], wires=[ctrl, tgt])
                    qml.ControlledPhaseShift(u[..., 1, i, 1], wires=[ctrl, tgt])
        return qml.probs(wires=range(n))

    def tape_order(self) -> torch.Tensor:
        """For each gate parameter of the QNode's tape, in tape order, its index in the angles."""
        c = self.circuit
        idx = torch.arange(c.num_angles)
        if c.ansatz == "ry":
            return idx
        blk = idx.reshape(c.blocks, 2, c.qubits, 3)
        cu = blk[:, 1][..., [2, 0, 1]]  # lam, theta, phi: the order the decomposition applies them
        return torch.cat([blk[:, 0].reshape(c.blocks, -1), cu.reshape(c.blocks, -1)], 1).reshape(-1)

    def probs(self, angles: torch.Tensor) -> torch.Tensor:
        """Basis-state probabilities for angles (P,) or a broadcast batch (B, P)."""
        return self._qnode(angles).to(angles.dtype)

