"""Data parallel under torchrun (gloo on CPU): each rank's share of the global batches, 2
processes matching 1, both launch forms, rank-0-only output, and Ctrl-C under torchrun."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from qtrain.cli import main
from qtrain.data import load_digits_split
from qtrain.distributed import Context, shard

REPO = Path(__file__).resolve().parents[1]

# a tiny ragged task: 91 training examples in global batches of 15, split 8 + 7 over two
# ranks; the last batch holds one example and leaves rank 1 an empty share. The MLP has no
# BatchNorm, whose running statistics would differ per rank.
BASE = ["compress", "--arch", "mlp", "--arch-kwargs", '{"hidden": 8}', "--blocks", "2",
        "--batch-size", "15", "--lr", "0.01", "--quiet"]
EPOCHS = 20
COMPARED = ("train_loss", "test_loss", "test_accuracy", "lr")


def env() -> dict:
    """The subprocess environment: one thread per process, as torchrun sets for its workers."""
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}


def run(args: list[str], torchrun: bool = False, timeout: float = 240) -> subprocess.CompletedProcess:
    head = [sys.executable, "-m"] + (["torch.distributed.run", "--standalone", "--nproc-per-node",
                                      "2", "-m"] if torchrun else []) + ["qtrain"]
    return subprocess.run(head + [str(a) for a in args], capture_output=True, text=True,
                          env=env(), cwd=REPO, timeout=timeout)


def rows(folder) -> list[dict]:
    return [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def npz(tmp_path_factory):
    """91 training and 40 test digits as an .npz."""
    train, test = load_digits_split(seed=0)
    path = tmp_path_factory.mktemp("ddp") / "tiny.npz"
    np.savez(path, x_train=train.tensors[0][:91].numpy(), y_train=train.tensors[1][:91].numpy(),
             x_test=test.tensors[0][:40].numpy(), y_test=test.tensors[1][:40].numpy())
    return path


@pytest.fixture(scope="module")
def single(npz, tmp_path_factory):
    """The reference: the same run in one process (the CLI in-process)."""
    out = tmp_path_factory.mktemp("single") / "run"
    assert main([*BASE, "--data", str(npz), "--epochs", str(EPOCHS), "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def two(npz, tmp_path_factory):
    """The same run as `qtrain compress --nproc 2` (which launches torchrun)."""
    out = tmp_path_factory.mktemp("two") / "run"
    proc = run([*BASE, "--data", npz, "--epochs", EPOCHS, "--out", out, "--nproc", "2"])
    assert proc.returncode == 0, proc.stderr
    return out, proc


@pytest.mark.parametrize("n,batch,world", [(23, 5, 1), (23, 5, 2), (21, 5, 3), (101, 5, 2),
                                           (40, 8, 4)])
def test_shards_partition_each_global_batch(n, batch, world):
    """The ranks' shares of step k together are exactly the one-process batch k."""
    for epoch in (0, 3):
        alone = shard(n, batch, epoch, seed=7, ctx=Context())
        parts = [shard(n, batch, epoch, seed=7, ctx=Context(r, world)) for r in range(world)]
        assert all(len(p) == len(alone) == -(-n // batch) for p in parts)
        for k, whole in enumerate(alone):
            got = torch.cat([p[k] for p in parts])
            assert sorted(got.tolist()) == sorted(whole.tolist())
        assert sorted(torch.cat(alone).tolist()) == list(range(n))  # each example once
    assert not torch.equal(torch.cat(shard(n, batch, 0, 7, Context())),
                           torch.cat(shard(n, batch, 1, 7, Context())))  # set_epoch reshuffles


def test_empty_share_of_a_short_last_batch():
    """21 examples in batches of 5 over 3 ranks: the last batch (1 example) leaves ranks 0, 1 empty."""
    parts = [shard(21, 5, 0, 0, Context(r, 3)) for r in range(3)]
    assert [len(p[-1]) for p in parts] == [0, 0, 1]
    assert [len(p[0]) for p in parts] == [2, 2, 1]


def test_two_processes_match_one(single, two):
    """`--nproc 2` (gloo) gives the one-process metrics.jsonl to float tolerance, and rank 0
    alone prints."""
    out, proc = two
    one, par = rows(single), rows(out)
    assert [r["epoch"] for r in par] == list(range(1, EPOCHS + 1))
    for a, b in zip(one, par, strict=True):
        for key in COMPARED:
            assert b[key] == pytest.approx(a[key], rel=1e-5, abs=1e-7), (a["epoch"], key)
    assert one[-1]["train_loss"] < one[0]["train_loss"] - 0.05  # it trained: the match means something
    assert proc.stdout.count("compression ratio") == 2  # the two summary lines, once (rank 0)
    assert "Traceback" not in proc.stderr and "OMP_NUM_THREADS" not in proc.stderr


def test_torchrun_by_hand_equals_nproc(npz, two, tmp_path):
    """`torchrun --nproc-per-node 2 -m qtrain compress` gives the same bytes as `--nproc 2`."""
    out = tmp_path / "run"
    proc = run([*BASE, "--data", npz, "--epochs", EPOCHS, "--out", out], torchrun=True)
    assert proc.returncode == 0, proc.stderr
    ref = two[0]
    assert (out / "compressed.safetensors").read_bytes() == (ref / "compressed.safetensors").read_bytes()
    assert [{k: r[k] for k in COMPARED} for r in rows(out)] == \
        [{k: r[k] for k in COMPARED} for r in rows(ref)]


def test_sigint_under_torchrun_saves_and_resumes(npz, two, tmp_path):
    """Ctrl-C to `--nproc 2` exits 130 with one line; --resume then ends bit-equal to the
    uninterrupted two-process run."""
    out = tmp_path / "run"
    args = [sys.executable, "-m", "qtrain", *BASE, "--data", str(npz), "--epochs", str(EPOCHS),
            "--out", str(out), "--nproc", "2"]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env(), cwd=REPO, start_new_session=True)
    deadline = time.monotonic() + 180
    while not (out / "metrics.jsonl").is_file() and time.monotonic() < deadline:
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGINT)  # as a terminal does: the launcher and both workers
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("qtrain: interrupted at epoch"), err
    assert "--resume" in lines[0] and "train_state.pt" in lines[0]
    assert len(rows(out)) < EPOCHS, "the run ended before the signal: nothing was tested"
    done = run([*BASE, "--data", npz, "--epochs", EPOCHS, "--out", out, "--nproc", "2", "--resume"])
    assert done.returncode == 0, done.stderr
    ref = two[0]
    assert (out / "compressed.safetensors").read_bytes() == (ref / "compressed.safetensors").read_bytes()
    assert [r["train_loss"] for r in rows(out)] == [r["train_loss"] for r in rows(ref)]


def test_worker_error_is_one_line(tmp_path, check_error):
    """An error inside the workers (--qubits 40) is one stderr line from rank 0, exit 2."""
    proc = run(["compress", "--qubits", "40", "--nproc", "2", "--out", tmp_path / "run"])
    check_error(proc.returncode, proc.stderr, "--qubits 40", "GiB")
    assert proc.returncode == 2 and not (tmp_path / "run").exists()


def test_nproc_errors(capsys, monkeypatch, check_error):
    """--nproc 0, --nproc against torchrun's size, and CUDA without GPUs are one-line errors."""
    rc = main(["compress", "--nproc", "0"])
    check_error(rc, capsys.readouterr().err, "--nproc 0")
    if not torch.cuda.is_available():
        rc = main(["compress", "--nproc", "2", "--device", "cuda"])
        check_error(rc, capsys.readouterr().err, "CUDA", "--device cpu")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    rc = main(["compress", "--nproc", "3"])
    check_error(rc, capsys.readouterr().err, "--nproc 3", "2 processes")


def test_two_processes_match_one_under_distillation(npz, tmp_path):
    """--distill under --nproc 2: each rank's share of the teacher term adds up to the
    one-process loss, as the label loss does."""
    from qtrain.baseline import train_classical
    from qtrain.data import load_data
    from qtrain.models import mlp

    torch.manual_seed(0)
    net = mlp(hidden=8)
    train_classical(net, *load_data(str(npz)), 10, 15, 1e-2, 0)
    teacher = tmp_path / "teacher.pt"
    torch.save(net.state_dict(), teacher)
    args = [*BASE[:1], str(teacher), *BASE[1:], "--distill", "--data", str(npz), "--epochs", "6"]
    assert main([*args, "--out", str(tmp_path / "one")]) == 0
    proc = run([*args, "--out", tmp_path / "two", "--nproc", "2"])
    assert proc.returncode == 0, proc.stderr
    one, par = rows(tmp_path / "one"), rows(tmp_path / "two")
    for a, b in zip(one, par, strict=True):
        for key in COMPARED:
            assert b[key] == pytest.approx(a[key], rel=1e-5, abs=1e-7), (a["epoch"], key)
    assert one[-1]["train_loss"] < one[0]["train_loss"]
