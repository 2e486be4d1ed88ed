"""Timing helpers shared by the benchmarks: warm-up, interleaved rounds, medians."""

from __future__ import annotations

import datetime
import os
import platform
import statistics
import time

import torch


def time_interleaved(fns: dict, rounds: int, per_round: int = 1, warmup: int = 3) -> dict:
    """Median seconds per call of each fn, measured in interleaved rounds so that machine noise
    hits every candidate alike."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    samples = {k: [] for k in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            for _ in range(per_round):
                t0 = time.perf_counter()
                fn()
                samples[name].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in samples.items()}


def machine() -> dict:
    """What the figures were measured on, and when, with the load average at the start."""
    return {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
            "threads": torch.get_num_threads(), "torch": torch.__version__,
            "python": platform.python_version(),
            "utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M"),
            "load_average": [round(x, 2) for x in os.getloadavg()]}
