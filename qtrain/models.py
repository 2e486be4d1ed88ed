"""Target networks: the built-in architectures, ``--arch`` specs, and model files loaded safely."""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import pickle
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from .errors import QTrainError


def _act(name: str) -> nn.Module:
    return {"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh, "none": nn.Identity}[name]()


def toolkit_cnn(act: str = "none", num_classes: int = 10) -> nn.Module:
    """The Quantum-Train toolkit's MNIST CNN (1x28x28 input, M = 6,690). No activations by
    default, as in the toolkit; ``act="relu"`` adds them."""
    return nn.Sequential(
        nn.Conv2d(1, 8, 5), _act(act), nn.MaxPool2d(2),
        nn.Conv2d(8, 12, 5), _act(act), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(192, 20), _act(act), nn.Linear(20, num_classes),
    )


def digits_cnn(num_classes: int = 10) -> nn.Module:
    """A small ReLU CNN for scikit-learn's 1x8x8 digits (M = 1,898)."""
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(64, num_classes),
    )


def mlp(in_features: int = 64, hidden: int = 32, num_classes: int = 10) -> nn.Module:
    """A one-hidden-layer ReLU MLP that flattens its input."""
    return nn.Sequential(nn.Flatten(), nn.Linear(in_features, hidden), nn.ReLU(),
                         nn.Linear(hidden, num_classes))


BUILTINS = {"digits_cnn": digits_cnn, "toolkit_cnn": toolkit_cnn, "mlp": mlp}


@dataclass
class Target:
    """A target network and where it came from.

    Attributes:
        module: the network.
        arch: how to rebuild it: ``{"spec": ..., "kwargs": ...}`` or, for a pickle, ``{"pickle": path}``.
        name: a short name for output folders.
        trained: whether MODEL carried weights (as opposed to a fresh initialisation).
    """

    module: nn.Module
    arch: dict
    name: str
    trained: bool = False
    source: dict = field(default_factory=dict)


def _load_spec_object(spec: str):
    if ":" not in spec:
        raise QTrainError(
            f"--arch {spec!r} is neither a built-in ({', '.join(BUILTINS)}) nor "
            "'package.module:factory' or 'path/to/file.py:Name'"
        )
    where, _, attr = spec.rpartition(":")
    if where.endswith(".py"):
        path = Path(where)
        if not path.is_file():
            raise QTrainError(f"--arch file {where} does not exist: check the path")
        name = "qtrain_arch_" + hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:12]
        mod_spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(mod_spec)
        try:
            mod_spec.loader.exec_module(module)
        except Exception as exc:
            raise QTrainError(f"--arch file {where} failed to import: {exc}") from exc
    else:
        try:
            module = importlib.import_module(where)
        except ImportError as exc:
            raise QTrainError(f"--arch module {where!r} cannot be imported ({exc}): "
                              "install it or put it on PYTHONPATH") from exc
    if not hasattr(module, attr):
        raise QTrainError(f"--arch {spec!r}: {where} has no attribute {attr!r}")
    return getattr(module, attr)


def build_arch(spec: str, kwargs: dict | None = None) -> nn.Module:
    """Build a network from a built-in name or ``module:factory`` / ``file.py:Name`` spec."""
    factory = BUILTINS.get(spec) or _load_spec_object(spec)
    try:
        model = factory(**(kwargs or {}))
    except TypeError as exc:
        raise QTrainError(f"--arch {spec!r} could not be built with --arch-kwargs "
                          f"{kwargs or {}}: {exc}") from exc
    if not isinstance(model, nn.Module):
        raise QTrainError(f"--arch {spec!r} returned {type(model).__name__}, not an nn.Module")
    return model


def normalize_spec(spec: str) -> str:
    """A ``file.py:Name`` spec with its file made absolute, so it rebuilds from any folder."""
    where, sep, attr = spec.rpartition(":")
    if sep and where.endswith(".py"):
        return f"{Path(where).resolve()}:{attr}"
    return spec


def _arch_name(spec: str) -> str:
    return spec.rpartition(":")[2] or spec


def read_state_dict(path: Path) -> dict:
    """The state_dict in a .pt/.pth/.safetensors file, read without running code from it."""
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError) as exc:
            raise QTrainError(f"{path} is not a readable safetensors file ({exc})") from exc
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "Unsupported global" in str(exc):  # a pickled object, not random bytes
            raise _PickledModule() from exc
        raise QTrainError(f"{path} is corrupt or not a PyTorch file: save the weights with "
                          "torch.save(model.state_dict(), path)") from exc
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as exc:
        raise QTrainError(f"{path} is corrupt or truncated (torch could not read it): save it "
                          "again with torch.save(model.state_dict(), path)") from exc
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise QTrainError(f"{path} holds a {type(obj).__name__}, not a state_dict of tensors")
    return obj


class _PickledModule(Exception):
    pass


def _load_pickle(path: Path) -> nn.Module:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise QTrainError(f"{path} could not be unpickled: {exc}") from exc
    if not isinstance(obj, nn.Module):
        raise QTrainError(f"{path} holds a {type(obj).__name__}, not an nn.Module")
    return obj


def load_target(model: str | None, arch: str | None = None, arch_kwargs: dict | None = None,
                trust_pickle: bool = False) -> Target:
    """Resolve the MODEL argument of ``qtrain compress`` into a :class:`Target`.

    MODEL may be a state_dict file (``.pt``/``.pth``/``.safetensors``, with ``arch``), a pickled
    whole module (only with ``trust_pickle``), a built-in name, or ``None`` with ``arch``.
    """
    arch = normalize_spec(arch) if arch else arch
    if model is None or (model in BUILTINS and not Path(model).exists()):
        spec = arch or model or "digits_cnn"
        return Target(build_arch(spec, arch_kwargs), {"spec": spec, "kwargs": arch_kwargs or {}},
                      _arch_name(spec))
    path = Path(model)
    if not path.exists():
        raise QTrainError(f"model file {model} does not exist: give a .pt/.pth/.safetensors path "
                          f"or a built-in name ({', '.join(BUILTINS)})")
    if path.is_dir():
        raise QTrainError(f"{model} is a directory: give a model file")
    try:
        state = read_state_dict(path)
    except _PickledModule:
        if not trust_pickle:
            raise QTrainError(
                f"{model} is a pickled whole module, and unpickling runs code from the file: "
                f"rerun with --trust-pickle if you trust it, or save model.state_dict() and "
                f"pass --arch"
            ) from None
        module = _load_pickle(path)
        source = {"path": str(path.resolve()), "sha256": file_sha256(path)}
        return Target(module, {"pickle": str(path.resolve())}, path.stem, True, source)
    if arch is None:
        raise QTrainError(f"{model} is a state_dict: also pass --arch (a built-in such as "
                          "digits_cnn, 'package.module:factory' or 'file.py:Name')")
    module = build_arch(arch, arch_kwargs)
    load_into(module, state, f"{model} does not match --arch {arch}")
    return Target(module, {"spec": arch, "kwargs": arch_kwargs or {}}, path.stem, True,
                  {"path": str(path.resolve()), "sha256": file_sha256(path)})


def file_sha256(path: Path) -> str:
    """The SHA-256 of a file, read in blocks (model files may be large)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def load_into(module: nn.Module, state: dict, what: str) -> None:
    """``load_state_dict(strict=True)`` with a one-line error naming the mismatched keys."""
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        own = module.state_dict()
        missing = sorted(set(own) - set(state))
        extra = sorted(set(state) - set(own))
        shape = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
        bits = [f"{label} {', '.join(keys[:4])}" for label, keys in
                (("missing", missing), ("unexpected", extra), ("wrong shape", shape)) if keys]
        raise QTrainError(f"{what}: {'; '.join(bits) or str(exc).splitlines()[0]}") from exc
