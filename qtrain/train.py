"""The training loop: generated weights once per step, functional_call, clipping, a plateau
schedule, evaluation every epoch, the best epoch kept, and a resumable state each epoch."""

from __future__ import annotations

import copy
import io
import math
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, TensorDataset

from . import checkpoint as ckpt
from .config import TrainConfig
from .errors import QTrainError
from .quantum_train import QuantumTrain


def task_of(ds: Dataset) -> str:
    """``classification`` for integer labels, ``regression`` for float targets."""
    y = ds[0][1]
    y = torch.as_tensor(y)
    return "regression" if y.is_floating_point() else "classification"


def loss_of(out: torch.Tensor, y: torch.Tensor, task: str) -> torch.Tensor:
    if task == "classification":
        return F.cross_entropy(out, y)
    return F.mse_loss(out, y.reshape(out.shape))


def batches(ds: Dataset, batch_size: int, gen: torch.Generator | None, device):
    """Mini-batches; a TensorDataset is sliced directly (no per-item collation)."""
    if isinstance(ds, TensorDataset):
        order = torch.randperm(len(ds), generator=gen) if gen is not None else None
        for i in range(0, len(ds), batch_size):
            idx = order[i: i + batch_size] if order is not None else slice(i, i + batch_size)
            yield tuple(t[idx].to(device) for t in ds.tensors[:2])
    else:
        loader = DataLoader(ds, batch_size=batch_size, shuffle=gen is not None, generator=gen)
        for x, y in loader:
            yield x.to(device), y.to(device)


def resolve_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise QTrainError("--device cuda was asked for, but no CUDA GPU is visible: use --device cpu")
    if name == "mps" and not torch.backends.mps.is_available():
        raise QTrainError("--device mps was asked for, but MPS is not available: use --device cpu")
    return torch.device(name)


def check_fit(qt: QuantumTrain, ds: Dataset, task: str) -> None:
    """Run one tiny batch; on failure, name the layer that failed and the data's shape."""
    x, y = next(batches(ds, 2, None, "cpu"))
    running: list[str] = []
    names = {m: n or type(m).__name__ for n, m in qt.target.named_modules()}

    def pre(m, _):
        running.append(names[m])

    def post(m, _, __):
        running.pop()

    hooks = [m.register_forward_pre_hook(pre) for m in names]
    hooks += [m.register_forward_hook(post) for m in names]
    try:
        with torch.no_grad():
            out = qt(x)
    except Exception as exc:  # any layer error becomes one line naming the layer
        layer = running[-1] if running else "the model"
        kind = next((type(m).__name__ for m, n in names.items() if n == layer), "")
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise QTrainError(f"data of shape {tuple(x.shape[1:])} does not fit the model: layer "
                          f"{layer!r} ({kind}) failed: {msg}") from exc
    finally:
        for h in hooks:
            h.remove()
    if not isinstance(out, torch.Tensor):
        raise QTrainError(f"the model returns {type(out).__name__}; qtrain trains models that "
                          "return one tensor: wrap it in a module that does")
    if task == "classification" and isinstance(ds, TensorDataset):
        classes = out.shape[-1] if out.dim() > 1 else 1
        top = int(ds.tensors[1].max())
        if top >= classes:
            raise QTrainError(f"labels go up to {top}, but the model outputs {classes} classes: "
                              "set the output size (e.g. --arch-kwargs '{\"num_classes\": N}')")
    if task == "regression" and out.numel() != y.numel():
        raise QTrainError(f"the model outputs {tuple(out.shape[1:])} per example but targets "
                          f"are {tuple(y.shape[1:])}")


@torch.no_grad()
def evaluate(qt: QuantumTrain, ds: Dataset, task: str, device, batch_size: int = 1024,
             weights=None) -> tuple[float, float | None]:
    """Mean loss and accuracy (``None`` for regression) on ``ds``, weights generated once."""
    was_training = qt.training
    qt.eval()
    weights = weights if weights is not None else qt.generate()
    total, correct, count = 0.0, 0, 0
    for x, y in batches(ds, batch_size, None, device):
        out = qt(x, weights=weights)
        total += float(loss_of(out, y, task)) * len(x)
        if task == "classification":
            correct += int((out.argmax(-1) == y).sum())
        count += len(x)
    qt.train(was_training)
    return total / count, (correct / count if task == "classification" else None)


def _snapshot(qt: QuantumTrain) -> dict:
    return {"qt": copy.deepcopy(qt.state_dict()),
            "buffers": {k: v.clone() for k, v in qt.target.named_buffers()}}


def _restore(qt: QuantumTrain, snap: dict) -> None:
    qt.load_state_dict(snap["qt"])
    bufs = dict(qt.target.named_buffers())
    for k, v in snap["buffers"].items():
        bufs[k].copy_(v)


def fit(qt: QuantumTrain, train_ds: Dataset, test_ds: Dataset, cfg: TrainConfig,
        out: Path | None = None, resume: bool = False,
        on_epoch: Callable[[dict], None] | None = None) -> list[dict]:
    """Train ``qt`` on ``train_ds``, evaluating on ``test_ds`` each epoch; keep the best epoch.

    Returns the per-epoch history (also written to ``metrics.jsonl`` when ``out`` is given).
    """
    from tqdm.auto import tqdm

    device = resolve_device(cfg.device)
    task = task_of(train_ds)
    qt.to(device)
    opt = torch.optim.Adam(qt.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.schedule == "cosine":
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.epochs)
    else:
        sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, patience=cfg.patience,
                                                           factor=cfg.factor)
    gen = torch.Generator().manual_seed(cfg.seed)
    history: list[dict] = []
    best, best_snap, start = None, None, 0
    state_path = out / ckpt.STATE if out is not None else None
    if resume and state_path is not None and state_path.is_file():
        st = _load_state(state_path)
        try:
            _restore(qt, st["current"])
        except RuntimeError as exc:  # the run was made with other sizing or circuit options
            raise QTrainError(f"{state_path} was written with other settings ("
                              f"{str(exc).splitlines()[-1].strip()}): resume with the same "
                              "options, or start again with --force") from exc
        opt.load_state_dict(st["optimizer"])
        sched.load_state_dict(st["scheduler"])
        if cfg.schedule == "cosine" and sched.T_max != cfg.epochs:
            # resumed with other --epochs: continue on the cosine over the new length
            sched.T_max = cfg.epochs
            for group, lr in zip(opt.param_groups, sched._get_closed_form_lr(), strict=True):
                group["lr"] = lr
        gen.set_state(st["data_rng"])
        torch.set_rng_state(st["torch_rng"])
        history, best, best_snap, start = st["history"], st["best"], st["best_snap"], st["epoch"]
    steps = math.ceil(len(train_ds) / cfg.batch_size)
    bar = tqdm(total=cfg.epochs * steps, initial=start * steps, disable=cfg.quiet,
               unit="step", dynamic_ncols=True, leave=False)
    try:
        for epoch in range(start, cfg.epochs):
            qt.train()
            t0, total, count = time.perf_counter(), 0.0, 0
            lr = opt.param_groups[0]["lr"]
            for x, y in batches(train_ds, cfg.batch_size, gen, device):
                loss = loss_of(qt(x), y, task)
                if not torch.isfinite(loss):
                    raise QTrainError(
                        f"the loss became {float(loss)} at epoch {epoch + 1}: lower --lr or "
                        "--clip; the last good checkpoint is kept")
                opt.zero_grad(set_to_none=True)
                loss.backward()
                if cfg.clip > 0:
                    torch.nn.utils.clip_grad_norm_(qt.parameters(), cfg.clip)
                opt.step()
                total += loss.item() * len(x)
                count += len(x)
                bar.update(1)
                bar.set_postfix(epoch=epoch + 1, loss=f"{total / count:.4f}")
            train_loss = total / count
            test_loss, acc = evaluate(qt, test_ds, task, device)
            sched.step(train_loss) if cfg.schedule == "plateau" else sched.step()
            row = {"epoch": epoch + 1, "train_loss": train_loss, "test_loss": test_loss,
                   "test_accuracy": acc, "lr": lr,
                   "seconds": time.perf_counter() - t0}
            history.append(row)
            score = acc if acc is not None else -test_loss
            if best is None or score > best["score"]:
                best = {"score": score, "epoch": epoch + 1}
                best_snap = _snapshot(qt)
            bar.set_postfix(epoch=epoch + 1, loss=f"{train_loss:.4f}",
                            acc="-" if acc is None else f"{acc:.3f}")
            if on_epoch:
                on_epoch(row)
            if out is not None:
                ckpt.write_metrics(out / ckpt.METRICS, history)
                _save_state(state_path, {
                    "current": _snapshot(qt), "optimizer": opt.state_dict(),
                    "scheduler": sched.state_dict(), "data_rng": gen.get_state(),
                    "torch_rng": torch.get_rng_state(), "history": history, "best": best,
                    "best_snap": best_snap, "epoch": epoch + 1})
    finally:
        bar.close()
    if best_snap is not None:
        _restore(qt, best_snap)
    return history


def _save_state(path: Path, state: dict) -> None:
    buf = io.BytesIO()
    torch.save(state, buf)
    ckpt.atomic_write(path, buf.getvalue())


def _load_state(path: Path) -> dict:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise QTrainError(f"{path} is corrupt ({str(exc).splitlines()[0]}): delete it and "
                          "start again without --resume") from exc
