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


def time_cold_warm(baseline, fns: dict, rounds: int, per_round: int = 4, warmup: int = 3) -> dict:
    """Medians of ``baseline`` and of each fn, in interleaved rounds: every round runs, for each
    fn, the baseline once and then the fn ``per_round`` times in a row. ``cold`` is the fn's
    first call (right after the baseline, with its data in the caches), ``warm`` the calls
    after it, as a kernel benchmark repeats."""
    for fn in [baseline, *fns.values()]:
        for _ in range(warmup):
            fn()
    base, samples = [], {k: ([], []) for k in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            baseline()
            base.append(time.perf_counter() - t0)
            for i in range(per_round):
                t0 = time.perf_counter()
                fn()
                samples[name][i > 0].append(time.perf_counter() - t0)
    out = {k: {"cold": statistics.median(c), "warm": statistics.median(w)}
           for k, (c, w) in samples.items()}
    return {"baseline": statistics.median(base), **out}


def machine() -> dict:
    """What the figures were measured on, and when, with the load average at the start."""
    return {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
            "threads": torch.get_num_threads(), "torch": torch.__version__,
            "python": platform.python_version(),
            "utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M"),
            "load_average": [round(x, 2) for x in os.getloadavg()]}
