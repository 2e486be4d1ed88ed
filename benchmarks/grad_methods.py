"""Digits accuracy, wall time and circuit executions for each gradient method and shot count.

    nice -n 10 python benchmarks/grad_methods.py [--seeds 0] [--only 0,2] [--epochs 50] [--json out.json]

Each row is one real ``python -m qtrain compress`` process with the README quick start's
settings (built-in digits_cnn, ry 11 qubits x 8 blocks, 50 epochs, batch 64, Adam lr 0.02,
cosine) plus the row's flags, run one at a time with one CPU thread (OMP_NUM_THREADS=1,
MKL_NUM_THREADS=1) to leave the other core free. Prints a Markdown table for docs/results.md;
with several seeds, accuracy is the median (min-max) and wall time the median.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

ROWS = [
    ("backprop (exact)", []),
    ("parameter-shift (exact)", ["--grad", "parameter-shift"]),
    ("SPSA, 1 perturbation (exact)", ["--grad", "spsa"]),
    ("SPSA, 10 perturbations (exact)", ["--grad", "spsa", "--spsa-samples", "10"]),
    ("parameter-shift, 100 shots", ["--grad", "parameter-shift", "--shots", "100"]),
    ("parameter-shift, 1,000 shots", ["--grad", "parameter-shift", "--shots", "1000"]),
    ("parameter-shift, 10,000 shots", ["--grad", "parameter-shift", "--shots", "10000"]),
    ("SPSA, 100 shots", ["--grad", "spsa", "--shots", "100"]),
    ("SPSA, 1,000 shots", ["--grad", "spsa", "--shots", "1000"]),
    ("SPSA, 10,000 shots", ["--grad", "spsa", "--shots", "10000"]),
    ("parameter-shift, 1,000,000 shots", ["--grad", "parameter-shift", "--shots", "1000000"]),
]


def run(flags: list[str], seed: int, epochs: int, out: str) -> dict:
    cmd = [sys.executable, "-m", "qtrain", "compress", "--seed", str(seed), "--epochs", str(epochs),
           *flags, "--out", out, "--quiet", "--json"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed: {proc.stderr.strip()}")
    record = json.loads(open(f"{out}/qtrain.json").read())
    m = record["metrics"]
    steps = -(-record["data"]["train_size"] // 64) * m["epochs"]
    curve = [json.loads(line)["test_accuracy"] for line in open(f"{out}/metrics.jsonl")]
    return {"flags": flags, "seed": seed, "test_accuracy": m["test_accuracy"], "best_epoch": m["best_epoch"],
            "curve": curve,
            "train_s": round(m["seconds"], 1), "wall_s": round(wall, 1),
            "circuit_executions": m["circuit_executions"], "shots_total": m["shots_total"],
            "executions_per_step": round(m["circuit_executions"] / steps, 1)}


def table(rows: list[tuple[str, list[dict]]]) -> str:
    lines = ["| method | flags | seeds | test acc | wall s | circuit executions | per step "
             "| shots in all |",
             "|---|---|---|---|---|---|---|---|"]
    for name, runs in rows:
        r = runs[0]
        flags = " ".join(r["flags"]) or "(defaults)"
        shots = f"{r['shots_total']:.3g}" if r["shots_total"] else "exact"
        accs = [x["test_accuracy"] for x in runs]
        acc = f"{statistics.median(accs):.2%}"
        if len(runs) > 1:
            acc += f" ({min(accs):.1%}-{max(accs):.1%})"
        wall = statistics.median(x["wall_s"] for x in runs)
        seeds = ",".join(str(x["seed"]) for x in runs)
        lines.append(f"| {name} | `{flags}` | {seeds} | {acc} | {wall:.1f} | "
                     f"{r['circuit_executions']:,} | {r['executions_per_step']:g} | {shots} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", default="0", help="comma list of seeds")
    ap.add_argument("--epochs", type=int, default=50)
    ap.add_argument("--only", default=None, help="comma list of row numbers (0-based) to run")
    ap.add_argument("--json", default=None, help="also write every run to this JSON file")
    args = ap.parse_args()
    chosen = [ROWS[int(i)] for i in args.only.split(",")] if args.only else ROWS
    seeds = [int(s) for s in args.seeds.split(",")]
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, (name, flags) in enumerate(chosen):
            runs = []
            for seed in seeds:
                r = run(flags, seed, args.epochs, f"{tmp}/run{i}-{seed}")
                runs.append(r)
                print(f"{name}, seed {seed}: {r['test_accuracy']:.2%} in {r['wall_s']:.1f} s, "
                      f"{r['circuit_executions']:,} circuits", file=sys.stderr, flush=True)
            results.append((name, runs))
    if args.json:
        with open(args.json, "w") as f:
            json.dump([{"name": n, "runs": runs} for n, runs in results], f, indent=2)
    print(table(results))


if __name__ == "__main__":
    main()
