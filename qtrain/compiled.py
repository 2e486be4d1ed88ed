"""``--compile``: the training step's forward and backward through ``torch.compile``.

What is compiled is the target network run on the generated weights (``functional_call``) and
the split of the flat weight vector into tensors. The generator (circuit, post-processing,
mapping) is excluded (:meth:`WeightGenerator.forward` is marked ``torch.compiler.disable``): its
hand-fused autograd Functions measured faster eager than Inductor's code for them (toolkit MNIST
CNN, batch 128 of noise, one thread: QT step 9.4 ms with the whole forward compiled, 9.1 ms with
the generator eager), and Inductor's form of the circuit was slower than the native simulator
(benchmarks/bench_circuit.py --compile). Whether compiling the network pays depends on the
network and the data (benchmarks/bench_step.py --compile: on real MNIST images the toolkit CNN
runs slower compiled). Evaluation stays eager: it runs once per epoch, and compiling it would
only add graphs.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable

import torch

from .errors import QTrainError
from .quantum_train import QuantumTrain


def _check_compiler(device: torch.device) -> None:
    """Inductor builds CPU kernels with a C++ compiler: say so now, not at the first step."""
    if device.type != "cpu":
        return
    from torch._inductor import config as inductor

    cxx = os.environ.get("CXX") or inductor.cpp.cxx[-1] or "g++"
    if shutil.which(cxx) is None:
        raise QTrainError(f"--compile on the CPU needs a C++ compiler ({cxx!r} not found): "
                          "install one (e.g. apt install g++, or set CXX), or drop --compile")


def compile_step(qt: QuantumTrain, device: torch.device) -> Callable[..., torch.Tensor]:
    """``qt``'s forward pass as compiled by ``torch.compile``, for the training step.

    The first compiled step takes seconds (again for each new batch shape); the later ones are
    faster than eager.
    """
    _check_compiler(device)
    return torch.compile(qt)
