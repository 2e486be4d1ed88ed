"""Time the README quick start (`qtrain compress`, defaults) over a few seeds, as a user runs it.

    python benchmarks/quickstart.py [--seeds 0,1,2] [--json]

Prints per-seed wall time (the whole CLI process, imports included) and test accuracy, and the
medians. The issue's bar: >= 90% test accuracy in <= 120 s on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time


def run(seed: int, out: str) -> dict:
    cmd = [sys.executable, "-m", "qtrain", "compress", "--seed", str(seed), "--out", out,
           "--quiet", "--json"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
    wall = time.perf_counter() - t0
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    return {"seed": seed, "wall_s": round(wall, 2), "test_accuracy": summary["test_accuracy"],
            "compression_ratio": summary["compression_ratio"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in (int(s) for s in args.seeds.split(",")):
            rows.append(run(seed, f"{tmp}/s{seed}"))
    result = {"runs": rows,
              "median_wall_s": statistics.median(r["wall_s"] for r in rows),
              "median_test_accuracy": statistics.median(r["test_accuracy"] for r in rows),
              "min_test_accuracy": min(r["test_accuracy"] for r in rows)}
    if args.json:
        print(json.dumps(result))
    else:
        for r in rows:
            print(f"seed {r['seed']}: {r['test_accuracy']:.2%} in {r['wall_s']:.1f} s "
                  f"(ratio {r['compression_ratio']:.2f}x)")
        print(f"median {result['median_test_accuracy']:.2%} in {result['median_wall_s']:.1f} s")


if __name__ == "__main__":
    main()
