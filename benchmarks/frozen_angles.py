"""Baseline for docs/results.md: the quick start with the circuit angles never trained.

    nice -n 10 python benchmarks/frozen_angles.py [--seeds 0,1,2] [--shots 100]

Same settings as ``qtrain compress --seed S`` (and ``--grad spsa --shots N`` with ``--shots``),
but the angles keep their random initial values: only the mapping MLP and the per-tensor
gain/shift learn. It tells how much a gradient method's angle updates actually add.
"""

from __future__ import annotations

import argparse
import statistics

import torch

import qtrain
from qtrain import CompressConfig, QTConfig, TrainConfig
from qtrain.models import digits_cnn


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--shots", type=int, default=None)
    args = ap.parse_args()
    torch.set_num_threads(1)
    accs = []
    for seed in (int(s) for s in args.seeds.split(",")):
        torch.manual_seed(seed)  # as the CLI does before building the architecture
        cfg = CompressConfig(QTConfig(grad="spsa" if args.shots else "backprop", shots=args.shots),
                             TrainConfig(seed=seed, quiet=True))
        result = qtrain.compress(digits_cnn(), "digits", cfg,
                                 on_ready=lambda qt, counts, out: qt.generator.angles.requires_grad_(False))
        accs.append(result.metrics["test_accuracy"])
        print(f"seed {seed}: {accs[-1]:.2%}", flush=True)
    print(f"median {statistics.median(accs):.2%} ({min(accs):.1%}-{max(accs):.1%})")


if __name__ == "__main__":
    main()
