"""``qtrain sweep``: one compression per (ansatz, qubits, blocks), each in its own subfolder that
appears atomically when done, a classical baseline, and tables regenerated from what is done."""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import torch

from . import checkpoint as ckpt
from .config import (
    DISTILL_OPTS,
    INIT_OPTS,
    CompressConfig,
    DistillConfig,
    InitConfig,
    QTConfig,
    TrainConfig,
    to_dict,
)
from .errors import QTrainError

OPTIONS = "sweep-options.json"  # in every subfolder: what it was made with
BASELINE = "classical"
TARGET_OPTS = ("arch", "arch_kwargs", "trust_pickle", "data", "data_dir")
COLUMNS = ("run", "ansatz", "qubits", "chunk", "blocks", "generated", "trainable_params", "angles",
           "mapping", "scaling", "classical", "compression_ratio", "test_accuracy",
           "relative_accuracy", "test_loss", "train_loss", "generalization_gap", "best_epoch",
           "epochs", "seconds", "mapping_hidden", "mapping_act", "scaling_mode", "grad", "shots")


def build_config(opts: dict, ansatz: str, blocks: int, qubits: int | None) -> CompressConfig:
    """A :class:`CompressConfig` from ``qtrain compress`` option values, by field name."""
    qt_fields = {f.name for f in dataclasses.fields(QTConfig)}
    tr_fields = {f.name for f in dataclasses.fields(TrainConfig)}
    known = qt_fields | tr_fields | set(TARGET_OPTS) | set(DISTILL_OPTS) | set(INIT_OPTS)
    unknown = [k for k, v in opts.items() if k not in known and v not in (None, False, ())]
    if unknown:
        raise QTrainError(f"qtrain sweep cannot pass on --{unknown[0].replace('_', '-')}: run "
                          "qtrain compress for that setting")
    qt = {k: v for k, v in opts.items() if k in qt_fields}
    qt.update(ansatz=ansatz, blocks=blocks, qubits=qubits)
    return CompressConfig(
        QTConfig(**qt), TrainConfig(**{k: v for k, v in opts.items() if k in tr_fields}),
        DistillConfig(**{f: opts[k] for k, f in DISTILL_OPTS.items() if k in opts}),
        InitConfig(**{f: opts[k] for k, f in INIT_OPTS.items() if k in opts}))


def _signature(model, opts: dict, cfg: CompressConfig) -> dict:
    data = to_dict(cfg)
    for key in ("quiet", "device", "compile", "compile_network"):  # how it ran, not what it is
        data["_data"]["train"]["_data"].pop(key, None)
    return {"model": model, **{k: opts.get(k) for k in TARGET_OPTS if k != "trust_pickle"},
            "config": data}


def _differs(a: dict, b: dict, path: str = "") -> str | None:
    """The first setting where two signatures differ, as 'name a, not b'."""
    for key in sorted(set(a) | set(b)):
        va, vb = a.get(key), b.get(key)
        if isinstance(va, dict) and isinstance(vb, dict):
            found = _differs(va, vb, key if key != "_data" else path)
            if found:
                return found
        elif va != vb and key not in ("_type", "_version"):
            return f"{key} {vb!r}, not {va!r}"
    return None


def _load_target(model, opts: dict, seed: int):
    from .models import load_target

    kwargs = opts.get("arch_kwargs")
    if isinstance(kwargs, str):
        try:
            kwargs = json.loads(kwargs)
        except json.JSONDecodeError as exc:
            raise QTrainError(f"--arch-kwargs is not valid JSON ({exc.msg}): e.g. "
                              "'{\"num_classes\": 10}'") from None
    torch.manual_seed(seed)  # as `qtrain compress` does: a fresh init follows --seed
    return load_target(model, opts.get("arch"), kwargs, opts.get("trust_pickle", False))


def _finished(folder: Path, name: str, sig: dict, force: bool) -> bool:
    done = folder / name
    if not (done / ckpt.RECORD).is_file() and not (done / "result.json").is_file():
        return False
    if force:
        shutil.rmtree(done)
        return False
    old = json.loads((done / OPTIONS).read_text()) if (done / OPTIONS).is_file() else {}
    diff = _differs(old, sig)
    if diff:
        raise QTrainError(f"{done} was made with other settings ({diff}): use another --out, "
                          "or --force to redo it")
    return True


def _partial(folder: Path, name: str, sig: dict) -> tuple[Path, bool]:
    """The work folder of a combination; resumable when an interrupted run left one behind."""
    work = folder / f".partial-{name}"
    old = work / OPTIONS
    resume = (work / ckpt.STATE).is_file() and old.is_file() and json.loads(old.read_text()) == sig
    if work.exists() and not resume:
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    ckpt.write_json(work / OPTIONS, sig)
    return work, resume


def run_sweep(model: str | None, ansatze, blocks, qubits, opts: dict, out: str | None = None,
              force: bool = False, baseline_epochs: int | None = None, baseline_lr: float = 1e-3,
              say: Callable[[str], None] = print) -> Path:
    """Compress ``model`` once per (ansatz, qubits, blocks) into ``out``; write the tables.

    Args:
        model: the MODEL argument of ``qtrain compress``.
        ansatze, blocks, qubits: the values to combine (``None`` qubits = auto).
        opts: every other ``qtrain compress`` option, by parameter name.
        out: the sweep folder (default ``sweeps/<model>``).
        force: redo finished combinations.
        baseline_epochs: epochs of the classical baseline (default: ``--epochs``; 0 = none).
        baseline_lr: the classical baseline's Adam learning rate.
        say: where progress lines go.

    Returns:
        The sweep folder.
    """
    from .compress import compress
    from .data import load_data
    from .layout import select, size_circuit
    from .tables import write_tables

    probe = build_config(opts, ansatze[0], blocks[0], qubits[0])
    seed = probe.train.seed
    target = _load_target(model, opts, seed)
    folder = Path(out or Path("sweeps") / target.name)
    folder.mkdir(parents=True, exist_ok=True)
    spec, data_dir = opts.get("data") or "digits", opts.get("data_dir")
    data = load_data(spec, seed=seed, data_dir=data_dir)
    epochs = probe.train.epochs if baseline_epochs is None else baseline_epochs
    if epochs:
        _baseline(folder, model, opts, probe, target, data, epochs, baseline_lr, force, say)
    size = select(target.module, probe.qt.include, probe.qt.exclude).size
    combos = []
    for ansatz in ansatze:
        for q in qubits:
            n = size_circuit(size, q, probe.qt.chunk, probe.qt.max_auto_qubits)[0]
            combos += [(ansatz, q, n, b) for b in blocks if (ansatz, n, b) not in
                       {(a, m, c) for a, _, m, c in combos}]
    for i, (ansatz, q, n, b) in enumerate(combos, 1):
        name = f"{ansatz}-q{n}-L{b}"
        cfg = build_config(opts, ansatz, b, q)
        sig = _signature(model, opts, cfg)
        if _finished(folder, name, sig, force):
            say(f"[{i}/{len(combos)}] {name}: finished earlier, skipped")
            continue
        work, resume = _partial(folder, name, sig)
        target = _load_target(model, opts, seed)
        res = compress(target, data, cfg, work, resume=resume, force=True,
                       data_record={"spec": spec, "dir": data_dir})
        os.replace(work, folder / name)  # the combination appears whole, or not at all
        m, c = res.metrics, res.counts
        score = (f"test accuracy {m['test_accuracy']:.2%}" if m["test_accuracy"] is not None
                 else f"test loss {m['test_loss']:.4g}")
        say(f"[{i}/{len(combos)}] {name}: {c['trainable_params']:,} trainable, ratio "
            f"{c['compression_ratio']:.2f}x, {score} ({m['seconds']:.0f} s)"
            + (", resumed" if resume else ""))
        write_tables(folder)
    plotted = write_tables(folder, plots=True)
    say(f"wrote {folder}/sweep.csv, sweep.md" + (", pareto.png, curves.png" if plotted else ""))
    if not plotted:
        say("matplotlib is not installed, so no pareto.png: pip install 'qtrain[plot]' (tables written)")
    return folder


def _baseline(folder, model, opts, probe, target, data, epochs, lr, force, say) -> None:
    from .baseline import reset_parameters, train_classical
    from .checkpoint import write_metrics, write_tensors
    from .models import build_arch

    sig = {"model": model, **{k: opts.get(k) for k in TARGET_OPTS if k != "trust_pickle"},
           "epochs": epochs, "lr": lr, "batch_size": probe.train.batch_size,
           "seed": probe.train.seed}
    if _finished(folder, BASELINE, sig, force):
        say(f"classical baseline ({epochs} epochs): finished earlier, skipped")
        return
    work, _ = _partial(folder, BASELINE, sig)
    torch.manual_seed(probe.train.seed)  # the fresh init `qtrain compress` draws for this seed
    spec = target.arch.get("spec")
    net = build_arch(spec, target.arch.get("kwargs")) if spec else reset_parameters(target.module)
    result = train_classical(net, *data, epochs, probe.train.batch_size, lr, probe.train.seed,
                             probe.train.device)
    write_metrics(work / ckpt.METRICS, result.pop("history"))
    write_tensors(work / ckpt.MODEL, net.state_dict(), "classical-baseline")
    ckpt.write_json(work / "result.json", {"name": target.name, **result})
    os.replace(work, folder / BASELINE)
    score = (f"test accuracy {result['test_accuracy']:.2%}" if result["test_accuracy"] is not None
             else f"test loss {result['test_loss']:.4g}")
    say(f"classical baseline ({epochs} epochs): {result['params']:,} params, {score} "
        f"({result['seconds']:.0f} s)")


def csv_text(rows: list[dict]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()
