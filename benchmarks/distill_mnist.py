"""Compress a classically trained MNIST CNN four ways and compare: from scratch on labels,
distilled from the model, fitted to its weights, and fitted then distilled (issue 7).

    nice -n 10 python benchmarks/distill_mnist.py [--data ../shared/data/mnist] [--seeds 0,1,2]
        [--epochs 50] [--teacher-epochs 50] [--out runs/distill-mnist] [--json out.json]

The teacher is the toolkit MNIST CNN (``toolkit_cnn``, M = 6,690) trained classically on the
data's split (the shared MNIST test set: 8,000 train / 2,000 test, stratified, seed 0), with
Adam lr 1e-3, batch 128 and a cosine schedule, keeping the best epoch. Every row is then one
real ``python -m qtrain compress`` process with ``configs/mnist-ry-L8.toml`` (ry, 13 qubits x
8 blocks, mapping 14 -> 20 -> 1, --scaling none: 425 trainable parameters, 50 epochs) plus the
row's flags, and one ``python -m qtrain evaluate --json`` for the agreement with the teacher.
All rows have the same budget: the same epochs, batch, learning rate and parameters. Runs use
one CPU thread. Finished runs are reused, so an interrupted benchmark continues where it was.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "configs" / "mnist-ry-L8.toml"
# (label, folder, from the teacher?, flags); rows 4+ are ablations, run with --only
ROWS = [
    ("from scratch (labels)", "from-scratch", None, []),
    ("distill", "distill", "teacher", ["--distill"]),
    ("init fit (labels)", "init-fit", "teacher", ["--init", "fit"]),
    ("init fit + distill", "init-fit+distill", "teacher", ["--init", "fit", "--distill"]),
    ("distill, T 4", "distill-T4", "teacher", ["--distill", "--temperature", "4"]),
    ("distill, T 1", "distill-T1", "teacher", ["--distill", "--temperature", "1"]),
    ("distill, alpha 0.9", "distill-a0.9", "teacher", ["--distill", "--distill-alpha", "0.9"]),
    ("distill, alpha 1 (no labels used)", "distill-a1", "teacher",
     ["--distill", "--distill-alpha", "1"]),
]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def teacher(data: str, out: Path, epochs: int, seed: int = 0) -> dict:
    """Train toolkit_cnn classically on the split of ``data`` once; reuse it afterwards."""
    path, info = out / "teacher.pt", out / "teacher.json"
    if path.is_file() and info.is_file():
        return json.loads(info.read_text())
    import torch

    from qtrain.baseline import train_classical
    from qtrain.checkpoint import atomic_write, write_json
    from qtrain.data import load_data
    from qtrain.models import toolkit_cnn

    torch.set_num_threads(1)
    torch.manual_seed(seed)
    train, test = load_data(data, seed=seed)
    net = toolkit_cnn()
    result = train_classical(net, train, test, epochs, batch_size=128, lr=1e-3, seed=seed)
    result.pop("history")
    import io

    buf = io.BytesIO()
    torch.save(net.state_dict(), buf)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(path, buf.getvalue())
    write_json(info, result)
    return result


def run(label: str, name: str, model: str | None, flags: list[str], seed: int, args,
        teacher_pt: Path) -> dict:
    folder = args.out / f"{name}-s{seed}"
    cmd = [sys.executable, "-m", "qtrain", "compress"]
    if model:
        cmd += [str(teacher_pt), "--arch", "toolkit_cnn"]
    cmd += ["--config", str(CONFIG), "--data", args.data, "--seed", str(seed), "--epochs",
            str(args.epochs), *flags, "--out", str(folder), "--quiet", "--json"]
    t0 = time.perf_counter()
    if not (folder / "qtrain.json").is_file():
        if (folder / "train_state.pt").is_file():
            cmd.append("--resume")
        proc = subprocess.run(cmd, capture_output=True, text=True, env=ENV)
        if proc.returncode:
            raise SystemExit(f"{' '.join(cmd)} failed: {proc.stderr.strip()}")
    wall = time.perf_counter() - t0
    ev = subprocess.run([sys.executable, "-m", "qtrain", "evaluate", str(folder), "--original",
                         str(teacher_pt), "--json"], capture_output=True, text=True, env=ENV)
    if ev.returncode:
        raise SystemExit(f"qtrain evaluate {folder} failed: {ev.stderr.strip()}")
    report = json.loads(ev.stdout)
    record = json.loads((folder / "qtrain.json").read_text())
    m = record["metrics"]
    fit = m.get("init_fit") or {}
    return {"row": label, "seed": seed, "flags": flags, "out": str(folder),
            "trainable_params": record["counts"]["trainable_params"],
            "test_accuracy": report["quantum_train"]["test_accuracy"],
            "top1_agreement": report["agreement"]["top1"], "mean_kl": report["agreement"]["kl"],
            "best_epoch": m["best_epoch"], "train_s": round(m["seconds"], 1),
            "wall_s": round(wall, 1),
            "fit_relative_l2": fit.get("relative_l2_overall"),
            "fit_relative_l2_per_tensor": fit.get("relative_l2"),
            "fit_start_accuracy": fit.get("test_accuracy")}


def _med(rows: list[dict], key: str) -> float | None:
    vals = [r[key] for r in rows if r.get(key) is not None]
    return statistics.median(vals) if vals else None


def table(results: list[dict], teacher_info: dict) -> str:
    def cell(rows, key, fmt):
        vals = [r[key] for r in rows if r.get(key) is not None]
        if not vals:
            return "-"
        med = fmt(statistics.median(vals))
        return med if len(vals) == 1 else f"{med} ({fmt(min(vals))}-{fmt(max(vals))})"

    pct, num = (lambda x: f"{x:.2%}"), (lambda x: f"{x:.4f}")
    lines = ["| run | trainable params | test acc | top-1 agreement | mean KL (nats) | "
             "start acc after fit | fit rel. L2 |", "|---|---|---|---|---|---|---|",
             f"| original MODEL (classical) | {teacher_info['params']:,} | "
             f"{teacher_info['test_accuracy']:.2%} | 100% | 0 | - | - |"]
    for label, *_ in ROWS:
        rows = [r for r in results if r["row"] == label]
        if rows:
            lines.append(f"| {label} | {rows[0]['trainable_params']:,} | "
                         f"{cell(rows, 'test_accuracy', pct)} | {cell(rows, 'top1_agreement', pct)} | "
                         f"{cell(rows, 'mean_kl', num)} | {cell(rows, 'fit_start_accuracy', pct)} | "
                         f"{cell(rows, 'fit_relative_l2', lambda x: f'{x:.3f}')} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "mnist"))
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--epochs", type=int, default=50)
    ap.add_argument("--teacher-epochs", type=int, default=50)
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "distill-mnist")
    ap.add_argument("--only", default=None,
                    help=f"Comma list of row numbers (0-{len(ROWS) - 1}) [0,1,2,3].")
    ap.add_argument("--json", default=None, help="Also write the rows to this JSON file.")
    args = ap.parse_args()
    if not Path(args.data).exists():
        raise SystemExit(f"{args.data} does not exist: pass --data (an MNIST IDX folder)")
    info = teacher(args.data, args.out, args.teacher_epochs)
    print(f"teacher: toolkit_cnn, {info['params']:,} params, {info['test_accuracy']:.2%} test "
          f"accuracy (epoch {info['best_epoch']}/{info['epochs']})", flush=True)
    rows = [ROWS[int(i)] for i in args.only.split(",")] if args.only else ROWS[:4]
    results = []
    for seed in (int(s) for s in args.seeds.split(",")):
        for label, name, model, flags in rows:
            r = run(label, name, model, flags, seed, args, args.out / "teacher.pt")
            results.append(r)
            print(json.dumps({k: v for k, v in r.items() if k != "fit_relative_l2_per_tensor"}),
                  flush=True)
    print(table(results, info))
    if args.json:
        Path(args.json).write_text(json.dumps({"teacher": info, "rows": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
