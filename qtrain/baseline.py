"""The honest reference: the same architecture trained classically on the same split and seed,
with the same rule for the kept epoch (the best on the held-out split) as ``qtrain compress``."""

from __future__ import annotations

import copy
import time
from collections.abc import Callable

import torch
from torch import nn
from torch.utils.data import Dataset

from .train import batches, loss_of, resolve_device, task_of


@torch.no_grad()
def score(model: nn.Module, ds: Dataset, task: str, device="cpu", batch_size: int = 1024) -> dict:
    """Mean loss and accuracy (``None`` for regression) of a plain module on ``ds``.

    Args:
        model: any ``nn.Module``; it is put in eval mode.
        ds: the data set.
        task: ``classification`` (cross-entropy) or ``regression`` (MSE).
        device: where to run.
        batch_size: examples per forward pass.

    Returns:
        ``{"loss": float, "accuracy": float | None}``.
    """
    model.eval()
    total, correct, count = 0.0, 0, 0
    for x, y in batches(ds, batch_size, None, device):
        out = model(x)
        total += float(loss_of(out, y, task)) * len(x)
        if task == "classification":
            correct += int((out.argmax(-1) == y).sum())
        count += len(x)
    return {"loss": total / count, "accuracy": correct / count if task == "classification" else None}


def reset_parameters(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with every submodule's ``reset_parameters()`` called: a fresh init."""
    fresh = copy.deepcopy(model)
    for m in fresh.modules():
        if hasattr(m, "reset_parameters"):
            m.reset_parameters()
    return fresh


def train_classical(model: nn.Module, train_ds: Dataset, test_ds: Dataset, epochs: int,
                    batch_size: int = 64, lr: float = 1e-3, seed: int = 0, device: str = "cpu",
                    on_epoch: Callable[[dict], None] | None = None) -> dict:
    """Train ``model`` itself (every weight) with Adam and a cosine schedule; keep the best epoch.

    Args:
        model: the network, freshly initialised by the caller (trained in place).
        train_ds, test_ds: the split.
        epochs: passes over ``train_ds``.
        batch_size, lr, seed: Adam's settings and the data-order seed.
        device: where to train.
        on_epoch: called with each epoch's metrics row.

    Returns:
        Metrics of the kept epoch (``test_accuracy, test_loss, train_loss, train_accuracy,
        generalization_gap, best_epoch, epochs, seconds, params``) plus ``history``.
    """
    dev = resolve_device(device)
    task = task_of(train_ds)
    model.to(dev)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
    gen = torch.Generator().manual_seed(seed)
    history, best, best_state = [], None, None
    for epoch in range(epochs):
        model.train()
        t0, total, count = time.perf_counter(), 0.0, 0
        for x, y in batches(train_ds, batch_size, gen, dev):
            loss = loss_of(model(x), y, task)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.item() * len(x)
            count += len(x)
        sched.step()
        test = score(model, test_ds, task, dev)
        row = {"epoch": epoch + 1, "train_loss": total / count, "test_loss": test["loss"],
               "test_accuracy": test["accuracy"], "seconds": time.perf_counter() - t0}
        history.append(row)
        key = test["accuracy"] if task == "classification" else -test["loss"]
        if best is None or key > best[0]:
            best = (key, epoch + 1)
            best_state = copy.deepcopy(model.state_dict())
        if on_epoch:
            on_epoch(row)
    model.load_state_dict(best_state)
    test, train = score(model, test_ds, task, dev), score(model, train_ds, task, dev)
    return {"test_accuracy": test["accuracy"], "test_loss": test["loss"],
            "train_loss": train["loss"], "train_accuracy": train["accuracy"],
            "generalization_gap": test["loss"] - train["loss"], "best_epoch": best[1],
            "epochs": epochs, "seconds": sum(r["seconds"] for r in history),
            "params": sum(p.numel() for p in model.parameters() if p.requires_grad),
            "lr": lr, "batch_size": batch_size, "seed": seed, "history": history}
