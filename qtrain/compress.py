"""``compress(model, data, config)``: the one public verb, from a network to a checkpoint."""

from __future__ import annotations

import datetime
import importlib.metadata as md
import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import Dataset

from . import checkpoint as ckpt
from . import distributed
from .config import CompressConfig, to_dict
from .data import check_finite, has_labels, load_data
from .distill import (
    DistillLoss,
    agreement_on,
    infer_task,
    require_trained,
    teacher_outputs,
    with_teacher,
)
from .errors import QTrainError
from .gradients import circuit_metrics
from .init_fit import fit_to_weights
from .models import Target
from .quantum_train import QuantumTrain
from .train import check_fit, evaluate, fit, resolve_device, task_of


@dataclass
class CompressResult:
    """What :func:`compress` returns.

    Attributes:
        model: the regenerated classical network (eval mode), ready for inference.
        quantum_train: the trained :class:`QuantumTrain` wrapper.
        counts: generated and trainable parameter counts and the compression ratio.
        metrics: final metrics of the kept (best) epoch.
        history: per-epoch metrics.
        out: the output folder, if files were written.
    """

    model: nn.Module
    quantum_train: QuantumTrain
    counts: dict
    metrics: dict
    history: list
    out: Path | None


def default_out(name: str, qt: QuantumTrain, root: str | Path = "checkpoints") -> Path:
    c = qt.circuit
    return Path(root) / f"{name}-{c.ansatz}-q{c.qubits}-L{c.blocks}"


def _versions() -> dict:
    out = {}
    for pkg in ("qtrain", "torch", "numpy", "safetensors", "pennylane"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = None
    return out


def prepare_out(out: Path, resume: bool, force: bool, create: bool = True) -> None:
    """Create ``out``; refuse to overwrite another run unless resuming or forced.

    Only the checks run when ``create`` is false (ranks other than 0 under torchrun).
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise QTrainError(f"--out {out} is a file: choose a folder")
    taken = any((out / f).exists() for f in (ckpt.RECORD, ckpt.STATE, ckpt.COMPRESSED))
    if taken and not (resume or force):
        raise QTrainError(f"{out} already holds a run: pass --resume to continue it, --force "
                          "to overwrite it, or choose another --out")
    if not create:
        return
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise QTrainError(f"cannot create --out {out} ({exc.strerror}): choose a writable "
                          "folder") from exc
    probe = out / f".qtrain-write-test.{os.getpid()}"
    ckpt.atomic_write(probe, b"")  # fail now, not after the first epoch
    probe.unlink()
    if force and not resume:
        (out / ckpt.STATE).unlink(missing_ok=True)
        (out / ckpt.INIT_FIT).unlink(missing_ok=True)


def compress(model: nn.Module | Target, data: str | tuple[Dataset, Dataset] = "digits",
             config: CompressConfig | None = None, out: str | Path | None = None, *,
             resume: bool = False, force: bool = False, data_record: dict | None = None,
             on_ready=None, on_init_fit=None) -> CompressResult:
    """Quantum-Train ``model``: train a circuit and mapping MLP that generate all its weights.

    Args:
        model: the target network (its current weights set the init-aware scaling), or a
            :class:`~qtrain.models.Target` from :func:`~qtrain.models.load_target`. A plain
            module counts as trained (a teacher, with agreement reported) when ``config``
            asks for distillation or ``--init fit``.
        data: a ``--data`` spec (``"digits"``, an IDX folder, an ``.npz``, ...) or a
            (train_dataset, test_dataset) pair.
        config: sizing, circuit, mapping and training settings.
        out: a folder for the checkpoint files; ``None`` writes nothing.
        resume: continue from ``out/train_state.pt``.
        force: overwrite a finished run in ``out``.
        data_record: extra facts about the data for ``qtrain.json`` (e.g. its ``dir``).
        on_ready: called as ``on_ready(qt, counts, out)`` once the wrapper is built.
        on_init_fit: called with the ``--init fit`` report before task training.

    With ``config.distill.enabled`` the loss follows the trained ``model``'s outputs, and data
    without labels is labelled by it. With ``config.init.init == "fit"`` the generator first
    fits ``model``'s weights. Both need a trained ``model``.

    Returns:
        A :class:`CompressResult` with the regenerated classical model.
    """
    cfg = config or CompressConfig()
    distill, fit_init = cfg.distill.enabled, cfg.init.init == "fit"
    # a plain module is taken as trained when the config asks to learn from it
    target = model if isinstance(model, Target) else Target(
        model, {"module": type(model).__module__ + ":" + type(model).__qualname__},
        type(model).__name__.lower(), trained=distill or fit_init)
    if isinstance(data, str):
        data_record = {"spec": data, **(data_record or {})}
        data = load_data(data, seed=cfg.train.seed, data_dir=data_record.get("dir"))
    train_ds, test_ds = data
    check_finite(train_ds, "train")
    check_finite(test_ds, "test")
    if distill:
        require_trained(target.trained, "--distill")
    if fit_init:
        require_trained(target.trained, "--init fit")
    labelled = has_labels(train_ds) and has_labels(test_ds)
    if not labelled and not distill:
        raise QTrainError("the data has inputs but no labels: pass --distill (with a trained "
                          "MODEL) to learn from the model's outputs, or give labels")
    device = resolve_device(cfg.train.device)
    ctx = distributed.setup(cfg.train.device)  # joins torchrun's process group, if any
    torch.manual_seed(cfg.train.seed)
    qt = QuantumTrain(target.module, cfg.qt)
    if cfg.train.compile:  # built before anything runs the circuit or --out is touched
        from .compiled import use_compiled_kernel

        use_compiled_kernel(qt, device)
    task = task_of(train_ds) if labelled else None
    check_fit(qt, train_ds, task)
    # the teacher is MODEL itself, run in eval mode before any training touches its buffers
    # or materialize() overwrites its weights: its outputs are all distillation needs
    teacher_test = teacher_outputs(target.module, test_ds, device) if target.trained else None
    criterion = None
    if distill:
        teacher_train = teacher_outputs(target.module, train_ds, device)
        task = task or infer_task(teacher_train, cfg.distill.task)
        train_ds = with_teacher(train_ds, teacher_train, task)
        test_ds = with_teacher(test_ds, teacher_test, task)
        criterion = DistillLoss(cfg.distill, task)
    counts = qt.counts()
    if out == "auto":
        out = default_out(target.name, qt)
    if out is not None:
        out = Path(out)
        prepare_out(out, resume, force, create=ctx.main)
    if on_ready:
        on_ready(qt, counts, out)
    original = None
    if target.trained:
        saved = {n: p.detach().clone() for n, p in target.module.named_parameters()}
        qt.to(device)
        # the MODEL's own weights, evaluated through the same path with nothing generated
        loss, acc = evaluate(qt, test_ds, task, device, weights=saved)
        original = {"test_loss": loss, "test_accuracy": acc}
    init_report = None
    if fit_init:
        init_report = _init_fit(qt, saved, cfg, test_ds, task, device, out, resume, ctx)
        if on_init_fit:
            on_init_fit(init_report)
    history = fit(qt, train_ds, test_ds, cfg.train, out, resume, criterion=criterion)
    weights = qt.generate()
    test_loss, acc = evaluate(qt, test_ds, task, device, weights=weights)
    train_loss, train_acc = evaluate(qt, train_ds, task, device, weights=weights)
    best = max(history, key=lambda r: r["test_accuracy"] if task == "classification"
               else -r["test_loss"])
    metrics = {"test_accuracy": acc, "test_loss": test_loss, "train_loss": train_loss,
               "train_accuracy": train_acc, "generalization_gap": test_loss - train_loss,
               "best_epoch": best["epoch"], "epochs": len(history),
               "seconds": sum(r["seconds"] for r in history)}
    if original:
        metrics["original"] = original
    if init_report:
        metrics["init_fit"] = init_report
    metrics.update(circuit_metrics(qt))
    model_out = qt.materialize(weights).eval()  # the very weights evaluated (a sample, under shots)
    if teacher_test is not None:
        metrics["agreement"] = agreement_on(model_out, teacher_test, test_ds, task, device)
    if out is not None and ctx.main:
        x0 = train_ds[0][0]
        record = {
            "format": ckpt.FORMAT, "format_version": ckpt.FORMAT_VERSION,
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "name": target.name, "arch": target.arch, "source": target.source,
            "sizing": {"generated": qt.layout.size, "qubits": qt.circuit.qubits,
                       "chunk": qt.chunk, "blocks": qt.circuit.blocks,
                       "ansatz": qt.circuit.ansatz},
            "config": to_dict(cfg), "manifest": qt.layout.manifest(),
            "classical": qt.layout.classical, "counts": counts, "metrics": metrics,
            "data": {**(data_record or {}), "task": task, "labels": "data" if labelled else "teacher",
                     "train_size": len(train_ds),
                     "test_size": len(test_ds), "input_shape": list(torch.as_tensor(x0).shape)},
            "versions": _versions(),
        }
        ckpt.write_tensors(out / ckpt.COMPRESSED, qt.state_dict(), "quantum-train")
        ckpt.write_tensors(out / ckpt.MODEL, model_out.state_dict(), "regenerated-model")
        ckpt.write_json(out / ckpt.RECORD, record)
    distributed.finish()  # under torchrun: all ranks end together, after rank 0 has written
    return CompressResult(model_out, qt, counts, metrics, history, out)


def _init_fit(qt: QuantumTrain, saved: dict, cfg: CompressConfig, test_ds: Dataset, task: str,
              device, out: Path | None, resume: bool, ctx) -> dict:
    """Run ``--init fit`` (or, when resuming, read back the report of the one already run)."""
    path = out / ckpt.INIT_FIT if out is not None else None
    if resume and path is not None and (out / ckpt.STATE).is_file():
        try:  # the fit ran before the interrupted training: its report is all there is to do
            return json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            return {"resumed": True}
    qt.to(device)
    before_loss, before_acc = evaluate(qt, test_ds, task, device)
    report = fit_to_weights(qt, saved, cfg.init.fit_steps, cfg.init.fit_lr,
                            progress=not cfg.train.quiet and ctx.main)
    loss, acc = evaluate(qt, test_ds, task, device)
    report.update({"test_accuracy": acc, "test_loss": loss,
                   "before": {"test_accuracy": before_acc, "test_loss": before_loss}})
    if path is not None and ctx.main:
        ckpt.write_json(path, report)
    return report
