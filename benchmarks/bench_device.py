"""Issue 4, target 6: the circuit and a whole training step on an accelerator against the CPU.

    python benchmarks/bench_device.py --device cuda [--qubits 20] [--blocks 8] [--rounds N] [--json]

Both cases run on the CPU (torch's default threads: every core) and on ``--device``, timed in
interleaved rounds as medians, the device synchronised after each call:
- ``circuit``: ry, n qubits x L blocks, forward + gradient of sum(w * probs), float32 angles,
  default precision (float64 up to 16 qubits, float32 above);
- ``step``: a Quantum-Train training step (generator, network forward/backward, clip, Adam) of an
  MLP 784 -> h -> 10 with up to 2 x 2^n weights (2.08M at 20 qubits, chunk 2), batch 128 of
  N(0, 1) inputs.

``ratio`` is CPU time over device time; the target is >= 10x at 20 qubits and more. With
``--cpu-compile`` the CPU side runs qtrain's ``--compile`` kernels (the faster CPU path).
``--device cpu`` runs everything twice on the CPU (ratio ~1): a check that the script runs, as
tests/test_bench_device.py does in CI, which has no GPU.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import warnings

import torch
import torch.nn.functional as F
from _timing import machine
from torch import nn

from qtrain import QTConfig, QTrainError, QuantumTrain
from qtrain.allocator import keep_freed_memory
from qtrain.circuits import Circuit
from qtrain.simulate import NativeSimulator
from qtrain.train import resolve_device


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def circuit_case(n: int, blocks: int, device: torch.device, compiled: bool):
    sim = NativeSimulator(Circuit(n, blocks, "ry"), compiled=compiled)
    angles = Circuit(n, blocks, "ry").init_angles().to(device).requires_grad_()
    w = torch.randn(2**n, generator=torch.Generator().manual_seed(0)).to(device)

    def run():
        angles.grad = None
        (sim.probs(angles) * w).sum().backward()
        _sync(device)
    return run


def mlp(n: int) -> nn.Module:
    hidden = max(4, 2 ** (n + 1) // 800)  # 795 h + 10 weights: from 10 qubits at most 2 x 2^n
    return nn.Sequential(nn.Flatten(), nn.Linear(784, hidden), nn.ReLU(), nn.Linear(hidden, 10))


def step_case(n: int, blocks: int, device: torch.device, compiled: bool):
    torch.manual_seed(0)
    qt = QuantumTrain(mlp(n), QTConfig(qubits=n, blocks=blocks)).to(device)
    if compiled:
        from qtrain.compiled import use_compiled_kernel

        use_compiled_kernel(qt, device)
    params = list(qt.parameters())
    opt = torch.optim.Adam(params, lr=1e-3)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(128, 1, 28, 28, generator=g).to(device)
    y = torch.randint(0, 10, (128,), generator=g).to(device)

    def run():
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(qt(x), y).backward()
        torch.nn.utils.clip_grad_norm_(params, 10.0)
        opt.step()
        _sync(device)
    return run, qt.counts()["generated"], qt.chunk


def medians(fns: dict, rounds: int) -> dict:
    for fn in fns.values():  # warm-up: allocator, kernels' first launches, cuBLAS handles
        fn()
        fn()
    samples = {k: [] for k in fns}
    for _ in range(rounds):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            samples[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in samples.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda", help="the accelerator: cuda or mps (cpu: a dry run)")
    ap.add_argument("--qubits", type=int, default=20)
    ap.add_argument("--blocks", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--cpu-compile", action="store_true", help="the CPU side with qtrain's --compile")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    keep_freed_memory()  # as qtrain's training loop does
    try:
        device = resolve_device(args.device)
        if args.cpu_compile:
            from qtrain import native_kernel

            native_kernel.load()
    except QTrainError as exc:
        sys.exit(f"error: {exc}")
    cpu = torch.device("cpu")
    n, blocks, compiled = args.qubits, args.blocks, args.cpu_compile
    t_circuit = medians({"cpu": circuit_case(n, blocks, cpu, compiled),
                         "device": circuit_case(n, blocks, device, False)}, args.rounds)
    cpu_step, generated, chunk = step_case(n, blocks, cpu, compiled)
    dev_step, _, _ = step_case(n, blocks, device, False)
    t_step = medians({"cpu": cpu_step, "device": dev_step}, args.rounds)
    info = machine()
    if device.type == "cuda":
        info["device_name"] = torch.cuda.get_device_name(device)
    result = {"machine": info, "device": str(device), "qubits": n, "blocks": blocks,
              "cpu_path": "--compile" if compiled else "eager",
              "step_network": {"generated": generated, "chunk": chunk, "batch": 128}}
    for name, t in (("circuit", t_circuit), ("step", t_step)):
        result[name] = {"cpu_ms": round(t["cpu"] * 1e3, 3), "device_ms": round(t["device"] * 1e3, 3),
                        "ratio": round(t["cpu"] / t["device"], 2)}
    result["targets"] = {"step_ge_10x_at_20_qubits": result["step"]["ratio"] >= 10 if n >= 20 else None}
    print(json.dumps(result, indent=None if args.json else 2))


if __name__ == "__main__":
    main()
