"""Circuit forward+backward: the native simulator against PennyLane, measured side by side.

    python benchmarks/bench_circuit.py [--json] [--compile] [--rounds N]

The loss is a fixed random weighting of the full probability vector; the time covers the forward
pass and the gradient with respect to every angle. Prints one JSON object with --json.
Targets (issue 4): ry 13q x 8 >= 50x PennyLane default.qubit eager, >= 80x compiled; u3 >= 30x;
ry at 20 qubits <= 150 ms.
"""

from __future__ import annotations

import argparse
import json
import warnings

import torch
from _timing import machine, time_interleaved

from qtrain.circuits import Circuit
from qtrain.simulate import NativeSimulator


def _step(probs, angles: torch.Tensor, weights: torch.Tensor):
    def run():
        angles.grad = None
        (probs(angles) * weights).sum().backward()
    return run


def compare(ansatz: str, n: int, blocks: int, rounds: int, compiled: bool) -> dict:
    from qtrain.pennylane_backend import PennyLaneSimulator

    c = Circuit(n, blocks, ansatz)
    angles = c.init_angles().requires_grad_()
    w = torch.randn(2**n)
    pl = PennyLaneSimulator(c, "default.qubit", diff_method="backprop")
    native = NativeSimulator(c)
    fns = {"pennylane_default_qubit": _step(pl.probs, angles, w),
           "native_eager": _step(native.probs, angles, w)}
    if compiled:
        fns["native_compiled"] = _step(torch.compile(native.probs, dynamic=False), angles, w)
    t = time_interleaved(fns, rounds)
    out = {f"{k}_ms": round(v * 1e3, 4) for k, v in t.items()}
    base = t["pennylane_default_qubit"]
    out["ratio_eager"] = round(base / t["native_eager"], 1)
    if compiled:
        out["ratio_compiled"] = round(base / t["native_compiled"], 1)
    return out


def scaling(sizes, blocks: int, rounds: int) -> dict:
    out = {}
    for n in sizes:
        c = Circuit(n, blocks, "ry")
        angles = c.init_angles().requires_grad_()
        t = time_interleaved({"x": _step(NativeSimulator(c).probs, angles, torch.randn(2**n))},
                             rounds=max(3, rounds // (1 + (n >= 16) * 3)), warmup=2)
        out[str(n)] = round(t["x"] * 1e3, 3)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--compile", action="store_true", help="also time the torch.compile path")
    ap.add_argument("--rounds", type=int, default=20)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    ry = compare("ry", 13, 8, args.rounds, args.compile)
    u3 = compare("u3", 13, 8, max(5, args.rounds // 2), False)
    scale = scaling([10, 13, 16, 18, 20], 8, args.rounds)
    result = {
        "machine": machine(), "case": "13 qubits x 8 blocks, fwd+bwd of sum(w * probs)",
        "ry_13q_8b": ry, "u3_13q_8b": u3, "ry_8b_scaling_ms": scale,
        "targets": {"ry_eager_ge_50x": ry["ratio_eager"] >= 50,
                    "ry_compiled_ge_80x": ry.get("ratio_compiled", 0) >= 80 if args.compile else None,
                    "u3_ge_30x": u3["ratio_eager"] >= 30,
                    "ry_20q_le_150ms": scale["20"] <= 150},
    }
    if args.json:
        print(json.dumps(result))
    else:
        print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
