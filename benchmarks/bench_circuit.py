"""Circuit forward+backward: the native simulator against PennyLane, measured side by side.

    python benchmarks/bench_circuit.py [--json] [--threads N] [--torch-compile] [--rounds N]

The loss is a fixed random weighting of the full probability vector; the time covers the forward
pass and the gradient with respect to every angle, for float32 angles as in training. ``exact``
is the default precision (the ry circuit in float64 up to 16 qubits), ``fast`` runs it in
float32 (``--circuit-precision fast``). Each ratio is PennyLane default.qubit (torch interface,
backprop) over native, timed in the same run in interleaved rounds, as medians: each native
candidate runs right after one PennyLane call, four times; ``cold`` is its first call (PennyLane's
50 ms has just filled the caches with its own data), ``warm`` the three after it (as a kernel
benchmark repeats). Prints one JSON object.

The compiled path (``--compile`` in qtrain: the ry circuit by the C++ kernel of
qtrain.native_kernel, built once with the machine's compiler) is timed whenever a C++ compiler
is found (rows ``*_compile``). ``--torch-compile`` also times what ``torch.compile`` makes of the
torch simulator's ry algorithm (Kronecker factors, ring permutation, stored-state adjoint)
written functionally (the simulator itself, pre-built calls on reused buffers, cannot be
traced); it is slower than eager and not used in training.
Targets (issue 4): ry 13q x 8 >= 50x eager, >= 80x compiled; u3 >= 30x; ry 20 qubits <= 150 ms.
"""

from __future__ import annotations

import argparse
import json
import warnings

import torch
from _timing import machine, time_cold_warm, time_interleaved

from qtrain import native_kernel
from qtrain.circuits import Circuit
from qtrain.ry_adjoint import RyPlan
from qtrain.simulate import EXACT_QUBITS, NativeSimulator, qubit_groups, ring_permutation


def _grad(c: Circuit, precision: str, angles: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    angles.grad = None
    (NativeSimulator(c, precision).probs(angles) * w).sum().backward()
    return angles.grad.clone()


def _step(probs, angles: torch.Tensor, weights: torch.Tensor):
    def run():
        angles.grad = None
        (probs(angles) * weights).sum().backward()
    return run


def functional_ry(c: Circuit, precision: str):
    """The ry circuit's probabilities, as the native simulator computes them, in functional form
    (fresh tensors, no out=) with the same adjoint backward, for ``torch.compile``."""
    n, blocks = c.qubits, c.blocks
    dtype = torch.float64 if precision == "exact" and n <= EXACT_QUBITS else torch.float32
    plan = RyPlan(n, qubit_groups(n), ring_permutation(n), torch.device("cpu"))
    sizes, signs = plan.sizes, plan.signs_for(dtype)
    gather, perm, inverse = plan.gather, plan.perm, plan.inverse

    def factors(theta):
        half = theta.to(dtype) * 0.5
        c, s = half.cos(), half.sin()
        table = torch.cat([c, s, -s, torch.ones_like(c[..., :1])], -1)
        flat = table[..., gather].prod(-2)  # (B, L, sum 4^g)
        return [f.unflatten(-1, (k, k)) for f, k in zip(flat.split([k * k for k in sizes], -1),
                                                        sizes, strict=True)]

    class Ry(torch.autograd.Function):
        @staticmethod
        def forward(ctx, theta):
            fs, batch = factors(theta), theta.shape[0]
            state = torch.zeros(batch, 2**n, dtype=dtype)
            state[:, 0] = 1
            outs = []
            for b in range(blocks):
                if b:
                    state = state.index_select(1, perm)
                for g in reversed(range(len(sizes))):
                    x = state.view(batch, -1, sizes[g]).transpose(1, 2)
                    state = torch.bmm(fs[g][:, b], x).view(batch, -1)
                    outs.append(state)
            ctx.save_for_backward(theta, *outs)
            psi = state.index_select(1, perm)
            return (psi * psi).to(theta.dtype)

        @staticmethod
        def backward(ctx, grad_p):
            theta, *outs = ctx.saved_tensors
            fs, batch, count = factors(theta), theta.shape[0], len(sizes)
            mu = grad_p.to(dtype).index_select(1, inverse) * outs[-1]  # the 2 is in the signs
            cs = [[] for _ in range(blocks)]
            for b in reversed(range(blocks)):
                for g in range(count):
                    m = mu.view(batch, sizes[g], -1)
                    y = outs[b * count + count - 1 - g].view(batch, sizes[g], -1)
                    cs[b].append(torch.bmm(m, y.transpose(1, 2)).flatten(1))
                    if b or g < count - 1:
                        mu = torch.bmm(m.transpose(1, 2), fs[g][:, b]).view(batch, -1)
                if b:
                    mu = mu.index_select(1, inverse)
            c_all = torch.stack([torch.cat(row, 1) for row in cs], 1)  # (B, L, sum 4^g)
            return (c_all @ signs).to(grad_p.dtype)

    return lambda angles: Ry.apply(angles.reshape(1, blocks, n))[0]


def compare(ansatz: str, n: int, blocks: int, rounds: int, kernel: bool, compiled: bool) -> dict:
    from qtrain.pennylane_backend import PennyLaneSimulator

    c = Circuit(n, blocks, ansatz)
    angles = c.init_angles().requires_grad_()
    w = torch.randn(2**n)
    pl = PennyLaneSimulator(c, "default.qubit", diff_method="backprop")
    fns = {}
    precisions = ("exact", "fast") if ansatz == "ry" else ("exact",)
    for precision in precisions:
        fns[f"native_{precision}"] = _step(NativeSimulator(c, precision).probs, angles, w)
    if kernel and ansatz == "ry":
        for precision in precisions:
            sim = NativeSimulator(c, precision, compiled=True)
            fns[f"native_{precision}_compile"] = _step(sim.probs, angles, w)
    if compiled:
        for precision in precisions:
            probs = torch.compile(functional_ry(c, precision), dynamic=False, fullgraph=True)
            step = _step(probs, angles, w)
            step()  # compiles
            torch.testing.assert_close(angles.grad.clone(), _grad(c, precision, angles, w),
                                       rtol=1e-4, atol=1e-6)
            fns[f"native_{precision}_compiled"] = step
    times = time_cold_warm(_step(pl.probs, angles, w), fns, rounds)
    base = times.pop("baseline")
    out = {"pennylane_default_qubit_ms": round(base * 1e3, 3)}
    for state in ("cold", "warm"):
        out.update({f"{k}_{state}_ms": round(v[state] * 1e3, 4) for k, v in times.items()})
        out.update({f"ratio_{k.removeprefix('native_')}_{state}": round(base / v[state], 1)
                    for k, v in times.items()})
    return out


def scaling(sizes, blocks: int, rounds: int, kernel: bool) -> dict:
    out = {}
    for compiled in (False, True) if kernel else (False,):
        tag = "_compile" if compiled else ""
        for precision in ("exact", "fast"):
            for n in sizes:
                if precision == "fast" and n > 16:
                    continue  # past 16 qubits exact runs in the angles' dtype too
                c = Circuit(n, blocks, "ry")
                angles = c.init_angles().requires_grad_()
                sim = NativeSimulator(c, precision, compiled=compiled)
                step = _step(sim.probs, angles, torch.randn(2**n))
                t = time_interleaved({"x": step}, rounds=max(3, rounds // (1 + (n >= 16) * 3)),
                                     warmup=2)
                out[f"{n}_{precision}{tag}" if n <= 16 else f"{n}{tag}"] = round(t["x"] * 1e3, 3)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--torch-compile", action="store_true",
                    help="also time torch.compile of the torch simulator's algorithm (~20 s more)")
    ap.add_argument("--rounds", type=int, default=20)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    info = machine()
    kernel = info["compiled_kernel"] = native_kernel.available()
    ry = compare("ry", 13, 8, args.rounds, kernel, args.torch_compile)
    u3 = compare("u3", 13, 8, max(5, args.rounds // 3), False, False)
    scale = scaling([10, 13, 16, 18, 20], 8, args.rounds, kernel)
    result = {
        "machine": info, "case": "13 qubits x 8 blocks, fwd+bwd of sum(w * probs), float32 angles",
        "ry_13q_8b": ry, "u3_13q_8b": u3, "ry_8b_scaling_ms": scale,
        "targets": {"ry_eager_ge_50x": {f"{p}_{s}": ry[f"ratio_{p}_{s}"] >= 50
                                        for p in ("exact", "fast") for s in ("cold", "warm")},
                    "ry_compiled_ge_80x": {f"{p}_{s}": ry[f"ratio_{p}_compile_{s}"] >= 80
                                           for p in ("exact", "fast") for s in ("cold", "warm")}
                    if kernel else None,
                    "u3_ge_30x": {s: u3[f"ratio_exact_{s}"] >= 30 for s in ("cold", "warm")},
                    "ry_20q_le_150ms": {k: v <= 150 for k, v in scale.items() if k.startswith("20")}},
    }
    print(json.dumps(result, indent=None if args.json else 2))


if __name__ == "__main__":
    main()
