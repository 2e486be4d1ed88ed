"""``qtrain predict``: run a checkpoint's regenerated model on a tensor file or an image, with
plain PyTorch (``qtrain.load``): no quantum library is imported."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from .errors import QTrainError

IMAGES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
TENSORS = (".npy", ".npz", ".pt", ".pth")


def _array(path: Path):
    suffix = path.suffix.lower()
    try:
        if suffix == ".npy":
            return np.load(path, allow_pickle=False)
        if suffix == ".npz":
            with np.load(path, allow_pickle=False) as z:
                arrays = dict(z)
            for key in ("x", "x_test", "inputs"):
                if key in arrays:
                    return arrays[key]
            if len(arrays) == 1:
                return next(iter(arrays.values()))
            raise QTrainError(f"{path} holds arrays {sorted(arrays)}: name the inputs 'x' "
                              "(or keep one array)")
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except QTrainError:
        raise
    except Exception as exc:
        raise QTrainError(f"{path} is not a readable {suffix} file ({str(exc).splitlines()[0]})"
                          ) from exc
    if isinstance(obj, dict) and isinstance(obj.get("x"), torch.Tensor):
        obj = obj["x"]
    if not isinstance(obj, torch.Tensor):
        raise QTrainError(f"{path} holds a {type(obj).__name__}: save a tensor of inputs "
                          "(or a dict with the tensor under 'x')")
    return obj


def _image(path: Path, shape: list[int], invert: bool) -> torch.Tensor:
    if len(shape) != 3 or shape[0] not in (1, 3):
        raise QTrainError(f"this model takes inputs of shape {tuple(shape)}, not images: give a "
                          ".npy, .npz or .pt file")
    try:
        from PIL import Image
    except ImportError:
        raise QTrainError("reading images needs Pillow: pip install pillow (it comes with "
                          "'qtrain[plot]'), or give a .npy/.npz/.pt file") from None
    try:
        with Image.open(path) as img:
            img = img.convert("L" if shape[0] == 1 else "RGB")
            # shrinking averages each pixel's area (no aliasing); enlarging interpolates
            down = img.size[0] >= shape[2] and img.size[1] >= shape[1]
            img = img.resize((shape[2], shape[1]),
                             Image.Resampling.BOX if down else Image.Resampling.BILINEAR)
            x = np.asarray(img, dtype=np.float32) / 255.0
    except OSError as exc:
        raise QTrainError(f"{path} is not a readable image ({exc})") from exc
    x = x[None] if shape[0] == 1 else x.transpose(2, 0, 1)
    x = 1.0 - x if invert else x
    return torch.from_numpy(np.ascontiguousarray(x))[None]


def read_inputs(path: str | Path, input_shape: list[int], invert: bool = False) -> torch.Tensor:
    """A batch ``(N, *input_shape)`` of float inputs from a tensor file or an image.

    A tensor file holds one example or a batch; its trailing values are reshaped to
    ``input_shape``. 8-bit integer arrays are read as pixels and scaled to [0, 1]. An image is
    converted to grey or RGB and resized to the model's input size, scaled to [0, 1]
    (``invert``: 1 - value, for dark strokes on a light background).
    """
    path = Path(path)
    if not path.is_file():
        raise QTrainError(f"input file {path} does not exist")
    suffix = path.suffix.lower()
    if suffix in IMAGES:
        return _image(path, input_shape, invert)
    if suffix not in TENSORS:
        raise QTrainError(f"{path.name}: give a .npy, .npz or .pt tensor file, or an image "
                          f"({', '.join(IMAGES)})")
    data = _array(path)
    x = torch.as_tensor(np.asarray(data) if not isinstance(data, torch.Tensor) else data)
    if x.dtype == torch.uint8:
        x = x.float() / 255.0
    x = x.float()
    per = math.prod(input_shape)
    if x.numel() == per:
        x = x.reshape(1, *input_shape)
    elif x.dim() >= 1 and x.numel() % per == 0 and math.prod(x.shape[1:]) == per:
        x = x.reshape(len(x), *input_shape)
    else:
        raise QTrainError(f"{path.name} has shape {tuple(x.shape)}; the model takes "
                          f"{tuple(input_shape)} per example (or a batch (N, ...) of them)")
    if not torch.isfinite(x).all():
        raise QTrainError(f"{path.name} holds NaN or Inf: clean it first")
    return x


def instance(record: dict, trust_pickle: bool = False):
    """A network instance for a pickled-module run (``None`` for an ``--arch`` run)."""
    where = record["arch"].get("pickle")
    if where is None or record["arch"].get("spec") is not None:
        return None
    if not trust_pickle:
        raise QTrainError(f"this checkpoint came from the pickled module {where}: pass "
                          "--trust-pickle to unpickle it again (it runs code from the file)")
    from .models import load_target

    if not Path(where).is_file():
        raise QTrainError(f"the pickled module {where} is gone: qtrain.load(path, model=net) "
                          "needs an instance of the network")
    return load_target(where, trust_pickle=True).module


@torch.no_grad()
def predict(model: torch.nn.Module, x: torch.Tensor, task: str, top: int = 3) -> list[dict]:
    """Per example: the class, its probability and the ``top`` classes (classification), or the
    outputs (regression)."""
    out = model.eval()(x)
    rows = []
    if task == "classification":
        probs = torch.softmax(out.reshape(len(x), -1), dim=-1)
        k = min(top, probs.shape[-1])
        p, idx = probs.topk(k, dim=-1)
        for i in range(len(x)):
            rows.append({"index": i, "prediction": int(idx[i, 0]), "probability": float(p[i, 0]),
                         "top": [[int(c), float(q)] for c, q in zip(idx[i], p[i], strict=True)]})
    else:
        for i in range(len(x)):
            rows.append({"index": i, "output": out[i].reshape(-1).tolist()})
    return rows


def format_predictions(rows: list[dict]) -> str:
    lines = []
    for r in rows:
        if "prediction" in r:
            rest = ", ".join(f"{c}: {q:.1%}" for c, q in r["top"][1:])
            lines.append(f"[{r['index']}] class {r['prediction']} ({r['probability']:.1%})"
                         + (f"   next: {rest}" if rest else ""))
        else:
            lines.append(f"[{r['index']}] " + " ".join(f"{v:.6g}" for v in r["output"]))
    return "\n".join(lines)
