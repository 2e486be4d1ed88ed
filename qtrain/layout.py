"""Which parameters are generated, the circuit size that covers them, and flat <-> named tensors."""

from __future__ import annotations

import math
from dataclasses import dataclass
from fnmatch import fnmatchcase

import torch
from torch import nn

from .errors import QTrainError

MAX_QUBITS = 30  # 2^30 float32 amplitudes are 4 GiB, before autograd's copies


@dataclass
class Layout:
    """The generated parameters, in the target's parameter order.

    Attributes:
        names, shapes: the generated tensors.
        classical: trainable parameters kept classical (not generated).
    """

    names: list[str]
    shapes: list[tuple[int, ...]]
    classical: list[str]

    @property
    def numels(self) -> list[int]:
        return [math.prod(s) for s in self.shapes]

    @property
    def size(self) -> int:
        """M, the number of generated weights."""
        return sum(self.numels)

    def unflatten(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        """Cut the flat weight vector into named tensors of the right shapes."""
        if flat.shape[0] != self.size:  # a no-op slice would still zero-fill a full gradient
            flat = flat[: self.size]
        parts = torch.split(flat, self.numels)
        return {n: p.view(s) for n, p, s in zip(self.names, parts, self.shapes, strict=True)}

    def manifest(self) -> list[dict]:
        out, offset = [], 0
        for name, shape, numel in zip(self.names, self.shapes, self.numels, strict=True):
            out.append({"name": name, "shape": list(shape), "offset": offset, "numel": numel})
            offset += numel
        return out


def _matches(name: str, patterns) -> bool:
    return any(fnmatchcase(name, p) for p in patterns)


def select(model: nn.Module, include=(), exclude=()) -> Layout:
    """Choose the generated parameters: trainable ones matching ``include`` and not ``exclude``.

    Tied parameters appear once (``named_parameters`` removes duplicates), so they are generated
    once. Frozen parameters (``requires_grad=False``) are neither generated nor trained.
    """
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if not params:
        raise QTrainError("the model has no trainable parameters to compress")
    for flag, patterns in (("--include", include), ("--exclude", exclude)):
        for pat in patterns:
            if not any(fnmatchcase(n, pat) for n, _ in params):
                some = ", ".join(n for n, _ in params[:6])
                raise QTrainError(f"{flag} {pat!r} matches no parameter; names look like: {some}")
    gen, kept = [], []
    for name, p in params:
        chosen = (not include or _matches(name, include)) and not _matches(name, exclude)
        (gen if chosen else kept).append((name, p))
    if not gen:
        raise QTrainError("--include/--exclude left no parameter to generate: widen the patterns")
    return Layout([n for n, _ in gen], [tuple(p.shape) for _, p in gen], [n for n, _ in kept])


def memory_needed(qubits: int) -> str:
    gib = 2**qubits * 4 * 4 / 2**30  # float32 state, about 4 live copies with autograd
    return f"{gib:,.0f} GiB" if gib >= 1 else f"{gib * 1024:,.0f} MiB"


def size_circuit(m: int, qubits: int | None, chunk: int | None, max_auto: int = 20):
    """Resolve (n, k) so that 2^n * k >= M; see DESIGN.md, "Sizing"."""
    if qubits is not None and qubits > MAX_QUBITS:
        raise QTrainError(
            f"--qubits {qubits} needs about {memory_needed(qubits)} for the statevector alone; "
            f"use at most {MAX_QUBITS} qubits and a larger --chunk"
        )
    if qubits is not None and qubits < 2:
        raise QTrainError(f"--qubits {qubits} is too few: use at least 2")
    if qubits is None:
        k = chunk or 1
        qubits = max(2, math.ceil(math.log2(math.ceil(m / k))) if m > k else 2)
        if chunk is None and qubits > max_auto:
            qubits = max_auto
        if chunk is not None and qubits > MAX_QUBITS:
            need = math.ceil(m / 2**MAX_QUBITS)
            raise QTrainError(f"--chunk {chunk} would need {qubits} qubits: use --chunk {need}")
    if chunk is None:
        chunk = max(1, math.ceil(m / 2**qubits))
    if 2**qubits * chunk < m:
        fit_n = math.ceil(math.log2(math.ceil(m / chunk)))
        fit_k = math.ceil(m / 2**qubits)
        raise QTrainError(
            f"{qubits} qubits x chunk {chunk} give {2**qubits * chunk:,} weights < M = {m:,}: "
            f"use --qubits {fit_n} or --chunk {fit_k}"
        )
    return qubits, chunk
