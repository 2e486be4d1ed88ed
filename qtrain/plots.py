"""Plots of a sweep (matplotlib, the optional ``plot`` extra, imported only here and lazily)."""

from __future__ import annotations

import io
import json
from pathlib import Path

from . import checkpoint as ckpt


def _pyplot():
    """matplotlib's pyplot on the file-only Agg backend, or ``None`` when it is not installed."""
    try:
        import matplotlib
    except ImportError:
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120, bbox_inches="tight")
    ckpt.atomic_write(path, buf.getvalue())


def pareto(rows: list[dict], path: Path, title: str = "") -> bool:
    """Test accuracy (or loss) against trainable parameters, log x; the classical baseline and
    the MODEL's own weights as horizontal lines. Returns ``False`` without matplotlib."""
    plt = _pyplot()
    if plt is None:
        return False
    acc = any(r.get("test_accuracy") is not None for r in rows)
    key, label = ("test_accuracy", "test accuracy (%)") if acc else ("test_loss", "test loss")
    scale = 100 if acc else 1
    fig, ax = plt.subplots(figsize=(7, 4.5))
    series: dict[tuple, list[dict]] = {}
    for r in rows:
        if r["kind"] != "classical" and r.get(key) is not None:
            series.setdefault((r["ansatz"], r["qubits"], r["chunk"]), []).append(r)
    for (ansatz, qubits, chunk), pts in sorted(series.items()):
        pts.sort(key=lambda r: r["trainable_params"])
        xs = [r["trainable_params"] for r in pts]
        ys = [r[key] * scale for r in pts]
        tag = f"QT {ansatz}, {qubits} qubits" + (f", chunk {chunk}" if chunk != 1 else "")
        ax.plot(xs, ys, "o-", label=tag)
        for r, x, y in zip(pts, xs, ys, strict=True):
            ax.annotate(f"L={r['blocks']}", (x, y), textcoords="offset points", xytext=(4, -11),
                        fontsize=8)
    for r in rows:
        if r["kind"] == "classical" and r.get(key) is not None:
            ax.axhline(r[key] * scale, color="k", ls="--",
                       label=f"classical, {r['epochs']} epochs ({r['trainable_params']:,} params)")
    original = next((r["original"] for r in rows if r.get("original")), None)
    if original and original.get(key) is not None:
        ax.axhline(original[key] * scale, color="gray", ls=":", label="MODEL's own weights")
    levels = [r[key] * scale for r in rows if r.get(key) is not None]
    if original and original.get(key) is not None:
        levels.append(original[key] * scale)
    if levels:  # axhline does not widen the y range: keep the reference lines in view
        lo, hi = min(levels), max(levels)
        pad = max(hi - lo, 1e-6 if not acc else 1.0) * 0.08
        ax.set_ylim(lo - pad, hi + pad)
    ax.set_xscale("log")
    ax.set_xlabel("trainable parameters (log scale)")
    ax.set_ylabel(label)
    ax.set_title(f"Compression against accuracy: {title}" if title else "Compression against accuracy")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    _save(fig, path)
    plt.close(fig)
    return True


def curves(folder: Path, rows: list[dict], path: Path) -> bool:
    """Per epoch, test accuracy (or loss) and train loss of every finished run, from their
    ``metrics.jsonl``. Returns ``False`` without matplotlib."""
    plt = _pyplot()
    if plt is None:
        return False
    acc = any(r.get("test_accuracy") is not None for r in rows)
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for r in rows:
        metrics = Path(folder) / r["run"] / ckpt.METRICS
        if not metrics.is_file():
            continue
        hist = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
        epochs = [h["epoch"] for h in hist]
        style = {"color": "k", "ls": "--"} if r["kind"] == "classical" else {}
        label = f"{r['run']} ({r['trainable_params']:,})"
        if acc:
            left.plot(epochs, [100 * h["test_accuracy"] for h in hist], label=label, **style)
        else:
            left.plot(epochs, [h["test_loss"] for h in hist], label=label, **style)
        right.plot(epochs, [h["train_loss"] for h in hist], label=label, **style)
    left.set_ylabel("test accuracy (%)" if acc else "test loss")
    right.set_ylabel("train loss")
    right.set_yscale("log")
    for ax in (left, right):
        ax.set_xlabel("epoch")
        ax.grid(True, alpha=0.3)
    left.legend(fontsize=7)
    left.set_title("held-out split, per epoch")
    right.set_title("training loss, per epoch")
    _save(fig, path)
    plt.close(fig)
    return True
