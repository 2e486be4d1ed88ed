"""``qtrain evaluate``: what compression cost one checkpoint, in parameters, bytes and accuracy,
on the split it was trained on (rebuilt from the record) or on another ``--data``."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from . import checkpoint as ckpt
from .baseline import reset_parameters, score, train_classical
from .data import TORCHVISION, has_labels, load_data
from .distill import agreement_on, infer_task, teacher_outputs, with_teacher
from .errors import QTrainError
from .loading import build_model, load
from .predict import instance
from .report import agreement_figures
from .train import task_of

KINDS = ("angles", "mapping", "scaling", "classical")


def _kind(key: str) -> str:
    if key == "generator.angles":
        return "angles"
    if key.startswith("generator.mapping."):
        return "mapping"
    if key in ("generator.gain", "generator.shift"):
        return "scaling"
    if key.startswith("classical."):
        return "classical"
    if key.startswith("frozen."):
        return "frozen"  # the rest kept at MODEL's weights: stored, not trained
    return "buffers"  # e.g. generator.ref: saved state, never trained


def file_counts(folder: str | Path) -> dict:
    """The numbers stored in ``compressed.safetensors`` by kind, read from its header alone.

    Returns:
        ``{angles, mapping, scaling, classical, frozen, buffers, trainable_params}``, where
        ``trainable_params`` is everything but the frozen rest and the buffers.
    """
    from safetensors import SafetensorError, safe_open

    path = Path(folder) / ckpt.COMPRESSED
    if not path.is_file():
        raise QTrainError(f"{path} is missing: is this a qtrain checkpoint folder?")
    counts = dict.fromkeys((*KINDS, "frozen", "buffers"), 0)
    try:
        with safe_open(str(path), "pt") as f:
            for key in f.keys():
                n = 1
                for d in f.get_slice(key).get_shape():
                    n *= d
                counts[_kind(key)] += n
    except (SafetensorError, OSError, ValueError) as exc:
        raise QTrainError(f"{path} is corrupt or truncated ({exc}): re-run qtrain compress") from exc
    counts["trainable_params"] = sum(counts[k] for k in KINDS)
    return counts


def _imports_code(spec: str) -> bool:
    return (spec not in ("digits", *TORCHVISION) and ":" in spec and not Path(spec).exists()
            and not spec.endswith((".npz", ".npy")))


def checkpoint_data(record: dict, data: str | None = None, data_dir: str | None = None):
    """Rebuild the checkpoint's split (its ``--data`` and seed), or load ``data`` instead.

    Returns:
        (train_dataset, test_dataset, description dict); the description's ``task`` is
        ``None`` when the data has no labels.
    """
    seed = record["config"]["_data"]["train"]["_data"]["seed"]
    recorded = record.get("data", {})
    spec = data or recorded.get("spec")
    data_dir = data_dir if data_dir is not None else recorded.get("dir")
    if spec is None:
        raise QTrainError("the checkpoint was trained on in-memory data sets: pass --data")
    if data is None and _imports_code(spec):
        raise QTrainError(f"the recorded data {spec!r} imports code: pass --data {spec} again if "
                          "you trust it")
    if data is None and spec not in ("digits", *TORCHVISION) and not _imports_code(spec) \
            and not Path(spec).exists():
        raise QTrainError(f"the recorded data {spec} is not found from {Path.cwd()}: pass --data "
                          "with its path from here")
    train, test = load_data(spec, seed=seed, data_dir=data_dir)
    same = spec == recorded.get("spec") and data_dir == recorded.get("dir")
    task = task_of(train) if has_labels(train) and has_labels(test) else None
    return train, test, {"spec": spec, "dir": data_dir, "seed": seed, "task": task,
                         "train_size": len(train), "test_size": len(test), "recorded_split": same}


def original_model(record: dict, original: str | None = None, *, arch: str | None = None,
                   trust_arch: bool = False, trust_pickle: bool = False):
    """The trained MODEL the checkpoint was compressed from, to compare against.

    Args:
        record: the checkpoint's ``qtrain.json``.
        original: a model file to use instead of the recorded one (same architecture).
        arch, trust_arch, trust_pickle: consent to rebuild or unpickle it.

    Returns:
        ``(module or None, note)``: ``None`` with the reason when there is nothing to compare
        with (a fresh architecture, or the recorded file is gone or has changed).
    """
    from .models import file_sha256, load_into, load_target, read_state_dict

    source = record.get("source") or {}
    path = original or source.get("path")
    if path is None:
        return None, "MODEL was a fresh architecture, with no trained weights to agree with"
    if not Path(path).is_file():
        if original:
            raise QTrainError(f"--original {original} does not exist: give the trained model file")
        return None, f"the original MODEL {path} is gone: pass --original to compare with it"
    if original is None and source.get("sha256") and file_sha256(Path(path)) != source["sha256"]:
        return None, (f"the original MODEL {path} has changed since compress: pass --original "
                      f"{path} to compare with it anyway")
    if "pickle" in record["arch"]:
        if not trust_pickle:
            raise QTrainError(f"the original MODEL {path} is a pickled module: pass "
                              "--trust-pickle to unpickle it (it runs code from the file)")
        return load_target(path, trust_pickle=True).module.eval(), None
    net = build_model(record, None, arch, trust_arch)
    load_into(net, read_state_dict(Path(path)), f"the original MODEL {path} does not match "
              "the checkpoint's architecture")
    return net.eval(), None


def _row(m: dict) -> dict:
    keys = ("test_accuracy", "test_loss", "train_loss", "train_accuracy", "generalization_gap")
    return {k: m.get(k) for k in keys}


def evaluate_checkpoint(folder: str | Path, data: str | None = None, data_dir: str | None = None,
                        baseline_epochs: int | None = None, baseline_lr: float = 1e-3, *,
                        arch: str | None = None, trust_arch: bool = False,
                        trust_pickle: bool = False, device: str = "cpu",
                        original: str | None = None) -> dict:
    """Every figure ``qtrain evaluate`` prints, as a dict (the ``--json`` output).

    Args:
        folder: a checkpoint folder written by ``qtrain compress``.
        data: another ``--data`` spec; default: the recorded one, split with the recorded seed.
        data_dir: the torchvision root for ``data``.
        baseline_epochs: also train the architecture classically for this many epochs.
        baseline_lr: the classical baseline's Adam learning rate.
        arch, trust_arch, trust_pickle: consent to rebuild a non-built-in architecture.
        device: where to evaluate and train.
        original: the trained MODEL file to measure agreement with (default: the recorded
            MODEL, if it is still there unchanged).
    """
    folder = Path(folder)
    record = ckpt.read_record(folder)
    qt_cfg = record["config"]["_data"]["qt"]["_data"]
    train_cfg = record["config"]["_data"]["train"]["_data"]
    counts, stored = record["counts"], file_counts(folder)
    sizes = {name: (folder / name).stat().st_size if (folder / name).is_file() else None
             for name in (ckpt.COMPRESSED, ckpt.MODEL)}
    net = instance(record, trust_pickle)
    model = load(folder, model=net, arch=arch, trust_arch=trust_arch).to(device)
    train_ds, test_ds, described = checkpoint_data(record, data, data_dir)
    teacher, note = original_model(record, original, arch=arch, trust_arch=trust_arch,
                                   trust_pickle=trust_pickle)
    teacher_test = teacher_outputs(teacher, test_ds, device) if teacher is not None else None
    task = described["task"]
    if task is None:  # inputs only: the original MODEL's predictions are the labels
        if teacher is None:
            raise QTrainError(f"the data has no labels and {note[0].lower() + note[1:]}; "
                              "evaluate needs the original MODEL (--original) to label it")
        teacher_train = teacher_outputs(teacher, train_ds, device)
        task = record.get("data", {}).get("task") or infer_task(teacher_train, "auto")
        train_ds = with_teacher(train_ds, teacher_train, task)
        test_ds = with_teacher(test_ds, teacher_test, task)
        described.update(task=task, labels="teacher")
    test, train = score(model, test_ds, task, device), score(model, train_ds, task, device)
    report = {
        "checkpoint": str(folder), "name": record.get("name"), "arch": record["arch"],
        "sizing": record["sizing"],
        "mapping": {"hidden": qt_cfg.get("mapping_hidden"), "act": qt_cfg.get("mapping_act"),
                    "scaling": qt_cfg.get("scaling")},
        "grad": qt_cfg.get("grad"), "shots": qt_cfg.get("shots"),
        "counts": counts, "file_counts": {**stored, "agree": stored["trainable_params"]
                                          == counts["trainable_params"]},
        "files": {"compressed_bytes": sizes[ckpt.COMPRESSED], "model_bytes": sizes[ckpt.MODEL],
                  "size_ratio": (sizes[ckpt.MODEL] / sizes[ckpt.COMPRESSED]
                                 if all(sizes.values()) else None)},
        "data": described,
        "quantum_train": {"params": counts["trainable_params"], "test_accuracy": test["accuracy"],
                          "test_loss": test["loss"], "train_loss": train["loss"],
                          "train_accuracy": train["accuracy"],
                          "generalization_gap": test["loss"] - train["loss"]},
        "original": None, "baseline": None,
        "agreement": (None if teacher is None else
                      {**agreement_on(model, teacher_test, test_ds, task, device),
                       "original": original or record["source"]["path"]}),
        "agreement_note": note,
    }
    original = record.get("metrics", {}).get("original")
    if teacher is not None:  # scored now, on whatever data this is
        t_test, t_train = score(teacher, test_ds, task, device), score(teacher, train_ds, task, device)
        report["original"] = {"params": counts["target_params"], "test_accuracy": t_test["accuracy"],
                              "test_loss": t_test["loss"], "train_loss": t_train["loss"],
                              "train_accuracy": t_train["accuracy"],
                              "generalization_gap": t_test["loss"] - t_train["loss"]}
    elif original and described["recorded_split"]:
        report["original"] = {"params": counts["target_params"], **_row(original)}
    if baseline_epochs:
        torch.manual_seed(train_cfg["seed"])  # the fresh init that `qtrain compress` would draw
        fresh = (reset_parameters(net) if net is not None
                 else build_model(record, None, arch, trust_arch))
        result = train_classical(fresh, train_ds, test_ds, baseline_epochs,
                                 train_cfg["batch_size"], baseline_lr, train_cfg["seed"], device)
        result.pop("history")
        report["baseline"] = result
    return report


def _size(n: int | None) -> str:
    if n is None:
        return "missing"
    return f"{n / 1024:,.1f} KiB" if n < 1024**2 else f"{n / 1024**2:,.2f} MiB"


def _num(x):
    return "-" if x is None else f"{x:.4f}"


def _pct(x):
    return "-" if x is None else f"{x:.2%}"


def format_report(r: dict) -> str:
    """The human table of :func:`evaluate_checkpoint`'s figures."""
    s, c, fc, f, d = r["sizing"], r["counts"], r["file_counts"], r["files"], r["data"]
    arch = r["arch"].get("spec") or r["arch"].get("pickle") or r["arch"].get("module")
    mp = r["mapping"]
    widths = [s["qubits"] + 1, *(mp["hidden"] or []), s["chunk"]]
    agree = ("compressed.safetensors agrees" if fc["agree"] else
             f"MISMATCH: compressed.safetensors holds {fc['trainable_params']:,}")
    lines = [
        f"checkpoint         {r['checkpoint']}",
        f"architecture       {arch} {json.dumps(r['arch'].get('kwargs') or {})}",
        f"circuit            {s['ansatz']}, {s['qubits']} qubits x {s['blocks']} blocks, chunk "
        f"{s['chunk']}; mapping {' -> '.join(map(str, widths))} ({mp['act']}); scaling {mp['scaling']}",
    ]
    if r.get("grad") is not None or r.get("shots") is not None:
        lines.append(f"gradient           {r.get('grad') or 'default'}, shots {r.get('shots') or 'exact'}")
    lines += [
        f"generated M        {s['generated']:,}",
        f"trainable          {c['trainable_params']:,} = angles {c['angles']:,} + mapping "
        f"{c['mapping']:,} + scaling {c['scaling']:,} + kept classical {c['classical']:,} ({agree})"
        + (f"; frozen {c['frozen']:,} (stored, not trained)" if c.get("frozen") else ""),
        f"compression ratio  {c['compression_ratio']:.2f}x ({c['target_params']:,} -> "
        f"{c['trainable_params'] + c.get('frozen', 0):,})",
        f"files              {ckpt.COMPRESSED} {_size(f['compressed_bytes'])} vs {ckpt.MODEL} "
        f"{_size(f['model_bytes'])}"
        + (f" ({f['size_ratio']:.1f}x smaller)" if f["size_ratio"] else ""),
        f"data               {d['spec']} (seed {d['seed']}): {d['train_size']:,} train / "
        f"{d['test_size']:,} test" + ("" if d["recorded_split"] else " (not the recorded data)")
        + ("; labels: the original MODEL's predictions" if d.get("labels") == "teacher" else ""),
        "",
    ]
    loss = "CE" if d["task"] == "classification" else "MSE"
    lines.append(f"{'model':<30}{'params':>9}{'test acc':>10}{'test ' + loss:>10}"
                 f"{'train ' + loss:>10}{'gap':>9}")
    rows = [("Quantum-Train (regenerated)", r["quantum_train"]),
            ("original MODEL", r["original"])]
    if r["baseline"]:
        e = r["baseline"]["epochs"]
        rows.append((f"classical, {e} epoch{'s' if e != 1 else ''}", r["baseline"]))
    for label, m in rows:
        if m:
            lines.append(f"{label:<30}{m['params']:>9,}{_pct(m['test_accuracy']):>10}"
                         f"{_num(m['test_loss']):>10}{_num(m['train_loss']):>10}"
                         f"{_num(m['generalization_gap']):>9}")
    lines.append(f"gap = test {loss} - train {loss}")
    a = r.get("agreement")
    if a:
        lines.append(f"agreement with the original MODEL on the test split: {agreement_figures(a)}")
    elif r.get("agreement_note"):
        lines.append(f"agreement: - ({r['agreement_note']})")
    return "\n".join(lines)
