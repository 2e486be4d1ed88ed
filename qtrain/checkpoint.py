"""Files of a run, written atomically: compressed.safetensors, model.safetensors, qtrain.json,
metrics.jsonl and the resumable train_state.pt."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from .errors import QTrainError

FORMAT = "qtrain"
FORMAT_VERSION = 1
COMPRESSED, MODEL, RECORD, METRICS, STATE = (
    "compressed.safetensors", "model.safetensors", "qtrain.json", "metrics.jsonl", "train_state.pt")
INIT_FIT = "init_fit.json"  # the --init fit report, kept for a resumed run's record


def atomic_write(path: Path, data: bytes) -> None:
    """Write to a temporary file beside ``path``, fsync, then rename over it."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise QTrainError(f"cannot write {path} ({exc.strerror}): choose a writable --out") from exc


def write_json(path: Path, obj) -> None:
    atomic_write(path, (json.dumps(obj, indent=2) + "\n").encode())


def write_tensors(path: Path, tensors: dict[str, torch.Tensor], kind: str) -> None:
    """Save tensors as safetensors; the header metadata names the format and its version."""
    from safetensors.torch import save

    plain = {k: v.detach().cpu().contiguous().clone() for k, v in tensors.items()}
    meta = {"format": FORMAT, "format_version": str(FORMAT_VERSION), "content": kind}
    atomic_write(path, _sorted_metadata(save(plain, metadata=meta)))


def _sorted_metadata(blob: bytes) -> bytes:
    """safetensors writes its metadata map in an order that changes from process to process;
    sort it, so the same tensors always give the same bytes. The header keeps its length."""
    size = int.from_bytes(blob[:8], "little")
    header = json.loads(blob[8: 8 + size])
    meta = header.pop("__metadata__", None)
    ordered = ({"__metadata__": dict(sorted(meta.items()))} if meta else {}) | header
    text = json.dumps(ordered, separators=(",", ":"), ensure_ascii=False).encode()
    if len(text) > size:  # not expected: keep safetensors' own bytes
        return blob
    return blob[:8] + text.ljust(size) + blob[8 + size:]


def read_tensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not Path(path).is_file():
        raise QTrainError(f"{path} is missing: is this a qtrain checkpoint folder?")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise QTrainError(f"{path} is corrupt or truncated ({exc}): re-run qtrain compress") from exc


def read_record(folder: Path) -> dict:
    """Read and check ``qtrain.json`` of a checkpoint folder."""
    path = Path(folder) / RECORD
    if not path.is_file():
        raise QTrainError(f"{folder} has no {RECORD}: give a folder written by qtrain compress")
    try:
        record = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise QTrainError(f"{path} is corrupt ({exc}): re-run qtrain compress") from exc
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise QTrainError(f"{path} is not a qtrain record")
    if record.get("format_version", 0) > FORMAT_VERSION:
        raise QTrainError(f"{path} has format version {record['format_version']}, newer than "
                          "this qtrain understands: upgrade qtrain")
    return record


def write_metrics(path: Path, history: list[dict]) -> None:
    atomic_write(path, "".join(json.dumps(h) + "\n" for h in history).encode())
