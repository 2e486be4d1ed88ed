"""Tables and plots of a sweep folder, always rebuilt from its finished subfolders alone:
``sweep.csv``, ``sweep.md``, and (with matplotlib) ``pareto.png`` and ``curves.png``."""

from __future__ import annotations

import json
from pathlib import Path

from . import checkpoint as ckpt

BASELINE = "classical"


def _qt_row(folder: Path, rec: dict) -> dict:
    s, c, m = rec["sizing"], rec["counts"], rec.get("metrics", {})
    qt = rec["config"]["_data"]["qt"]["_data"]
    return {"run": folder.name, "kind": "quantum-train", "ansatz": s["ansatz"],
            "qubits": s["qubits"], "chunk": s["chunk"], "blocks": s["blocks"],
            "generated": s["generated"], "trainable_params": c["trainable_params"],
            "angles": c["angles"], "mapping": c["mapping"], "scaling": c["scaling"],
            "classical": c["classical"], "compression_ratio": c["compression_ratio"],
            "test_accuracy": m.get("test_accuracy"), "test_loss": m.get("test_loss"),
            "train_loss": m.get("train_loss"), "generalization_gap": m.get("generalization_gap"),
            "best_epoch": m.get("best_epoch"), "epochs": m.get("epochs"),
            "seconds": m.get("seconds"), "grad": qt.get("grad"), "shots": qt.get("shots"),
            "original": m.get("original"), "name": rec.get("name"),
            "data": rec.get("data", {}).get("spec"),
            "mapping_hidden": ",".join(map(str, qt.get("mapping_hidden") or [])),
            "mapping_act": qt.get("mapping_act"), "scaling_mode": qt.get("scaling")}


def _baseline_row(folder: Path, res: dict) -> dict:
    return {"run": folder.name, "kind": "classical", "generated": res["params"],
            "trainable_params": res["params"], "classical": res["params"], "compression_ratio": 1.0,
            **{k: res.get(k) for k in ("test_accuracy", "test_loss", "train_loss",
                                        "generalization_gap", "best_epoch", "epochs", "seconds")}}


def read_rows(folder: str | Path) -> list[dict]:
    """One row per finished subfolder (in-flight ``.partial-*`` folders are ignored); the
    classical baseline first, then by trainable parameters."""
    rows = []
    for sub in sorted(Path(folder).iterdir()):
        if sub.name.startswith(".") or not sub.is_dir():
            continue
        if (sub / ckpt.RECORD).is_file():
            rows.append(_qt_row(sub, json.loads((sub / ckpt.RECORD).read_text())))
        elif (sub / "result.json").is_file():
            rows.append(_baseline_row(sub, json.loads((sub / "result.json").read_text())))
    base = next((r for r in rows if r["kind"] == "classical"), None)
    for r in rows:
        acc, ref = r.get("test_accuracy"), base and base.get("test_accuracy")
        r["relative_accuracy"] = acc / ref if acc is not None and ref else None
    return sorted(rows, key=lambda r: (r["kind"] != "classical", r["trainable_params"],
                                       r.get("ansatz") or "", r.get("blocks") or 0))


def _fmt(x, how: str) -> str:
    if x is None or x == "":
        return "-"
    return format(x, how)


def markdown(rows: list[dict]) -> str:
    """The sweep as a Markdown table."""
    classification = any(r.get("test_accuracy") is not None for r in rows)
    score = "test acc | vs classical" if classification else "test loss | -"
    lines = [f"| run | circuit | trainable | ratio | {score} | gap (test - train loss) | "
             "best / epochs | train time |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        circuit = "-" if r["kind"] == "classical" else (
            f"{r['ansatz']} {r['qubits']}q x {r['blocks']}"
            + (f", chunk {r['chunk']}" if r["chunk"] != 1 else "")
            + f"; mapping {r['mapping_hidden']} {r['mapping_act']}; scaling {r['scaling_mode']}")
        first = (f"{_fmt(r['test_accuracy'], '.2%')} | {_fmt(r['relative_accuracy'], '.1%')}"
                 if classification else f"{_fmt(r['test_loss'], '.4g')} | -")
        lines.append(f"| {r['run']} | {circuit} | {r['trainable_params']:,} | "
                     f"{r['compression_ratio']:.2f}x | {first} | "
                     f"{_fmt(r['generalization_gap'], '.4f')} | {r['best_epoch']} / {r['epochs']} | "
                     f"{_fmt(r['seconds'], '.0f')} s |")
    return "\n".join(lines) + "\n"


def write_tables(folder: str | Path, plots: bool = False) -> bool:
    """Rewrite ``sweep.csv`` and ``sweep.md`` (atomically); with ``plots``, also the PNGs.

    Returns:
        Whether the plots were written (``False`` without matplotlib, or when not asked).
    """
    from .sweep import csv_text

    folder = Path(folder)
    rows = read_rows(folder)
    ckpt.atomic_write(folder / "sweep.csv", csv_text(rows).encode())
    qt = [r for r in rows if r["kind"] != "classical"]
    title = f"{qt[0]['name']} on {qt[0]['data']}" if qt else folder.name
    md = f"# Sweep: {title}\n\n{markdown(rows)}"
    original = next((r["original"] for r in qt if r.get("original")), None)
    if original and original.get("test_accuracy") is not None:
        md += f"\nMODEL as given (its own trained weights): {original['test_accuracy']:.2%} test accuracy.\n"
    ckpt.atomic_write(folder / "sweep.md", md.encode())
    if not plots:
        return False
    from .plots import curves, pareto

    return pareto(rows, folder / "pareto.png", title) and curves(folder, rows, folder / "curves.png")
