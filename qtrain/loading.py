"""Load a checkpoint for inference with plain PyTorch, or regenerate its weights from the
compressed form. Neither runs code from the files nor imports PennyLane."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from . import checkpoint as ckpt
from .config import from_dict
from .errors import QTrainError
from .layout import select
from .models import BUILTINS, build_arch, load_into, normalize_spec


def build_model(record: dict, model: nn.Module | None = None, arch: str | None = None,
                trust_arch: bool = False) -> nn.Module:
    """A fresh instance of the checkpoint's architecture.

    A built-in architecture is rebuilt freely. Any other spec imports code, so it is rebuilt
    only when the caller names it again (``arch``) or passes ``trust_arch=True``.
    """
    if model is not None:
        return model
    spec = record["arch"].get("spec")
    if spec is None:
        raise QTrainError("this checkpoint came from a pickled or in-memory module: pass the "
                          "network instance (qtrain.load(path, model=net))")
    arch = normalize_spec(arch) if arch is not None else None
    if arch is not None and arch != normalize_spec(spec):
        raise QTrainError(f"the checkpoint was trained on --arch {spec!r}, not {arch!r}")
    if spec not in BUILTINS and arch is None and not trust_arch:
        raise QTrainError(f"rebuilding architecture {spec!r} imports its code: pass it again "
                          f"(--arch {spec} / arch=...) or --trust-arch if you trust it")
    return build_arch(spec, record["arch"].get("kwargs"))


def load(path: str | Path, model: nn.Module | None = None, *, arch: str | None = None,
         trust_arch: bool = False) -> nn.Module:
    """The regenerated classical network of a checkpoint folder, in eval mode.

    Args:
        path: a folder written by ``qtrain compress``.
        model: an instance of the architecture to fill (needed for pickled-module runs).
        arch: the ``--arch`` spec again, to allow importing a non-built-in architecture.
        trust_arch: import the recorded architecture without naming it again.

    Returns:
        The target ``nn.Module`` with the generated weights, ready for inference.
    """
    record = ckpt.read_record(Path(path))
    net = build_model(record, model, arch, trust_arch)
    state = ckpt.read_tensors(Path(path) / ckpt.MODEL)
    load_into(net, state, f"{path} does not match this architecture")
    return net.eval()


def regenerate(path: str | Path, model: nn.Module | None = None, *, arch: str | None = None,
               trust_arch: bool = False) -> dict[str, torch.Tensor]:
    """Recompute the full state_dict from ``compressed.safetensors`` alone (native simulator)."""
    from .quantum_train import QuantumTrain

    record = ckpt.read_record(Path(path))
    net = build_model(record, model, arch, trust_arch)
    cfg = from_dict(record["config"]).qt
    cfg.qubits, cfg.chunk = record["sizing"]["qubits"], record["sizing"]["chunk"]
    cfg.backend = "native"  # the same probabilities; no quantum stack needed
    if select(net, cfg.include, cfg.exclude).manifest() != record["manifest"]:
        raise QTrainError(f"{path}/{ckpt.COMPRESSED} does not match this architecture: it "
                          "generates other tensors (names or shapes differ)")
    qt = QuantumTrain(net, cfg)
    state = ckpt.read_tensors(Path(path) / ckpt.COMPRESSED)
    try:
        qt.load_state_dict(state)
    except RuntimeError as exc:
        raise QTrainError(f"{path}/{ckpt.COMPRESSED} does not match this architecture: "
                          f"{str(exc).splitlines()[0]}") from exc
    return qt.materialize().state_dict()
