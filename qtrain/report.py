"""``qtrain info``: what a checkpoint is, from ``qtrain.json`` and file sizes alone (no model is
built, no tensor is read)."""

from __future__ import annotations

import json
from pathlib import Path

from . import checkpoint as ckpt


def _size(path: Path) -> str:
    if not path.is_file():
        return "missing"
    n = path.stat().st_size
    return f"{n / 1024:,.1f} KiB" if n < 1024**2 else f"{n / 1024**2:,.2f} MiB"


def info_lines(rec: dict, folder: str | Path) -> list[str]:
    """The lines ``qtrain info`` prints for the record ``rec`` of ``folder``."""
    folder = Path(folder)
    s, c, m = rec["sizing"], rec["counts"], rec.get("metrics", {})
    cfg = rec.get("config", {}).get("_data", {})
    qt, tr = cfg.get("qt", {}).get("_data", {}), cfg.get("train", {}).get("_data", {})
    arch = rec["arch"].get("spec") or rec["arch"].get("pickle") or rec["arch"].get("module")
    widths = [s["qubits"] + 1, *(qt.get("mapping_hidden") or []), s["chunk"]]
    lines = [
        f"architecture   {arch} {json.dumps(rec['arch'].get('kwargs') or {})}"
        + (f" (weights from {rec['source']['path']})" if rec.get("source", {}).get("path") else ""),
        f"generated M    {s['generated']:,} in {len(rec['manifest'])} tensors"
        + (f"; kept {'frozen' if qt.get('freeze_rest') else 'classical'}: "
           f"{', '.join(rec['classical'])}" if rec.get("classical") else ""),
        f"circuit        {s['ansatz']}, {s['qubits']} qubits x {s['blocks']} blocks, "
        f"chunk {s['chunk']}",
    ]
    if qt:
        lines += [
            f"mapping        {' -> '.join(map(str, widths))} ({qt.get('mapping_act')}); scaling "
            f"{qt.get('scaling')}; post-processing gamma {qt.get('gamma')}, beta "
            f"{qt.get('beta')}, alpha {qt.get('alpha')}",
            f"simulation     {qt.get('backend')}"
            + (f" ({qt.get('pl_device')})" if qt.get("backend") == "pennylane" else ""),
            gradient_line(rec),
        ]
        patterns = [f"{k} {','.join(qt[k])}" for k in ("include", "exclude") if qt.get(k)]
        if patterns:
            lines.append(f"patterns       {'; '.join(patterns)}")
    frozen = c.get("frozen", 0)
    lines += [
        f"trainable      {c['trainable_params']:,} (angles {c['angles']}, mapping "
        f"{c['mapping']}, scaling {c['scaling']}, classical {c['classical']})"
        + (f"; frozen {frozen:,} (stored, not trained)" if frozen else ""),
        f"ratio          {c['compression_ratio']:.2f}x ({c['target_params']:,} -> "
        f"{c['trainable_params'] + frozen:,})",
        f"files          {ckpt.COMPRESSED} {_size(folder / ckpt.COMPRESSED)}, "
        f"{ckpt.MODEL} {_size(folder / ckpt.MODEL)}",
    ]
    d = rec.get("data", {})
    if d:
        lines.append(f"data           {d.get('spec') or 'in-memory'} ({d.get('task')}"
                     + (", labelled by MODEL" if d.get("labels") == "teacher" else "") + "): "
                     f"{d.get('train_size', 0):,} train / {d.get('test_size', 0):,} test, input "
                     f"{tuple(d.get('input_shape') or ())}")
    kd = cfg.get("distill", {}).get("_data", {})
    if kd.get("enabled"):
        lines.append(f"distillation   from MODEL's outputs: alpha {kd.get('alpha')}, temperature "
                     f"{kd.get('temperature')}")
    if tr:
        lines.append(f"training       {tr.get('epochs')} epochs, batch {tr.get('batch_size')}, Adam "
                     f"lr {tr.get('lr')}, {tr.get('schedule')} schedule, clip {tr.get('clip')}, "
                     f"seed {tr.get('seed')}")
    if m.get("test_accuracy") is not None:
        lines.append(f"test accuracy  {m['test_accuracy']:.2%} (best epoch {m['best_epoch']})")
    if m.get("test_loss") is not None:
        lines.append(f"losses         test {m['test_loss']:.4f}, train {m.get('train_loss', 0):.4f}"
                     f", gap {m.get('generalization_gap', 0):.4f}; best epoch "
                     f"{m.get('best_epoch')}/{m.get('epochs')}, {m.get('seconds', 0):.1f} s")
    original = m.get("original")
    if original and original.get("test_accuracy") is not None:
        lines.append(f"original MODEL {original['test_accuracy']:.2%} test accuracy")
    if m.get("init_fit") and "steps" in m["init_fit"]:
        lines.append("init           " + init_fit_line(m["init_fit"]))
    if m.get("agreement"):
        lines.append("agreement      " + agreement_line(m["agreement"]))
    if rec.get("created"):
        lines.append(f"created        {rec['created']}")
    lines.append("versions       " + ", ".join(f"{k} {v}" for k, v in rec["versions"].items() if v))
    return lines


def gradient_line(rec: dict) -> str:
    """How the circuit's gradient was obtained, with the shots and the circuits run."""
    qt = rec.get("config", {}).get("_data", {}).get("qt", {}).get("_data", {})
    grad, shots = qt.get("grad", "backprop"), qt.get("shots")
    line = f"gradient       {grad}, {f'{shots:,} shots' if shots else 'exact probabilities'}"
    if qt.get("backend") == "pennylane":
        line += f", pennylane {qt.get('pl_device')}"
    runs = rec.get("metrics", {}).get("circuit_executions")
    return line + (f"; {runs:,} circuit executions" if runs is not None else "")


def init_fit_line(r: dict) -> str:
    """One line on ``--init fit``: its fit error per tensor and the accuracy it starts from."""
    if "steps" not in r:
        return "init fit: done before the run was interrupted (no report kept)"
    per = r["relative_l2"].values()
    line = (f"init fit ({r['steps']} steps, {r['seconds']:.1f} s): relative L2 "
            f"{r['relative_l2_overall']:.3f} overall (was {r['relative_l2_before']:.3f}), per "
            f"tensor {min(per):.3f}-{max(per):.3f} (mean {r['relative_l2_mean']:.3f})")
    if r.get("test_accuracy") is not None:
        return line + (f"; test accuracy {r['before']['test_accuracy']:.2%} -> "
                       f"{r['test_accuracy']:.2%} before task training")
    return line + (f"; test loss {r['before']['test_loss']:.4g} -> {r['test_loss']:.4g} before "
                   "task training")


def agreement_figures(a: dict) -> str:
    """Top-1 and mean KL (classification) or output MSE (regression), in words."""
    if "top1" in a:
        return f"top-1 {a['top1']:.2%}, mean KL {a['kl']:.4f} nats"
    return f"output MSE {a['mse']:.4g}"


def agreement_line(a: dict) -> str:
    """Agreement with the original MODEL on the test split."""
    return f"agreement with MODEL: {agreement_figures(a)}"
