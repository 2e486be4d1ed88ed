"""The resumable training state (``train_state.pt``): every random number generator, an atomic
save, a load that never runs code, and Ctrl-C turned into "save at the next step, then stop"."""

from __future__ import annotations

import io
import random
import signal
import threading
from pathlib import Path

import numpy as np
import torch

from . import checkpoint as ckpt
from .errors import QTrainError

STATE_VERSION = 2


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C during training, after the state was saved; its message says how to resume."""


def rng_state() -> dict:
    """The state of every generator a training step may draw from: torch (CPU and CUDA),
    numpy's global one and Python's ``random``. Plain tensors and numbers only."""
    name, key, pos, has_gauss, cached = np.random.get_state()
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else []
    return {"torch": torch.get_rng_state(), "cuda": cuda,
            "numpy": {"name": name, "key": torch.from_numpy(key.astype(np.int64)), "pos": int(pos),
                      "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
            "python": random.getstate()}


def set_rng_state(state: dict) -> None:
    """Restore what :func:`rng_state` captured."""
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])
    n = state["numpy"]
    np.random.set_state((n["name"], n["key"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))


def save_state(path: Path, state: dict) -> None:
    """Write the training state atomically (a crash leaves the previous one whole)."""
    buf = io.BytesIO()
    torch.save({"version": STATE_VERSION, **state}, buf)
    ckpt.atomic_write(path, buf.getvalue())


def load_state(path: Path) -> dict:
    """Read a training state with ``weights_only=True``: tensors and plain data, never code."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise QTrainError(f"{path} is corrupt or not a qtrain training state ({first}): delete "
                          "it and start again without --resume") from exc
    if not isinstance(state, dict) or state.get("version") != STATE_VERSION:
        raise QTrainError(f"{path} was not written by this qtrain version: start again with "
                          "--force")
    return state


class StopOnSignal:
    """While active, Ctrl-C (SIGINT) only sets :attr:`requested`; the loop stops at the next step.

    Under torchrun each worker gets SIGINT from the terminal and again from the launcher, so
    repeats are ignored there; in a single process a second Ctrl-C stops at once.
    """

    def __init__(self, repeat_aborts: bool = True):
        self.requested = False
        self.repeat_aborts = repeat_aborts
        self._old = None

    def _handle(self, signum, frame):
        if self.requested and self.repeat_aborts:
            raise KeyboardInterrupt
        self.requested = True

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._old = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc):
        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)
            self._old = None
        return False
