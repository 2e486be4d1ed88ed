"""``--data`` sources: built-in digits, IDX folders, .npz files, module:function specs, the real
MNIST test set, and refusal of NaN."""

from __future__ import annotations

import gzip
import struct
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import TensorDataset

import qtrain
from qtrain import QTrainError
from qtrain.data import check_finite, load_data, load_digits_split, read_idx
from qtrain.models import digits_cnn

MNIST = Path(__file__).resolve().parents[2] / "shared/data/mnist"


def write_idx(path: Path, array: np.ndarray) -> Path:
    """Write an unsigned-byte IDX file (gzip-compressed when the name ends in .gz)."""
    array = np.asarray(array, dtype=np.uint8)
    header = struct.pack(">BBBB", 0, 0, 8, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    data = header + array.tobytes()
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)
    return path


def write_pair(folder: Path, prefix: str, images: np.ndarray, labels: np.ndarray, gz: bool):
    ext = ".gz" if gz else ""
    write_idx(folder / f"{prefix}-images-idx3-ubyte{ext}", images)
    write_idx(folder / f"{prefix}-labels-idx1-ubyte{ext}", labels)


def fake_mnist(n: int, classes: int = 5, side: int = 6, seed: int = 0):
    """n random side x side uint8 images, labels cycling through ``classes`` values."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, side, side), dtype=np.uint8), np.arange(n) % classes


def assert_stratified(train_y: torch.Tensor, test_y: torch.Tensor, test_share: float = 0.2):
    """Every class's test share is within one example of ``test_share``."""
    tr, te = Counter(train_y.tolist()), Counter(test_y.tolist())
    assert set(tr) == set(te)
    for c in tr:
        assert abs(te[c] - test_share * (tr[c] + te[c])) <= 1, (c, tr[c], te[c])


# ----------------------------------------------------------------------------- digits


def test_digits_shapes_split_and_range():
    """Digits load as (N, 1, 8, 8) float32 in [0, 1], split 1437/360 and stratified."""
    train, test = load_digits_split(seed=0)
    (xtr, ytr), (xte, yte) = train.tensors, test.tensors
    assert xtr.shape == (1437, 1, 8, 8) and xte.shape == (360, 1, 8, 8)
    assert xtr.dtype == torch.float32 and ytr.dtype == torch.long
    for x in (xtr, xte):
        assert float(x.min()) == 0.0 and float(x.max()) == 1.0
    assert sorted(set(ytr.tolist())) == list(range(10))
    assert_stratified(ytr, yte)


def test_digits_deterministic_with_seed():
    """The same seed gives the same split; another seed a different one."""
    a, b, c = (load_digits_split(seed=s) for s in (0, 0, 1))
    for ta, tb in zip(a[0].tensors + a[1].tensors, b[0].tensors + b[1].tensors, strict=True):
        assert torch.equal(ta, tb)
    assert not torch.equal(a[1].tensors[0], c[1].tensors[0])
    # the --data spec gives the same split as the helper
    d = load_data("digits", seed=0)
    assert torch.equal(d[1].tensors[0], a[1].tensors[0])


# ----------------------------------------------------------------------------- IDX


@pytest.mark.parametrize("gz", [False, True])
def test_idx_train_and_test_pair(tmp_path, gz):
    """train-*/t10k-* IDX pairs (plain or .gz) load as given, in [0, 1], with a channel axis."""
    xtr, ytr = fake_mnist(20, seed=1)
    xte, yte = fake_mnist(7, seed=2)
    write_pair(tmp_path, "train", xtr, ytr, gz)
    write_pair(tmp_path, "t10k", xte, yte, gz)
    train, test = load_data(str(tmp_path))
    assert train.tensors[0].shape == (20, 1, 6, 6) and test.tensors[0].shape == (7, 1, 6, 6)
    torch.testing.assert_close(train.tensors[0][:, 0], torch.as_tensor(xtr / 255.0,
                                                                        dtype=torch.float32))
    assert train.tensors[1].tolist() == ytr.tolist() and test.tensors[1].tolist() == yte.tolist()
    assert test.tensors[1].dtype == torch.long


@pytest.mark.parametrize("gz", [False, True])
def test_idx_single_pair_is_split(tmp_path, gz):
    """A folder with only one IDX pair is split 80/20, stratified, reproducibly by seed."""
    x, y = fake_mnist(50)
    write_pair(tmp_path, "t10k", x, y, gz)
    train, test = load_data(str(tmp_path), seed=3)
    assert (len(train), len(test)) == (40, 10)
    assert_stratified(train.tensors[1], test.tensors[1])
    again = load_data(str(tmp_path), seed=3)
    assert torch.equal(again[1].tensors[0], test.tensors[0])


def test_idx_truncated_plain(tmp_path):
    """A truncated IDX file raises a QTrainError saying so."""
    x, y = fake_mnist(10)
    path = write_idx(tmp_path / "train-images-idx3-ubyte", x)
    path.write_bytes(path.read_bytes()[:-5])
    with pytest.raises(QTrainError, match="truncated: expected 360 values, found 355"):
        read_idx(path)
    write_idx(tmp_path / "train-labels-idx1-ubyte", y)
    with pytest.raises(QTrainError, match="truncated"):
        load_data(str(tmp_path))


def test_idx_truncated_gz(tmp_path):
    """A cut-off .gz IDX file raises a QTrainError, not an EOFError."""
    x, y = fake_mnist(10)
    path = write_idx(tmp_path / "train-images-idx3-ubyte.gz", x)
    path.write_bytes(path.read_bytes()[:-20])
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", y)
    with pytest.raises(QTrainError, match="not a readable IDX file"):
        load_data(str(tmp_path))


def test_idx_bad_magic_and_count_mismatch(tmp_path):
    """A non-IDX file, and images/labels of different lengths, are QTrainErrors."""
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "train-images-idx3-ubyte").write_bytes(b"\x01\x02\x03\x04rest")
    write_idx(bad / "train-labels-idx1-ubyte", np.zeros(3))
    with pytest.raises(QTrainError, match="bad magic number"):
        load_data(str(bad))
    odd = tmp_path / "odd"
    odd.mkdir()
    x, _ = fake_mnist(10)
    write_pair(odd, "train", x, np.zeros(9), gz=False)
    with pytest.raises(QTrainError, match="10 images but .* 9 labels"):
        load_data(str(odd))


def test_idx_empty_folder(tmp_path):
    """A folder with no IDX pair says which file names it looks for."""
    with pytest.raises(QTrainError, match="images-idx3-ubyte"):
        load_data(str(tmp_path))


# ----------------------------------------------------------------------------- npz


def test_npz_with_train_and_test(tmp_path):
    """An .npz with x_train/y_train/x_test/y_test keeps its splits; int labels classify."""
    rng = np.random.default_rng(0)
    path = tmp_path / "d.npz"
    np.savez(path, x_train=rng.random((12, 3)), y_train=np.arange(12) % 3,
             x_test=rng.random((5, 3)), y_test=np.arange(5) % 3)
    train, test = load_data(str(path))
    assert (len(train), len(test)) == (12, 5)
    assert train.tensors[0].dtype == torch.float32 and train.tensors[1].dtype == torch.long
    assert test.tensors[1].tolist() == [0, 1, 2, 0, 1]


def test_npz_with_x_y_is_split(tmp_path):
    """An .npz with only x, y is split 80/20, stratified, with the seed."""
    rng = np.random.default_rng(0)
    path = tmp_path / "xy.npz"
    np.savez(path, x=rng.random((100, 2)), y=np.arange(100) % 4)
    train, test = load_data(str(path), seed=5)
    assert (len(train), len(test)) == (80, 20)
    assert_stratified(train.tensors[1], test.tensors[1])
    assert torch.equal(load_data(str(path), seed=5)[0].tensors[0], train.tensors[0])
    assert not torch.equal(load_data(str(path), seed=6)[0].tensors[0], train.tensors[0])


def test_npz_missing_keys_and_file(tmp_path):
    """An .npz without the needed arrays, or a missing one, is a QTrainError."""
    path = tmp_path / "wrong.npz"
    np.savez(path, a=np.zeros(3))
    with pytest.raises(QTrainError, match="needs x_train, y_train, x_test, y_test"):
        load_data(str(path))
    with pytest.raises(QTrainError, match="does not exist"):
        load_data(str(tmp_path / "absent.npz"))


def test_regression_npz_trains_with_mse(tmp_path):
    """Float y gives regression targets; compress trains them with MSE and reports no accuracy."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 4)).astype(np.float32)
    y = (x @ np.array([1.0, -2.0, 0.5, 3.0]) + 0.5).astype(np.float32)
    path = tmp_path / "reg.npz"
    np.savez(path, x=x, y=y)
    train, test = load_data(str(path))
    assert train.tensors[1].dtype == torch.float32 and (len(train), len(test)) == (160, 40)
    torch.manual_seed(0)
    cfg = qtrain.CompressConfig(qt=qtrain.QTConfig(blocks=2),
                                train=qtrain.TrainConfig(epochs=8, batch_size=16, lr=0.05,
                                                         quiet=True))
    result = qtrain.compress(torch.nn.Linear(4, 1), (train, test), cfg)
    assert result.metrics["test_accuracy"] is None
    assert all(h["test_accuracy"] is None for h in result.history)
    xt, yt = test.tensors
    with torch.no_grad():
        mse = F.mse_loss(result.model(xt).reshape(-1), yt).item()
    assert result.metrics["test_loss"] == pytest.approx(mse, rel=1e-5)
    assert result.history[-1]["test_loss"] < 0.5 * result.history[0]["test_loss"]


# ----------------------------------------------------------------------------- module:function


def test_module_function_spec(tmp_path, monkeypatch):
    """--data package.module:function calls that function for (train, test)."""
    (tmp_path / "qtrain_test_datamod.py").write_text(
        "import torch\n"
        "from torch.utils.data import TensorDataset\n\n"
        "def make():\n"
        "    x = torch.arange(24.0).reshape(6, 4)\n"
        "    return TensorDataset(x[:4], torch.tensor([0, 1, 0, 1])), "
        "TensorDataset(x[4:], torch.tensor([1, 0]))\n\n"
        "def broken():\n"
        "    return 42\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "qtrain_test_datamod", raising=False)
    train, test = load_data("qtrain_test_datamod:make")
    assert (len(train), len(test)) == (4, 2)
    assert test.tensors[0][0].tolist() == [16.0, 17.0, 18.0, 19.0]
    with pytest.raises(QTrainError, match="must return"):
        load_data("qtrain_test_datamod:broken")
    with pytest.raises(QTrainError, match="cannot be imported"):
        load_data("qtrain_test_datamod:absent")
    monkeypatch.delitem(sys.modules, "qtrain_test_datamod", raising=False)


def test_unknown_data_spec():
    """A --data value that is none of the known forms lists them."""
    with pytest.raises(QTrainError, match="is not digits, a folder of IDX files"):
        load_data("no-such-data")


# ----------------------------------------------------------------------------- real MNIST


def test_real_mnist_test_set():
    """The shared MNIST t10k pair loads as 8,000/2,000 stratified 1x28x28 images in [0, 1]."""
    if not (MNIST / "t10k-images-idx3-ubyte.gz").is_file():
        pytest.skip(f"the shared MNIST test set is not at {MNIST}")
    train, test = load_data(str(MNIST), seed=0)
    assert (len(train), len(test)) == (8000, 2000)
    assert train.tensors[0].shape[1:] == (1, 28, 28) and test.tensors[0].shape[1:] == (1, 28, 28)
    assert float(train.tensors[0].min()) >= 0.0 and float(train.tensors[0].max()) <= 1.0
    assert sorted(set(test.tensors[1].tolist())) == list(range(10))
    assert_stratified(train.tensors[1], test.tensors[1])


# ----------------------------------------------------------------------------- NaN


def test_nan_refused_naming_split_and_index():
    """NaN (or Inf) in the data is refused before training, naming the split and index."""
    x = torch.rand(10, 1, 8, 8)
    y = torch.arange(10) % 10
    bad = x.clone()
    bad[6, 0, 3, 3] = float("nan")
    cfg = qtrain.CompressConfig(train=qtrain.TrainConfig(epochs=1, quiet=True))
    model = digits_cnn()
    with pytest.raises(QTrainError, match="the test data has NaN or Inf at index 6"):
        qtrain.compress(model, (TensorDataset(x, y), TensorDataset(bad, y)), cfg)
    inf = x.clone()
    inf[2, 0, 0, 0] = float("inf")
    with pytest.raises(QTrainError, match="the train data has NaN or Inf at index 2"):
        check_finite(TensorDataset(inf, y), "train")
    check_finite(TensorDataset(x, y), "train")  # clean data passes


def test_nan_in_npz_refused_by_cli(tmp_path, capsys, check_error):
    """Through the CLI, an .npz with NaN is a one-line error naming the split and index."""
    from qtrain.cli import main

    rng = np.random.default_rng(0)
    xtr = rng.random((20, 1, 8, 8)).astype(np.float32)
    xtr[13, 0, 1, 1] = np.nan
    path = tmp_path / "nan.npz"
    np.savez(path, x_train=xtr, y_train=np.arange(20) % 10,
             x_test=rng.random((5, 1, 8, 8)).astype(np.float32), y_test=np.arange(5))
    capsys.readouterr()
    rc = main(["compress", "--data", str(path), "--epochs", "1", "--quiet",
               "--out", str(tmp_path / "run")])
    check_error(rc, capsys.readouterr().err, "train data", "index 13")
