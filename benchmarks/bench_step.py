"""A whole training step, Quantum-Train against classical, on the same network and batch.

    python benchmarks/bench_step.py [--json] [--threads N] [--rounds N] [--compile]

QT step = circuit + post-processing + mapping + functional_call forward/backward + clip + Adam,
with the default circuit precision (``exact``: the ry circuit in float64) and with ``fast``.
Classical step = the network's forward/backward + clip + Adam. Both on one batch of 128, timed
interleaved in one process, medians. ``--compile`` adds the toolkit CNN's steps under
``torch.compile`` (qtrain's ``--compile``: mapping and network compiled, circuit eager) against
both the eager and the compiled classical step.
Cases (issue 4): the toolkit MNIST CNN (1x28x28, ry 13 qubits x 8 blocks), target <= 1.15x;
a 1M-parameter MLP compressed with chunking (<= 20 qubits), target <= 2x and peak RSS <= 2 GB
(measured in a fresh subprocess so that only that case counts).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import resource
import subprocess
import sys
import warnings

import torch
import torch.nn.functional as F
from _timing import machine, time_interleaved
from torch import nn

from qtrain import QTConfig, QuantumTrain
from qtrain.allocator import keep_freed_memory
from qtrain.models import toolkit_cnn


def _stepper(module, params, x, y):
    opt = torch.optim.Adam(params, lr=1e-3)

    def step():
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(module(x), y).backward()
        torch.nn.utils.clip_grad_norm_(params, 10.0)
        opt.step()
    return step


def compare(model_fn, cfg: QTConfig, x, y, rounds: int, compiled: bool = False) -> dict:
    torch.manual_seed(0)
    classical = model_fn()
    fns = {"classical": _stepper(classical, list(classical.parameters()), x, y)}
    for precision in ("exact", "fast"):
        qt = QuantumTrain(model_fn(), dataclasses.replace(cfg, circuit_precision=precision))
        fns[f"quantum_train_{precision}"] = _stepper(qt, list(qt.parameters()), x, y)
    if compiled:
        from qtrain.compiled import compile_step

        other = model_fn()
        fns["classical_compiled"] = _stepper(torch.compile(other), list(other.parameters()), x, y)
        for precision in ("exact", "fast"):
            qc = QuantumTrain(model_fn(), dataclasses.replace(cfg, circuit_precision=precision))
            fns[f"quantum_train_{precision}_compiled"] = _stepper(
                compile_step(qc, torch.device("cpu")), list(qc.parameters()), x, y)
    t = time_interleaved(fns, rounds, per_round=3)
    c = qt.counts()
    out = {f"{k}_ms": round(v * 1e3, 3) for k, v in t.items()}
    out.update({f"ratio_{p}": round(t[f"quantum_train_{p}"] / t["classical"], 3)
                for p in ("exact", "fast")})
    if compiled:  # against the eager classical step, and against the compiled one
        for p in ("exact", "fast"):
            q = t[f"quantum_train_{p}_compiled"]
            out[f"ratio_{p}_compiled"] = round(q / t["classical"], 3)
            out[f"ratio_{p}_compiled_vs_classical_compiled"] = round(q / t["classical_compiled"], 3)
    out.update({"generated": c["generated"], "trainable": c["trainable_params"],
                "qubits": qt.circuit.qubits, "chunk": qt.chunk})
    return out


def mlp_1m() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 1024), nn.ReLU(), nn.Linear(1024, 256),
                         nn.ReLU(), nn.Linear(256, 10))


def case_1m(rounds: int) -> dict:
    x, y = torch.randn(128, 1, 28, 28), torch.randint(0, 10, (128,))
    out = compare(mlp_1m, QTConfig(qubits=14, blocks=8), x, y, rounds)
    out["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--compile", action="store_true",
                    help="also time the toolkit CNN steps under torch.compile (compiles for ~30 s)")
    ap.add_argument("--case", choices=["all", "1m"], default="all", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    keep_freed_memory()  # as qtrain's training loop (train.fit) does; QTRAIN_MALLOC_TUNE=0 opts out
    warnings.filterwarnings("ignore")
    if args.case == "1m":
        print(json.dumps(case_1m(args.rounds)))
        return
    info = machine()
    x, y = torch.randn(128, 1, 28, 28), torch.randint(0, 10, (128,))
    cnn = compare(toolkit_cnn, QTConfig(qubits=13, blocks=8), x, y, args.rounds, args.compile)
    proc = subprocess.run([sys.executable, __file__, "--case", "1m", "--rounds",
                           str(max(10, args.rounds // 2)), "--threads", str(torch.get_num_threads())],
                          capture_output=True, text=True, check=True)
    big = json.loads(proc.stdout.strip().splitlines()[-1])
    result = {"machine": info, "toolkit_cnn_b128_ry13x8": cnn, "mlp_1m_b128_chunked": big,
              "targets": {"cnn_step_le_1.15x": {k.removeprefix("ratio_"): v <= 1.15 for k, v in cnn.items()
                                              if k.startswith("ratio_")},
                          "mlp_1m_step_le_2x": {p: big[f"ratio_{p}"] <= 2.0 for p in ("exact", "fast")},
                          "mlp_1m_peak_rss_le_2gb": big["peak_rss_mb"] <= 2048,
                          "mlp_1m_qubits_le_20": big["qubits"] <= 20}}
    print(json.dumps(result, indent=None if args.json else 2))


if __name__ == "__main__":
    main()
