"""Data-parallel training under torchrun: the process group, each rank's share of every global
batch, one all-reduce per step, and the ``--nproc`` launcher.

Every rank generates the weights itself (the angles are the same everywhere, so the weights are
too); only the gradients of the trainable Quantum-Train parameters cross ranks. They are summed
by hand in one flat all-reduce per step rather than through DistributedDataParallel:

- each rank weighs its loss by its share of the global batch, so a sum of gradients equals the
  single-process gradient exactly, even for a ragged last batch that leaves a rank empty;
- the same all-reduce carries the batch loss and a stop flag, so all ranks agree on a NaN stop
  and on Ctrl-C at the same step;
- the parameters are tiny (hundreds to thousands of numbers), so DDP's bucketing and overlap
  would buy nothing, and the target network, run on the generated weights (:mod:`qtrain.swap`),
  is not a submodule.
"""

from __future__ import annotations

import logging
import math
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from torch.utils.data import Dataset, DistributedSampler, TensorDataset, default_collate

from .errors import QTrainError


def env_rank() -> int:
    """This process's global rank under torchrun (0 outside it)."""
    return int(os.environ.get("RANK", "0"))


def env_world() -> int:
    """The number of processes torchrun started (1 outside it)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


@dataclass(frozen=True)
class Context:
    """Where this process stands: its rank and the world size."""

    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        """Rank 0: the only one that logs, shows progress and writes files."""
        return self.rank == 0

    @property
    def parallel(self) -> bool:
        return self.world > 1


def current() -> Context:
    """The process group's rank and size, or a single process when there is none."""
    if dist.is_available() and dist.is_initialized():
        return Context(dist.get_rank(), dist.get_world_size())
    return Context()


def check_devices(device: str, nproc: int) -> None:
    """Refuse a device that cannot host ``nproc`` processes on this machine."""
    if device == "cuda":
        if not torch.cuda.is_available():
            raise QTrainError("--device cuda was asked for, but no CUDA GPU is visible: use --device cpu")
        count = torch.cuda.device_count()
        if nproc > count:
            raise QTrainError(f"{nproc} processes with --device cuda need {nproc} GPUs (one each), "
                              f"but {count} is visible: use --nproc {count} or --device cpu")
    elif device == "mps" and nproc > 1:
        raise QTrainError("several processes on --device mps are not supported: use --nproc 1")


def setup(device: str) -> Context:
    """Join torchrun's process group: gloo on CPU, nccl on CUDA (one GPU per local rank).

    A no-op outside torchrun, or when the group already exists (the caller's own).
    """
    if env_world() <= 1 or not dist.is_available() or dist.is_initialized():
        return current()
    local = int(os.environ.get("LOCAL_RANK", "0"))
    check_devices(device, int(os.environ.get("LOCAL_WORLD_SIZE", env_world())))
    if device == "cuda":
        torch.cuda.set_device(local)
        dist.init_process_group("nccl", device_id=torch.device("cuda", local))
    else:
        dist.init_process_group("gloo")
    _OWNED.append(True)
    return current()


_OWNED: list[bool] = []  # whether setup() made the process group (then finish() ends it)


def finish() -> None:
    """Wait for every rank (rank 0 writes last), then end the process group that
    :func:`setup` made. Ranks that left without this could abort their peers at exit."""
    if _OWNED and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
        _OWNED.clear()


# ----------------------------------------------------------------------------- data


def shard(n: int, batch_size: int, epoch: int, seed: int, ctx: Context) -> list[torch.Tensor]:
    """This rank's dataset indices for every global batch of an epoch.

    The order is DistributedSampler's (a permutation seeded with ``seed + epoch``, advanced by
    ``set_epoch``), so it is the same for any number of processes. Global batch k holds the
    positions [kB, (k+1)B) of that order, and a rank takes the positions equal to its rank mod
    the world size: DistributedSampler's own rule, without the padding it adds to even out the
    ranks, which would count some examples twice. A short last batch may leave a rank empty.
    """
    sampler = DistributedSampler(range(n), num_replicas=ctx.world, rank=ctx.rank, shuffle=True,
                                 seed=seed, drop_last=False)
    sampler.set_epoch(epoch)
    mine = torch.tensor(list(sampler)[: len(range(ctx.rank, n, ctx.world))], dtype=torch.long)
    steps = math.ceil(n / batch_size)
    position = ctx.rank + ctx.world * torch.arange(len(mine))
    sizes = torch.bincount(position // batch_size, minlength=steps)
    return list(torch.split(mine, sizes.tolist()))


def fetch(ds: Dataset, idx: torch.Tensor, device) -> tuple[torch.Tensor, ...]:
    """The examples ``idx`` of ``ds`` as one batch on ``device`` (a TensorDataset is sliced):
    every column, (input, target, ...)."""
    if isinstance(ds, TensorDataset):
        return tuple(t[idx].to(device) for t in ds.tensors)
    return tuple(t.to(device) for t in default_collate([ds[int(i)] for i in idx]))


def eval_part(ds: Dataset, ctx: Context) -> Dataset:
    """This rank's share of an evaluation set (every world-th example from its rank)."""
    if not ctx.parallel:
        return ds
    if isinstance(ds, TensorDataset):
        return TensorDataset(*(t[ctx.rank::ctx.world] for t in ds.tensors))
    return torch.utils.data.Subset(ds, range(ctx.rank, len(ds), ctx.world))


# ----------------------------------------------------------------------------- collectives


def reduce_step(params: list[torch.Tensor], loss: torch.Tensor, stop: bool) -> tuple[float, bool]:
    """Sum the gradients, the (share-weighted) loss and the stop flag over ranks, in place.

    Returns the global batch loss and whether any rank asked to stop.
    """
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    extra = torch.stack([loss.detach().reshape(()).to(grads[0].dtype),
                         torch.tensor(float(stop), dtype=grads[0].dtype, device=grads[0].device)])
    flat = torch.cat([g.reshape(-1) for g in grads] + [extra])
    dist.all_reduce(flat)
    offset = 0
    for p in params:
        part = flat[offset: offset + p.numel()].view_as(p)
        if p.grad is None:
            p.grad = part.clone()
        else:
            p.grad.copy_(part)
        offset += p.numel()
    return float(flat[-2]), bool(flat[-1] > 0)


def all_sum(values: list[float], device) -> list[float]:
    """Sum a few numbers over ranks (float64)."""
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def broadcast(tensors, src: int = 0) -> None:
    """Copy rank ``src``'s tensors (parameters, buffers) to every rank, in place."""
    with torch.no_grad():
        for t in tensors:
            dist.broadcast(t.data, src)


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


# ----------------------------------------------------------------------------- launcher


def _without_nproc(argv: list[str]) -> list[str]:
    """``argv`` less ``--nproc N``: the workers learn the world size from torchrun (and
    torchrun's own parser would take ``--nproc`` for an ambiguous ``--nproc-per-node``)."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--nproc":
            skip = True
        elif not arg.startswith("--nproc="):
            out.append(arg)
    return out


def launch(nproc: int, argv: list[str]) -> int:
    """Run ``python -m qtrain ARGV`` in ``nproc`` processes under torchrun, on this machine.

    torchrun's own launcher runs in this process (``--standalone``: a free local port), so its
    failures are reported as one line. Rank 0 reports its own errors; the exit code is rank 0's.
    """
    from torch.distributed import run as torchrun
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    if not os.environ.get("QTRAIN_DEBUG"):
        for name in ("torch.distributed", "torch.distributed.elastic", "torch.distributed.run"):
            log = logging.getLogger(name)
            log.addHandler(logging.NullHandler())
            log.propagate = False
    args = torchrun.parse_args(["--standalone", "--nproc-per-node", str(nproc),
                                "-m", "qtrain", *_without_nproc(argv)])
    reported = Path(tempfile.mkdtemp(prefix="qtrain-")) / "reported"
    os.environ["QTRAIN_REPORTED"] = str(reported)  # rank 0 touches it once it has said why
    try:
        torchrun.run(args)
    except ChildFailedError as exc:
        failures = exc.failures
        if 0 in failures and failures[0].exitcode > 0:
            return failures[0].exitcode  # rank 0 has printed its own one-line error
        if reported.exists():  # rank 0 said why, then was stopped with the others
            return 1
        rank = min(failures, key=lambda r: (failures[r].timestamp, r))  # the first to fail
        code = failures[rank].exitcode
        how = f"was killed by signal {-code}" if code < 0 else f"exited with code {code}"
        print(f"qtrain: error: worker rank {rank} {how} (set QTRAIN_DEBUG=1 to see the output "
              "of every rank)", file=sys.stderr)
        return 1
    except SignalException as exc:
        return 128 + int(exc.sigval)
    finally:
        os.environ.pop("QTRAIN_REPORTED", None)
        reported.unlink(missing_ok=True)
        reported.parent.rmdir()
    return 0
