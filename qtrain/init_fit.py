"""``--init fit``: start the angles and the mapping where the generated weights approximate the
trained MODEL's weights, before any task training."""

from __future__ import annotations

import math
import time

import torch

from .quantum_train import QuantumTrain


def relative_l2(generated: dict[str, torch.Tensor], reference: dict[str, torch.Tensor]
                ) -> dict[str, float]:
    """``||g - w|| / ||w||`` for every tensor (the plain ``||g - w||`` where ``w`` is zero)."""
    out = {}
    for name, g in generated.items():
        g = g.detach()
        w = reference[name].detach().to(g)
        norm = float(w.norm())
        out[name] = float((g - w).norm()) / (norm if norm > 0 else 1.0)
    return out


def fit_to_weights(qt: QuantumTrain, reference: dict[str, torch.Tensor], steps: int,
                   lr: float, progress: bool = False) -> dict:
    """Fit the generator's angles and mapping so that it generates ``reference``.

    The loss is the mean over tensors of ``||g - w||^2 / ||w||^2``: MSE normalised per tensor,
    so that a large convolution does not drown a small bias. Adam, cosine-annealed to zero.
    With ``scaling="tensor"`` the per-tensor gain and shift stay at the trained tensors' std
    and mean, where the wrapper set them.

    Args:
        qt: the wrapper whose generator is fitted in place.
        reference: the trained weights, by parameter name.
        steps: Adam steps.
        lr: the starting learning rate.
        progress: show a progress bar.

    Returns:
        ``{"steps", "lr", "seconds", "relative_l2" (per tensor), "relative_l2_mean",
        "relative_l2_overall" (of all generated weights together), "relative_l2_before"
        (the overall figure before fitting)}``.
    """
    from tqdm.auto import tqdm

    gen = qt.generator
    names = qt.layout.names
    device = gen.angles.device
    targets = [reference[n].detach().to(device, torch.float32) for n in names]
    denoms = [max(float(t.pow(2).sum()), 1e-12 * t.numel()) for t in targets]
    # gain and shift already hold each trained tensor's std and mean (they are set from the
    # MODEL's weights); fitting them too lets the fit buy a lower MSE by shrinking every tensor
    # it cannot represent towards its mean, which kills a ReLU network's signal (measured: 10%
    # start on digits, and training rarely recovered). So only the pattern is fitted.
    scale = {id(p) for p in (getattr(gen, "gain", None), getattr(gen, "shift", None)) if p is not None}
    opt = torch.optim.Adam([p for p in gen.parameters() if id(p) not in scale], lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    overall = sum(float(t.pow(2).sum()) for t in targets)

    def total_error(weights: dict) -> float:
        err = sum(float((weights[n] - t).pow(2).sum()) for n, t in zip(names, targets, strict=True))
        return math.sqrt(err / overall) if overall > 0 else math.sqrt(err)

    with torch.no_grad():
        before = total_error(qt.generate())
    t0 = time.perf_counter()
    for _ in tqdm(range(steps), disable=not progress, unit="step", leave=False, desc="init fit"):
        opt.zero_grad(set_to_none=True)
        weights = qt.generate()
        loss = sum((weights[n] - t).pow(2).sum() / d
                   for n, t, d in zip(names, targets, denoms, strict=True)) / len(names)
        loss.backward()
        opt.step()
        sched.step()
    seconds = time.perf_counter() - t0
    with torch.no_grad():
        weights = qt.generate()
        per = relative_l2(weights, dict(zip(names, targets, strict=True)))
        after = total_error(weights)
    return {"steps": steps, "lr": lr, "seconds": seconds, "relative_l2": per,
            "relative_l2_mean": sum(per.values()) / len(per), "relative_l2_overall": after,
            "relative_l2_before": before}
