"""Data sets for ``--data``: built-in digits, IDX folders, .npz files, torchvision names and
``package.module:function`` factories. Each resolves to (train_dataset, test_dataset)."""

from __future__ import annotations

import gzip
import importlib
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, TensorDataset, default_collate

from .errors import QTrainError

TORCHVISION = {"mnist": "MNIST", "fashion-mnist": "FashionMNIST", "cifar10": "CIFAR10"}


def _split(x: np.ndarray, y: np.ndarray | None, seed: int, test_size: float = 0.2):
    """(x_train, x_test, y_train, y_test), stratified for integer labels; y None: no labels."""
    from sklearn.model_selection import train_test_split

    if y is None:
        xtr, xte = train_test_split(x, test_size=test_size, random_state=seed)
        return xtr, xte, None, None
    stratify = y if np.issubdtype(y.dtype, np.integer) else None
    return train_test_split(x, y, test_size=test_size, random_state=seed, stratify=stratify)


def _tensors(x: np.ndarray, y: np.ndarray | None) -> TensorDataset:
    xt = torch.as_tensor(np.ascontiguousarray(x), dtype=torch.float32)
    if y is None:  # inputs only: ``--distill`` lets the model label them
        return TensorDataset(xt)
    if np.issubdtype(y.dtype, np.integer):
        yt = torch.as_tensor(y, dtype=torch.long)
    else:
        yt = torch.as_tensor(y, dtype=torch.float32)
    return TensorDataset(xt, yt)


def load_digits_split(seed: int = 0):
    """scikit-learn's bundled 8x8 digits as (N, 1, 8, 8) in [0, 1], split 80/20 stratified."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.images / 16.0).astype(np.float32)[:, None]
    xtr, xte, ytr, yte = _split(x, d.target.astype(np.int64), seed)
    return _tensors(xtr, ytr), _tensors(xte, yte)


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (optionally gzip-compressed) into a numpy array."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as exc:
        raise QTrainError(f"{path} is not a readable IDX file ({exc})") from exc
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 8:
        raise QTrainError(f"{path} is not an unsigned-byte IDX file (bad magic number)")
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    body = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(dims)):
        raise QTrainError(f"{path} is truncated: expected {int(np.prod(dims))} values, "
                          f"found {body.size}")
    return body.reshape(dims)


def _idx_pair(folder: Path, prefix: str, unlabelled: bool = False):
    def find(kind):
        hits = sorted(folder.glob(f"{prefix}*-{kind}-idx*-ubyte*"))
        return hits[0] if hits else None

    images, labels = find("images"), find("labels")
    if images is None or (labels is None and not unlabelled):
        return None
    x = read_idx(images).astype(np.float32) / 255.0
    x = x[:, None] if x.ndim == 3 else x
    if labels is None:
        return x, None
    y = read_idx(labels).astype(np.int64)
    if len(x) != len(y):
        raise QTrainError(f"{images.name} has {len(x)} images but {labels.name} {len(y)} labels")
    return x, y


def load_idx_folder(folder: Path, seed: int = 0):
    """MNIST-format IDX files: ``train*``/``t10k*`` (or ``test*``) pairs; one pair is split 80/20."""
    train = _idx_pair(folder, "train")
    test = _idx_pair(folder, "t10k") or _idx_pair(folder, "test")
    if train and test:
        return _tensors(*train), _tensors(*test)
    only = train or test or _idx_pair(folder, "") or _idx_pair(folder, "", unlabelled=True)
    if only is None:
        raise QTrainError(f"{folder} holds no '*-images-idx3-ubyte[.gz]' files (with or without "
                          "matching '*-labels-idx1-ubyte[.gz]')")
    xtr, xte, ytr, yte = _split(*only, seed)
    return _tensors(xtr, ytr), _tensors(xte, yte)


def load_npz(path: Path, seed: int = 0):
    """``x_train, y_train, x_test, y_test`` arrays, or ``x, y`` split 80/20 with the seed.

    Without the ``y`` arrays the data sets hold inputs only (for ``--distill``).
    """
    try:
        arrays = dict(np.load(path, allow_pickle=False))
    except (OSError, ValueError, EOFError) as exc:
        raise QTrainError(f"{path} is not a readable .npz file ({exc})") from exc
    if {"x_train", "x_test"} <= arrays.keys():
        return (_tensors(arrays["x_train"], arrays.get("y_train")),
                _tensors(arrays["x_test"], arrays.get("y_test")))
    if "x" in arrays:
        xtr, xte, ytr, yte = _split(arrays["x"], arrays.get("y"), seed)
        return _tensors(xtr, ytr), _tensors(xte, yte)
    raise QTrainError(f"{path} has arrays {sorted(arrays)}: it needs x_train, y_train, x_test, "
                      "y_test (or x, y; leave out the y arrays for inputs only)")


def load_npy(path: Path, seed: int = 0):
    """One array of inputs, no labels, split 80/20 with the seed (for ``--distill``)."""
    try:
        x = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise QTrainError(f"{path} is not a readable .npy file ({exc})") from exc
    if x.ndim < 2 or len(x) < 5:
        raise QTrainError(f"{path} holds an array of shape {x.shape}: save inputs as "
                          "(examples, ...) with at least 5 examples")
    xtr, xte, _, _ = _split(x, None, seed)
    return _tensors(xtr, None), _tensors(xte, None)


def load_torchvision(name: str, root: str | None):
    try:
        import torchvision
        from torchvision import transforms
    except Exception as exc:
        raise QTrainError(f"--data {name} needs torchvision: pip install 'qtrain[vision]' "
                          f"({type(exc).__name__}: {exc})") from exc
    cls = getattr(torchvision.datasets, TORCHVISION[name])
    root = root or "data"
    try:
        return tuple(cls(root, train=t, download=False, transform=transforms.ToTensor())
                     for t in (True, False))
    except RuntimeError as exc:
        raise QTrainError(f"{name} is not in {root}: put it there (no download happens) or "
                          "pass --data-dir") from exc


def load_data(spec: str = "digits", seed: int = 0, data_dir: str | None = None
              ) -> tuple[Dataset, Dataset]:
    """Resolve ``--data`` into (train_dataset, test_dataset).

    Args:
        spec: ``digits``, a folder of IDX files, an ``.npz`` file, an ``.npy`` file of inputs
            (no labels), ``mnist``/``fashion-mnist``/``cifar10`` (torchvision), or
            ``package.module:function``.
        seed: the seed of any 80/20 split.
        data_dir: where torchvision data sets live.
    """
    if spec == "digits":
        return load_digits_split(seed)
    if spec in TORCHVISION:
        return load_torchvision(spec, data_dir)
    path = Path(spec)
    if path.is_dir():
        return load_idx_folder(path, seed)
    if path.suffix in (".npz", ".npy"):
        if not path.is_file():
            raise QTrainError(f"--data file {spec} does not exist")
        return (load_npz if path.suffix == ".npz" else load_npy)(path, seed)
    if ":" in spec and not path.exists():
        module, _, attr = spec.partition(":")
        try:
            fn = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as exc:
            raise QTrainError(f"--data {spec!r} cannot be imported ({exc})") from exc
        out = fn()
        if not (isinstance(out, tuple | list) and len(out) == 2):
            raise QTrainError(f"--data {spec!r} must return (train_dataset, test_dataset)")
        return tuple(out)
    raise QTrainError(f"--data {spec!r} is not digits, a folder of IDX files, an .npz or .npy file, "
                      f"one of {', '.join(TORCHVISION)}, or 'package.module:function'")


def check_finite(ds: Dataset, split: str) -> None:
    """Refuse NaN or Inf in a tensor data set, naming the split and the first bad index."""
    if not isinstance(ds, TensorDataset):
        return
    for t in ds.tensors:
        if t.is_floating_point():
            bad = ~torch.isfinite(t.reshape(len(t), -1)).all(dim=1)
            if bad.any():
                i = int(bad.nonzero()[0])
                raise QTrainError(f"the {split} data has NaN or Inf at index {i}: clean it first")


def has_labels(ds: Dataset) -> bool:
    """Whether the examples of ``ds`` carry a target beside the input."""
    if isinstance(ds, TensorDataset):
        return len(ds.tensors) >= 2
    item = ds[0]
    return isinstance(item, tuple | list) and len(item) >= 2


def inputs_of(ds: Dataset, start: int, stop: int) -> torch.Tensor:
    """The inputs of examples ``start:stop`` as one batch, labelled or not."""
    if isinstance(ds, TensorDataset):
        return ds.tensors[0][start:stop]
    items = [ds[i] for i in range(start, stop)]
    return default_collate([it[0] if isinstance(it, tuple | list) else it for it in items])
