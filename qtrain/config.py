"""Dataclass configs, versioned, serialised as ``{_type, _version, _data}`` (as torchao does)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from .circuits import ANSATZE
from .errors import QTrainError

SCALINGS = ("tensor", "none")
ACTIVATIONS = ("relu", "gelu", "tanh", "none")
BACKENDS = ("native", "pennylane")
DEVICES = ("cpu", "cuda", "mps")
SCHEDULES = ("plateau", "cosine")
GRADS = ("backprop", "parameter-shift", "spsa", "finite-diff")
TASKS = ("auto", "classification", "regression")
INITS = ("scratch", "fit")


def _choice(value, options, flag):
    if value not in options:
        raise QTrainError(f"unknown {flag} {value!r}: use one of {', '.join(options)}")


PRECISIONS = ("exact", "fast")  # --circuit-precision


@dataclass
class QTConfig:
    """How the weights are generated: sizing, circuit, mapping and post-processing.

    Attributes:
        qubits: circuit width n; ``None`` picks ceil(log2 ceil(M / chunk)).
        chunk: weights emitted per basis state k; ``None`` picks the smallest k with 2^n * k >= M.
        ansatz: ``ry`` (RY layer + CNOT ring) or ``u3`` (U3 layer + CU3 ring).
        blocks: circuit depth L.
        mapping_hidden: hidden widths of the mapping MLP.
        mapping_act: activation between mapping layers: relu, gelu, tanh or none.
        scaling: ``tensor`` standardises each generated tensor and applies a learnable gain
            (initialised to the tensor's init std) and shift; ``none`` is the toolkit's recipe.
        gamma, beta, alpha: probability post-processing x = (beta * tanh(gamma 2^(n-1) p))^alpha.
        include, exclude: glob patterns on parameter names choosing what is generated.
        freeze_rest: keep the parameters that are not generated frozen at the model's values
            (stored, never trained) instead of training them classically.
        backend: ``native`` (torch statevector) or ``pennylane`` (a QNode on ``pl_device``).
        pl_device: the PennyLane device name for the pennylane backend.
        max_auto_qubits: the widest circuit chosen when both qubits and chunk are automatic.
        grad: how the angles' gradient is obtained: ``backprop`` (autograd through the
            simulator), ``parameter-shift`` (exact shift rules), ``spsa`` or ``finite-diff``
            (central differences, for debugging). See :mod:`qtrain.gradients`.
        shots: measurements per circuit; ``None`` gives exact probabilities. Needs ``grad``
            ``parameter-shift`` or ``spsa``.
        spsa_c, spsa_gamma: SPSA perturbation size c_k = spsa_c / (k + 1) ** spsa_gamma at
            optimizer step k (Spall's gain sequence).
        spsa_samples: Rademacher perturbations averaged per SPSA estimate.
        fd_step: the step h of ``finite-diff``.
        pl_options: keyword options passed through to ``qml.device`` (pennylane backend).
        sample_seed: seeds shot sampling and SPSA perturbations; ``None`` uses
            ``torch.initial_seed()``, which ``--seed`` sets.
        circuit_precision: ``exact`` runs the native ``ry`` circuit in float64 up to 16 qubits
            whatever the model's dtype, so that backprop trains like exact parameter-shift;
            ``fast`` runs it in the model's dtype (about 30% faster in float32).
    """

    qubits: int | None = None
    chunk: int | None = None
    ansatz: str = "ry"
    blocks: int = 8
    mapping_hidden: tuple[int, ...] = (20,)
    mapping_act: str = "gelu"
    scaling: str = "tensor"
    gamma: float = 0.1
    beta: float = 0.8
    alpha: float = 0.3
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    freeze_rest: bool = False
    backend: str = "native"
    pl_device: str = "default.qubit"
    max_auto_qubits: int = 20
    grad: str = "backprop"
    shots: int | None = None
    spsa_c: float = 0.1
    spsa_gamma: float = 0.101
    spsa_samples: int = 1
    fd_step: float = 1e-4
    pl_options: dict = field(default_factory=dict)
    sample_seed: int | None = None
    circuit_precision: str = "exact"

    def __post_init__(self):
        self.mapping_hidden = tuple(int(h) for h in self.mapping_hidden)
        self.include, self.exclude = tuple(self.include), tuple(self.exclude)
        _choice(self.ansatz, ANSATZE, "--ansatz")
        _choice(self.mapping_act, ACTIVATIONS, "--mapping-act")
        _choice(self.scaling, SCALINGS, "--scaling")
        _choice(self.backend, BACKENDS, "--backend")
        _choice(self.circuit_precision, PRECISIONS, "--circuit-precision")
        if any(h < 1 for h in self.mapping_hidden):
            raise QTrainError("--mapping-hidden widths must be positive integers, e.g. 4,20,4")
        if self.blocks < 1:
            raise QTrainError(f"--blocks {self.blocks} must be at least 1")
        if self.chunk is not None and self.chunk < 1:
            raise QTrainError(f"--chunk {self.chunk} must be at least 1")
        self._check_gradient()

    def _check_gradient(self):
        _choice(self.grad, GRADS, "--grad")
        if self.shots is not None:
            if self.shots < 1:
                raise QTrainError(f"--shots {self.shots} must be at least 1 (leave it out for exact "
                                  "probabilities)")
            if self.grad not in ("parameter-shift", "spsa"):
                why = ("backprop cannot differentiate a sample" if self.grad == "backprop" else
                       "a difference of sampled probabilities over a small step is mostly shot noise")
                raise QTrainError(f"--shots cannot be used with --grad {self.grad} ({why}): use "
                                  "--grad parameter-shift or --grad spsa")
        if self.spsa_samples < 1:
            raise QTrainError(f"--spsa-samples {self.spsa_samples} must be at least 1")
        if self.spsa_c <= 0 or self.fd_step <= 0 or self.spsa_gamma < 0:
            raise QTrainError("--spsa-c and --fd-step must be positive and --spsa-gamma non-negative")


@dataclass
class TrainConfig:
    """How the trainable Quantum-Train parameters are optimised.

    Attributes:
        epochs: passes over the training split.
        batch_size: examples per optimizer step.
        lr: Adam learning rate.
        weight_decay: Adam weight decay.
        clip: max gradient norm (``0`` disables clipping).
        seed: seeds initialisation and data order.
        device: ``cpu``, ``cuda`` or ``mps``.
        schedule: ``plateau`` (ReduceLROnPlateau on the training loss) or ``cosine``
            (annealed to zero over the epochs).
        patience, factor: the plateau schedule's settings.
        quiet: no progress bars.
        compile: run the ry circuit with qtrain's C++ kernel (``--compile``; built once with the
            machine's C++ compiler and cached), on the CPU with the native backend.
        compile_network: run the training step's network on the generated weights through
            ``torch.compile`` (``--compile-network``); the first steps compile.
    """

    epochs: int = 50
    batch_size: int = 64
    lr: float = 2e-2
    weight_decay: float = 0.0
    clip: float = 10.0
    seed: int = 0
    device: str = "cpu"
    schedule: str = "cosine"
    patience: int = 5
    factor: float = 0.5
    quiet: bool = False
    compile: bool = False
    compile_network: bool = False

    def __post_init__(self):
        _choice(self.device, DEVICES, "--device")
        _choice(self.schedule, SCHEDULES, "--schedule")
        if self.epochs < 1 or self.batch_size < 1:
            raise QTrainError("--epochs and --batch-size must be at least 1")
        if self.lr <= 0:
            raise QTrainError(f"--lr {self.lr} must be positive")


@dataclass
class DistillConfig:
    """Learning from the trained MODEL's outputs (knowledge distillation).

    The loss is ``alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T)) +
    (1 - alpha) * label loss``; regression models use the MSE to the teacher's outputs in place
    of the KL term. Without labels in the data the teacher's predictions are the labels.

    Attributes:
        enabled: distil from the model (``--distill``).
        alpha: the weight of the teacher term (``--distill-alpha``); ``1`` ignores the labels.
        temperature: T, softening both distributions (``--temperature``).
        task: ``classification`` or ``regression`` for data without labels; ``auto`` takes
            classification when the model outputs more than one value per example.
    """

    enabled: bool = False
    alpha: float = 0.5
    temperature: float = 2.0
    task: str = "auto"

    def __post_init__(self):
        _choice(self.task, TASKS, "--task")
        if not 0.0 <= self.alpha <= 1.0:
            raise QTrainError(f"--distill-alpha {self.alpha} must lie in [0, 1]: 1 learns only "
                              "from the model's outputs, 0 only from the labels")
        if self.temperature <= 0:
            raise QTrainError(f"--temperature {self.temperature} must be positive, e.g. 2")


@dataclass
class InitConfig:
    """How the angles and the mapping start.

    Attributes:
        init: ``scratch`` (random angles and mapping) or ``fit``: first fit them so that the
            generated weights approximate the trained MODEL's weights (``--init fit``).
        fit_steps: Adam steps of that fit (``--fit-steps``).
        fit_lr: the fit's Adam learning rate, annealed to zero by a cosine (``--fit-lr``).
    """

    init: str = "scratch"
    fit_steps: int = 500
    fit_lr: float = 2e-2

    def __post_init__(self):
        _choice(self.init, INITS, "--init")
        if self.fit_steps < 1:
            raise QTrainError(f"--fit-steps {self.fit_steps} must be at least 1")
        if self.fit_lr <= 0:
            raise QTrainError(f"--fit-lr {self.fit_lr} must be positive")


# ``qtrain compress`` option name -> field, for the configs whose fields are named otherwise
DISTILL_OPTS = {"distill": "enabled", "distill_alpha": "alpha", "temperature": "temperature",
                "task": "task"}
INIT_OPTS = {"init": "init", "fit_steps": "fit_steps", "fit_lr": "fit_lr"}


@dataclass
class CompressConfig:
    """Everything :func:`qtrain.compress` needs besides the model and the data."""

    qt: QTConfig = field(default_factory=QTConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    init: InitConfig = field(default_factory=InitConfig)


_TYPES = {cls.__name__: cls for cls in (QTConfig, TrainConfig, DistillConfig, InitConfig,
                                        CompressConfig)}
VERSION = 1


def to_dict(cfg) -> dict[str, Any]:
    """Serialise a config dataclass as ``{_type, _version, _data}``."""
    data = {}
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        data[f.name] = to_dict(value) if dataclasses.is_dataclass(value) else (
            list(value) if isinstance(value, tuple) else value)
    return {"_type": type(cfg).__name__, "_version": VERSION, "_data": data}


def from_dict(obj: dict[str, Any]):
    """Rebuild a config from :func:`to_dict` output; only qtrain's own config types load."""
    kind = obj.get("_type")
    if kind not in _TYPES:
        raise QTrainError(f"unknown config type {kind!r}: expected one of {', '.join(_TYPES)}")
    if obj.get("_version", 0) > VERSION:
        raise QTrainError(f"config version {obj['_version']} is newer than this qtrain: upgrade it")
    cls = _TYPES[kind]
    names = {f.name for f in dataclasses.fields(cls)}
    data = {k: (from_dict(v) if isinstance(v, dict) and "_type" in v else v)
            for k, v in obj["_data"].items() if k in names}
    return cls(**data)
