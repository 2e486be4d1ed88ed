"""The training loop: generated weights once per step, the network run on them, clipping, a plateau
schedule, evaluation every epoch, the best epoch kept, and a resumable state each epoch."""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, TensorDataset

from . import checkpoint as ckpt
from . import distributed
from .allocator import keep_freed_memory
from .config import TrainConfig
from .data import inputs_of
from .errors import QTrainError
from .quantum_train import QuantumTrain
from .resume import StopOnSignal, TrainingInterrupted, load_state, rng_state, save_state, set_rng_state


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
        for x, y, *_ in loader:
            yield x.to(device), y.to(device)


def resolve_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise QTrainError("--device cuda was asked for, but no CUDA GPU is visible: use --device cpu")
    if name == "mps" and not torch.backends.mps.is_available():
        raise QTrainError("--device mps was asked for, but MPS is not available: use --device cpu")
    return torch.device(name)


def check_fit(qt: QuantumTrain, ds: Dataset, task: str | None) -> None:
    """Run one tiny batch; on failure, name the layer that failed and the data's shape.

    ``task`` ``None`` (data without labels) checks the forward pass alone.
    """
    x = inputs_of(ds, 0, min(2, len(ds)))
    running: list[str] = []
    names = {m: n or type(m).__name__ for n, m in qt.target.named_modules()}

    def pre(m, _):
        running.append(names[m])

    def post(m, _, __):
        running.pop()

    hooks = [m.register_forward_pre_hook(pre) for m in names]
    hooks += [m.register_forward_hook(post) for m in names]
    was_training = qt.training
    qt.eval()  # a probe: it must not move BatchNorm statistics
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
        qt.train(was_training)
        for h in hooks:
            h.remove()
    if not isinstance(out, torch.Tensor):
        raise QTrainError(f"the model returns {type(out).__name__}; qtrain trains models that "
                          "return one tensor: wrap it in a module that does")
    if task is None:
        return
    y = next(batches(ds, 2, None, "cpu"))[1]
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
    """Mean loss and accuracy (``None`` for regression) on ``ds``, weights generated once.

    Under torchrun each rank evaluates its share and the sums are added over ranks.
    """
    was_training = qt.training
    qt.eval()
    ctx = distributed.current()
    weights = weights if weights is not None else qt.generate()
    total, correct, count = 0.0, 0, 0
    for x, y in batches(distributed.eval_part(ds, ctx), batch_size, None, device):
        out = qt(x, weights=weights)
        total += float(loss_of(out, y, task)) * len(x)
        if task == "classification":
            correct += int((out.argmax(-1) == y).sum())
        count += len(x)
    if ctx.parallel:
        total, correct, count = distributed.all_sum([total, correct, count], device)
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
        on_epoch: Callable[[dict], None] | None = None,
        criterion: Callable[..., torch.Tensor] | None = None) -> list[dict]:
    """Train ``qt`` on ``train_ds``, evaluating on ``test_ds`` each epoch; keep the best epoch.

    On Linux with glibc it first raises malloc's trim and mmap thresholds for the whole process
    (:func:`qtrain.allocator.keep_freed_memory`; opt out with ``QTRAIN_MALLOC_TUNE=0``).

    Under torchrun each rank trains on its share of every global batch of ``cfg.batch_size``
    (see :mod:`qtrain.distributed`). Rank 0 writes the resumable state after every epoch, and on
    Ctrl-C after the current step.

    ``criterion(out, y, *extra)`` is the training loss (default: cross-entropy or MSE to the
    labels), where ``extra`` holds any further columns of the data set (the teacher's outputs
    under distillation). The per-epoch test loss is always the label loss.

    Returns the per-epoch history (also written to ``metrics.jsonl`` when ``out`` is given).
    """
    from tqdm.auto import tqdm

    ctx = distributed.current()
    device = resolve_device(cfg.device)
    keep_freed_memory()  # once per process: no page faults on every step's freed 4-MiB tensors
    task = task_of(train_ds)
    criterion = criterion or (lambda o, y, *_: loss_of(o, y, task))
    qt.to(device)
    opt = torch.optim.Adam(qt.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.schedule == "cosine":
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.epochs)
    else:
        sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, patience=cfg.patience,
                                                           factor=cfg.factor)
    history: list[dict] = []
    best, best_snap, start, first_step, partial, updates = None, None, 0, 0, (0.0, 0, 0.0), 0
    state_path = out / ckpt.STATE if out is not None else None
    if resume and state_path is not None and state_path.is_file():
        st = load_state(state_path)
        data = st["data"]
        for flag, ours, theirs in (("--seed", cfg.seed, data["seed"]),
                                   ("--batch-size", cfg.batch_size, data["batch_size"])):
            if ours != theirs:
                raise QTrainError(f"{state_path} was trained with {flag} {theirs}, not {ours}: "
                                  f"resume with {flag} {theirs}, or start again with --force")
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
        set_rng_state(st["rng"])
        history, best, best_snap = st["history"], st["best"], st["best_snap"]
        start, first_step, updates = data["epoch"], data["step"], st["updates"]
        partial = (st["partial"]["total"], st["partial"]["count"], st["partial"]["seconds"])
    if ctx.parallel:  # every rank starts from rank 0's parameters and buffers
        distributed.broadcast([*qt.state_dict().values(), *qt.target.buffers()])
    params = list(qt.parameters())
    n = len(train_ds)
    steps = math.ceil(n / cfg.batch_size)
    forward = qt
    if cfg.compile or cfg.compile_network:
        from .compiled import compile_network, use_compiled_kernel

        if cfg.compile:
            use_compiled_kernel(qt, device)
        if cfg.compile_network:
            forward = compile_network(qt, device)

    def save(epoch: int, step: int, totals: tuple[float, int, float]) -> None:
        if out is None or not ctx.main:
            return
        save_state(state_path, {
            "current": _snapshot(qt), "optimizer": opt.state_dict(),
            "scheduler": sched.state_dict(), "rng": rng_state(), "updates": updates,
            "data": {"seed": cfg.seed, "batch_size": cfg.batch_size, "epoch": epoch, "step": step},
            "partial": {"total": totals[0], "count": totals[1], "seconds": totals[2]},
            "history": history, "best": best, "best_snap": best_snap, "world_size": ctx.world})

    def interrupted(epoch: int, step: int) -> TrainingInterrupted:
        if out is None:
            return TrainingInterrupted("interrupted (nothing saved: no --out)")
        distributed.barrier()  # let rank 0 finish writing before any rank exits
        return TrainingInterrupted(
            f"interrupted at epoch {epoch + 1}, step {step}/{steps}; saved {state_path}: rerun "
            "the same command with --resume to continue")

    bar = tqdm(total=cfg.epochs * steps, initial=start * steps + first_step,
               disable=cfg.quiet or not ctx.main, unit="step", dynamic_ncols=True, leave=False)
    stop = StopOnSignal(repeat_aborts=not ctx.parallel)
    try:
        with stop:
            for epoch in range(start, cfg.epochs):
                qt.train()
                skip = first_step if epoch == start else 0
                total, count, elapsed = partial if skip else (0.0, 0, 0.0)
                t0 = time.perf_counter() - elapsed
                lr = opt.param_groups[0]["lr"]
                shares = distributed.shard(n, cfg.batch_size, epoch, cfg.seed, ctx)
                for step in range(skip, steps):
                    idx = shares[step]
                    size = min(cfg.batch_size, n - step * cfg.batch_size)  # the global batch
                    opt.zero_grad(set_to_none=True)
                    x = None
                    if len(idx):
                        x, y, *extra = distributed.fetch(train_ds, idx, device)
                        loss = criterion(forward(x), y, *extra)
                        if ctx.parallel:  # this rank's share of the global mean
                            loss = loss * (len(idx) / size)
                        loss.backward()
                    else:  # a short last batch left this rank nothing; it still joins the sum
                        loss = torch.zeros((), device=device)
                    if ctx.parallel:
                        value, halt = distributed.reduce_step(params, loss, stop.requested)
                    else:
                        value, halt = loss.item(), stop.requested
                    if not math.isfinite(value):
                        raise QTrainError(_nan_message(f"the training loss became {value}", epoch,
                                                       step, steps, updates, cfg, state_path, x, idx))
                    if cfg.clip > 0:
                        torch.nn.utils.clip_grad_norm_(params, cfg.clip)
                    opt.step()
                    updates += 1
                    total += value * size
                    count += size
                    bar.update(1)
                    bar.set_postfix(epoch=epoch + 1, loss=f"{total / count:.4f}")
                    if halt and step + 1 < steps:
                        save(epoch, step + 1, (total, count, time.perf_counter() - t0))
                        raise interrupted(epoch, step + 1)
                train_loss = total / count
                if not all(bool(torch.isfinite(p).all()) for p in params):
                    raise QTrainError(_nan_message("the trainable parameters became NaN or Inf", epoch,
                                                   steps - 1, steps, updates, cfg, state_path))
                if ctx.parallel:  # buffers (BatchNorm statistics) follow rank 0, as in DDP
                    distributed.broadcast(list(qt.target.buffers()))
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
                if out is not None and ctx.main:
                    save(epoch + 1, 0, (0.0, 0, 0.0))  # the state first: metrics never run ahead
                    ckpt.write_metrics(out / ckpt.METRICS, history)
                halt = stop.requested
                if ctx.parallel:
                    halt = distributed.all_sum([float(halt)], device)[0] > 0
                if halt:
                    raise interrupted(epoch + 1, 0)
    finally:
        bar.close()
    if best_snap is not None:
        _restore(qt, best_snap)
    return history


def _nan_message(what: str, epoch: int, step: int, steps: int, updates: int, cfg: TrainConfig,
                 state_path: Path | None, x=None, idx=None) -> str:
    """Name where training stopped being finite, the likely cause, and what was kept."""
    if x is not None and not bool(torch.isfinite(x).all()):
        bad = ~torch.isfinite(x.reshape(len(x), -1)).all(dim=1)
        cause = f"the train data has NaN or Inf at index {int(idx[bad.nonzero()[0]])}: clean it"
    elif updates == 0:
        cause = ("it happened before any update, so the model or the data make it, not the "
                 "training: check the model's forward pass on this data")
    else:
        cause = (f"the likely cause is a learning rate too high for this model (--lr {cfg.lr:g}): "
                 "start again (--force) with a lower --lr or a smaller --clip")
    if state_path is not None and state_path.is_file():
        kept = f"the last good state is kept in {state_path}"
    else:
        kept = "no epoch had finished, so nothing was saved"
    return f"{what} at epoch {epoch + 1}, step {step + 1}/{steps}; {cause}; {kept}"
