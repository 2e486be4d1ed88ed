"""``--compile`` and ``--compile-network``: the training step's compiled paths.

``--compile`` runs the ry circuit with qtrain's C++ kernel (:mod:`qtrain.native_kernel`: the
probabilities and the adjoint gradient, built once with the machine's C++ compiler and cached),
2.3-3x faster than the torch simulator at 4-20 qubits and equal to it to rounding.
The same library holds the generator's kernel (:mod:`qtrain.mapping_kernel`): the post-processing,
a mapping with one hidden layer and the per-tensor standardisation, forward and backward; equal to
the torch path to float32 rounding. Where the two cover the generator whole (the defaults), it
runs as one autograd node from the angles to the target's tensors
(:mod:`qtrain.generator_kernel`). Toolkit MNIST CNN, batch 128 of MNIST images, one thread: the
training step costs ~0.7 ms more than the classical step's ~6 ms, against ~3 ms eager
(benchmarks/bench_step.py).

``--compile-network`` runs the target network on the generated weights (``functional_call``)
through ``torch.compile``. The generator is excluded (:meth:`WeightGenerator.forward` is marked
``torch.compiler.disable``): its hand-fused autograd Functions measured faster eager than
Inductor's code for them (toolkit MNIST CNN, batch 128 of noise, one thread: QT step 9.4 ms with
the whole forward compiled, 9.1 ms with the generator eager), and Inductor's form of the circuit
was slower than the torch simulator (benchmarks/bench_circuit.py). Whether compiling the network
pays depends on the network and the data (benchmarks/bench_step.py: on real MNIST images the
toolkit CNN runs slower compiled). Evaluation stays eager: it runs once per epoch.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable

import torch

from .errors import QTrainError
from .quantum_train import QuantumTrain


def use_compiled_kernel(qt: QuantumTrain, device: torch.device) -> None:
    """Switch ``qt``'s circuit to the C++ ry kernel, building it first if needed.

    Raises:
        QTrainError: the run has no circuit the kernel can run (another backend or ansatz, or
            a device other than the CPU), or the kernel cannot be built.
    """
    from . import native_kernel

    cfg = qt.config
    if cfg.backend != "native":
        raise QTrainError("--compile speeds up the native simulator, and --backend pennylane runs "
                          "PennyLane's own: drop --compile")
    if qt.circuit.ansatz != "ry":
        raise QTrainError(f"--compile has a kernel for the ry ansatz only ({qt.circuit.ansatz} runs "
                          "on the torch simulator): drop --compile, or use --ansatz ry")
    if device.type != "cpu":
        raise QTrainError(f"--compile builds a CPU kernel, and on {device.type} the circuit already "
                          "runs on the device: drop --compile")
    native_kernel.load()
    qt.generator.estimator.simulator.compiled = True
    qt.generator.compiled = True  # the post-processing and the mapping by qtrain.mapping_kernel


def _check_compiler(device: torch.device) -> None:
    """Inductor builds CPU kernels with a C++ compiler: say so now, not at the first step."""
    if device.type != "cpu":
        return
    from torch._inductor import config as inductor

    cxx = os.environ.get("CXX") or inductor.cpp.cxx[-1] or "g++"
    if shutil.which(cxx) is None:
        raise QTrainError(f"--compile-network on the CPU needs a C++ compiler ({cxx!r} not found): "
                          "install one (e.g. apt install g++, or set CXX), or drop --compile-network")


def compile_network(qt: QuantumTrain, device: torch.device) -> Callable[..., torch.Tensor]:
    """``qt``'s forward pass with its network compiled by ``torch.compile``, for the training
    step. The first compiled step takes seconds (again for each new batch shape).
    """
    _check_compiler(device)
    return torch.compile(qt)
