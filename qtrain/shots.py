"""Finite-shot estimates of basis-state probabilities, drawn with a seeded ``torch.Generator``.

N measurements of an n-qubit state give counts with a multinomial(N, p) distribution. It is
drawn exactly, without materialising N outcomes, as n rounds of conditional binomials down a
binary tree: the counts of each half of the basis states split between its two quarters, and so
on. Memory is O(2^n) per row, whatever N, and the same seed gives the same counts.
"""

from __future__ import annotations

import torch

from .errors import QTrainError


def sample_counts(p: torch.Tensor, shots: int, generator: torch.Generator) -> torch.Tensor:
    """Counts of ``shots`` measurements of each row of ``p`` (..., 2^n), as float64 on the CPU."""
    dim = p.shape[-1]
    n = dim.bit_length() - 1
    if dim != 2**n:
        raise QTrainError(f"probabilities over {dim} states: expected a power of two")
    rows = p.detach().reshape(-1, dim).to("cpu", torch.float64).clamp_min(0)
    rows = rows / rows.sum(-1, keepdim=True)
    # masses[l]: (R, 2^l) probability of each subtree at depth l (masses[n] is rows itself)
    masses = [rows]
    for _ in range(n):
        m = masses[-1]
        masses.append(m[:, 0::2] + m[:, 1::2])
    masses.reverse()
    counts = torch.full((rows.shape[0], 1), float(shots), dtype=torch.float64)
    for depth in range(n):
        child = masses[depth + 1]
        parent = masses[depth]
        left = torch.where(parent > 0, child[:, 0::2] / parent.clamp_min(1e-300), 0.0).clamp(0, 1)
        k = torch.binomial(counts, left, generator=generator)
        counts = torch.stack([k, counts - k], -1).reshape(rows.shape[0], -1)
    return counts.reshape(p.shape)


def sample_probs(p: torch.Tensor, shots: int, generator: torch.Generator) -> torch.Tensor:
    """Measured frequencies: counts of ``shots`` draws over ``shots``, in ``p``'s dtype and device.

    Args:
        p: exact probabilities, (2^n,) or a batch (..., 2^n).
        shots: measurements per row.
        generator: a seeded CPU generator; the same state gives the same frequencies.

    Returns:
        A tensor shaped like ``p`` whose rows sum to 1, with no gradient.
    """
    return (sample_counts(p, shots, generator) / shots).to(device=p.device, dtype=p.dtype)
