"""Ansatz definitions: which gates, in which order, and how many angles they take."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .errors import QTrainError

ANSATZE = ("ry", "u3")


def ring_pairs(n: int) -> list[tuple[int, int]]:
    """The entangling ring (0,1), (1,2), ..., (n-2,n-1), (n-1,0) as (control, target) pairs."""
    return [(i, (i + 1) % n) for i in range(n)]


@dataclass(frozen=True)
class Circuit:
    """A layered ansatz on ``qubits`` wires, started from |0...0>.

    ``ry``: per block, RY on every qubit, then a CNOT ring; n angles per block.
    ``u3``: per block, U3 on every qubit, then a CU3 ring; 6n angles per block, laid out as
    ``(blocks, 2, qubits, 3)`` where ``[b, 0, q]`` is the U3 on qubit q and ``[b, 1, i]`` the CU3
    on ring pair i.
    """

    qubits: int
    blocks: int
    ansatz: str = "ry"

    def __post_init__(self):
        if self.ansatz not in ANSATZE:
            raise QTrainError(f"unknown ansatz {self.ansatz!r}: use one of {', '.join(ANSATZE)}")
        if self.qubits < 2:
            raise QTrainError(f"--qubits {self.qubits} is too few: the ring needs at least 2")
        if self.blocks < 1:
            raise QTrainError(f"--blocks {self.blocks} must be at least 1")

    @property
    def angles_per_block(self) -> int:
        return self.qubits if self.ansatz == "ry" else 6 * self.qubits

    @property
    def num_angles(self) -> int:
        return self.angles_per_block * self.blocks

    @property
    def dim(self) -> int:
        return 2**self.qubits

    def init_angles(self, generator: torch.Generator | None = None) -> torch.Tensor:
        """Angles drawn uniformly from [-pi, pi), as TorchQuantum initialises them."""
        u = torch.rand(self.num_angles, generator=generator, dtype=torch.float64)
        return ((2 * u - 1) * math.pi).float()
