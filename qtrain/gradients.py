"""How the circuit's gradient is obtained: backprop, parameter-shift, SPSA or finite differences,
with exact or finite-shot probabilities, and a count of the circuits run.

Every method but ``backprop`` joins autograd through :class:`CircuitFunction`: its forward runs
the circuit once, its backward receives the upstream gradient g = dL/dp and returns dL/dtheta =
J^T g, where J = dp/dtheta is estimated from extra circuit runs. All the extra runs of one
backward (every shifted or perturbed angle set) are stacked into one (R, P) batch and simulated
in one call (split only past :data:`MAX_AMPLITUDES`). The forward run uses the angles' dtype,
so its probabilities are bit for bit those that backprop computes; the extra runs use float64
whatever the angles' dtype, so that the gradient is not limited by float32 rounding (finite
differences need it, and a float32 forward with a float64 gradient reproduces backprop's
float32 training losses to about 1e-6 over two digits epochs, where a float64 forward drifts by
1e-4: the post-processing's p^0.3 magnifies the forward's rounding).

Shift rules (all exact, for any angles):

- RY, and each of U3's theta, phi, lambda (U3 = e^{i(phi+lam)/2} RZ(phi) RY(theta) RZ(lam)):
  the two-term rule df/dx = [f(x + pi/2) - f(x - pi/2)] / 2.
- CU3(theta, phi, lam) is used through its decomposition CPhase(phi) CRY(theta) CPhase(lam),
  each gate owning one parameter. CPhase's generator |11><11| has eigenvalues {0, 1}, one
  frequency, so phi and lam take the same two-term rule. CRY's generator |1><1| (x) Y/2 has
  eigenvalues {0, +-1/2}, two frequencies, so theta takes the four-term rule
  df/dx = c+ [f(x + pi/2) - f(x - pi/2)] - c- [f(x + 3pi/2) - f(x - 3pi/2)],
  c+- = (sqrt 2 +- 1) / (4 sqrt 2).

So ``ry`` costs 2P circuits per gradient, and ``u3`` 14n per block (against 12n if every
parameter took two terms).

SPSA (Spall 1992, 1998): at optimizer step k, c_k = c / (k + 1)^gamma (gamma = 0.101); for S
Rademacher vectors Delta_s the estimate is mean_s [g.p(theta + c_k Delta_s) - g.p(theta -
c_k Delta_s)] / (2 c_k) Delta_s, 2S circuits whatever P. Spall's step-size sequence a_k is not
used: the optimizer (Adam and its learning-rate schedule) sets the step.
"""

from __future__ import annotations

import math

import torch

from .circuits import Circuit
from .config import QTConfig
from .shots import sample_probs

MAX_AMPLITUDES = 2**22  # per simulator call: rows x 2^n, about 64 MiB of complex128 amplitudes
_C_PLUS = (math.sqrt(2) + 1) / (4 * math.sqrt(2))
_C_MINUS = (math.sqrt(2) - 1) / (4 * math.sqrt(2))
TWO_TERM = ((math.pi / 2, 0.5), (-math.pi / 2, -0.5))
FOUR_TERM = ((math.pi / 2, _C_PLUS), (-math.pi / 2, -_C_PLUS),
             (3 * math.pi / 2, -_C_MINUS), (-3 * math.pi / 2, _C_MINUS))


def shift_rules(circuit: Circuit) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The parameter-shift recipe as three (R,) tensors: angle index, shift and coefficient.

    dp/dtheta_j = sum over the rows r with index[r] = j of coeff[r] p(theta + shift[r] e_j).
    """
    rules = [TWO_TERM] * circuit.num_angles
    if circuit.ansatz == "u3":
        kinds = torch.zeros(circuit.blocks, 2, circuit.qubits, 3, dtype=torch.bool)
        kinds[:, 1, :, 0] = True  # the theta of each CU3: a controlled rotation
        rules = [FOUR_TERM if k else TWO_TERM for k in kinds.reshape(-1).tolist()]
    index = [j for j, rule in enumerate(rules) for _ in rule]
    shift = [s for rule in rules for s, _ in rule]
    coeff = [c for rule in rules for _, c in rule]
    return (torch.tensor(index), torch.tensor(shift, dtype=torch.float64),
            torch.tensor(coeff, dtype=torch.float64))


def difference_rules(num_angles: int, step: float):
    """Central differences in the same form as :func:`shift_rules`: +-h with +-1/(2h)."""
    index = torch.arange(num_angles).repeat_interleave(2)
    shift = torch.tensor([step, -step], dtype=torch.float64).repeat(num_angles)
    coeff = torch.tensor([0.5 / step, -0.5 / step], dtype=torch.float64).repeat(num_angles)
    return index, shift, coeff


def spsa_gain(c: float, gamma: float, step: int) -> float:
    """Spall's perturbation size c_k = c / (k + 1)^gamma at optimizer step k (from 0)."""
    return c / (step + 1) ** gamma


class CircuitFunction(torch.autograd.Function):
    """Probabilities of one angle set, with the angle gradient from an estimator's extra runs."""

    @staticmethod
    def forward(ctx, angles, estimator, plan):
        ctx.estimator, ctx.plan = estimator, plan
        ctx.save_for_backward(angles)
        return estimator.measure(angles.detach()[None])[0]

    @staticmethod
    def backward(ctx, grad_p):
        (angles,) = ctx.saved_tensors
        grad = ctx.estimator.vjp(angles.detach().double(), grad_p.double(), ctx.plan)
        return grad.to(angles.dtype), None, None


class NativeEstimator:
    """Runs the native simulator for a :class:`~qtrain.generator.WeightGenerator`: the
    probabilities (exact or sampled), the angle gradient by ``cfg.grad``, and the counts.

    Args:
        circuit: the ansatz and its size.
        cfg: ``grad``, ``shots`` and the SPSA and finite-difference settings.
        simulator: an object with ``probs(angles (B, P)) -> (B, 2^n)``.
        seed: seeds the shot sampler and the SPSA perturbations (two separate streams).

    Attributes:
        executions: circuits run so far (each row of every batch, forward and gradient).
        shots_used: measurements taken so far (executions x shots; 0 when exact).
        step: differentiable forward passes so far, that is, optimizer steps (SPSA's k).
        calls: simulator calls so far (one per forward, one per gradient, unless split).
    """

    def __init__(self, circuit: Circuit, cfg: QTConfig, simulator, seed: int):
        self.circuit, self.cfg, self.simulator = circuit, cfg, simulator
        self.shots = cfg.shots
        self.executions = self.shots_used = self.step = self.calls = 0
        self.sampler = torch.Generator().manual_seed(seed)
        self.perturber = torch.Generator().manual_seed((seed + 1) % 2**63)
        self._rules = None

    def __call__(self, angles: torch.Tensor) -> torch.Tensor:
        """Probabilities of ``angles`` (P,), differentiable by the configured method."""
        train = torch.is_grad_enabled() and angles.requires_grad
        if self.cfg.grad == "backprop":
            self._count(1)
            return self.simulator.probs(angles)
        if not train:
            return self.measure(angles.detach()[None])[0]
        plan = self._spsa_plan() if self.cfg.grad == "spsa" else None
        self.step += 1
        return CircuitFunction.apply(angles, self, plan)

    def _count(self, rows: int) -> None:
        self.executions += rows
        self.shots_used += rows * (self.shots or 0)

    def measure(self, rows: torch.Tensor) -> torch.Tensor:
        """Probabilities of a batch of angle sets (R, P): exact, or sampled with ``shots``."""
        per_call = max(1, MAX_AMPLITUDES // self.circuit.dim)
        parts = []
        for start in range(0, rows.shape[0], per_call):
            self.calls += 1
            parts.append(self.simulator.probs(rows[start: start + per_call]))
        p = torch.cat(parts) if len(parts) > 1 else parts[0]
        self._count(rows.shape[0])
        return sample_probs(p, self.shots, self.sampler) if self.shots else p

    def _spsa_plan(self) -> tuple[float, torch.Tensor]:
        c = spsa_gain(self.cfg.spsa_c, self.cfg.spsa_gamma, self.step)
        signs = torch.randint(0, 2, (self.cfg.spsa_samples, self.circuit.num_angles),
                              generator=self.perturber)
        return c, signs.double() * 2 - 1

    def rules(self, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if self._rules is None:
            if self.cfg.grad == "parameter-shift":
                self._rules = shift_rules(self.circuit)
            else:
                self._rules = difference_rules(self.circuit.num_angles, self.cfg.fd_step)
        return tuple(t.to(device) for t in self._rules)

    def vjp(self, angles: torch.Tensor, grad_p: torch.Tensor, plan) -> torch.Tensor:
        """g^T dp/dtheta for angles (P,) and the upstream gradient g (2^n,), in float64."""
        if self.cfg.grad == "spsa":
            c, delta = plan
            delta = delta.to(angles.device)
            rows = torch.cat([angles + c * delta, angles - c * delta])
            v = self.measure(rows) @ grad_p
            s = delta.shape[0]
            return (((v[:s] - v[s:]) / (2 * c))[:, None] * delta).mean(0)
        index, shift, coeff = self.rules(angles.device)
        rows = angles.repeat(index.numel(), 1)
        rows[torch.arange(index.numel(), device=angles.device), index] += shift
        v = self.measure(rows) @ grad_p
        return torch.zeros_like(angles).index_add_(0, index, coeff * v)


class PennyLaneEstimator:
    """The pennylane backend: the QNode's own ``diff_method`` and shots, with the counts.

    ``backprop`` maps to PennyLane's ``best`` (backprop where the device supports it, else its
    exact device method); ``parameter-shift`` runs with ``broadcast=True`` so that the shifted
    circuits of each parameter go to the device as one broadcast tape, and all of them as one
    batch; ``finite-diff`` is central with step ``fd_step``; ``spsa`` is PennyLane's ``spsa_grad``
    with h = c_k set each step and our Rademacher directions, so that both backends draw the same
    perturbations from the same seed.

    Args:
        circuit: the ansatz and its size.
        cfg: ``pl_device``, ``pl_options``, ``grad``, ``shots`` and the method settings.
        seed: seeds the device's sampler and the SPSA perturbations.
    """

    def __init__(self, circuit: Circuit, cfg: QTConfig, seed: int):
        from .pennylane_backend import PennyLaneSimulator

        self.circuit, self.cfg = circuit, cfg
        self.shots = cfg.shots
        self.step = 0
        self.perturber = torch.Generator().manual_seed((seed + 1) % 2**63)
        self._directions = None
        method = {"backprop": "best"}.get(cfg.grad, cfg.grad)
        kwargs: dict = {}
        if cfg.grad == "parameter-shift":
            kwargs = {"broadcast": True}
        elif cfg.grad == "finite-diff":
            kwargs = {"h": cfg.fd_step, "approx_order": 2, "strategy": "center"}
        elif cfg.grad == "spsa":
            kwargs = {"h": cfg.spsa_c, "num_directions": cfg.spsa_samples, "sampler": self._sample}
        self.simulator = PennyLaneSimulator(circuit, cfg.pl_device, method, shots=cfg.shots,
                                            seed=seed, gradient_kwargs=kwargs, **cfg.pl_options)
        self._order = self.simulator.tape_order()

    @property
    def executions(self) -> int:
        return self.simulator.counter.executions

    @property
    def shots_used(self) -> int:
        return self.simulator.counter.shots

    def _sample(self, indices, num_params, idx_rep, rng=None):
        """PennyLane's SPSA sampler hook: this step's direction ``idx_rep``, in tape order."""
        from .errors import QTrainError

        if self._directions is None or num_params != self._order.numel():
            raise QTrainError(f"PennyLane's SPSA saw {num_params} circuit parameters where qtrain "
                              f"laid out {self._order.numel()}: use --backend native for spsa")
        return self._directions[idx_rep][self._order].numpy()

    def __call__(self, angles: torch.Tensor) -> torch.Tensor:
        """Probabilities of ``angles`` (P,) from the QNode, differentiable by PennyLane."""
        train = torch.is_grad_enabled() and angles.requires_grad
        if train and self.cfg.grad == "spsa":
            c = spsa_gain(self.cfg.spsa_c, self.cfg.spsa_gamma, self.step)
            signs = torch.randint(0, 2, (self.cfg.spsa_samples, self.circuit.num_angles),
                                  generator=self.perturber)
            self._directions = signs.double() * 2 - 1
            self.simulator.gradient_kwargs["h"] = c
        if train:
            self.step += 1
        a = angles.double() if self.cfg.grad != "backprop" else angles
        return self.simulator.probs(a).to(angles.dtype)


def circuit_metrics(qt) -> dict:
    """What a device would have billed for ``qt``'s generator so far, for qtrain.json: circuit
    executions, shots per circuit and shots in all (0 when exact)."""
    est = qt.generator._estimator
    cfg = qt.generator.cfg
    return {"grad": cfg.grad, "shots": cfg.shots,
            "circuit_executions": est.executions if est is not None else 0,
            "shots_total": est.shots_used if est is not None else 0}


def make_estimator(circuit: Circuit, cfg: QTConfig):
    """The estimator for ``cfg.backend``: PennyLane's own QNode, or the native simulator."""
    seed = cfg.sample_seed if cfg.sample_seed is not None else torch.initial_seed()
    if cfg.backend == "pennylane":
        return PennyLaneEstimator(circuit, cfg, seed)
    from .simulate import NativeSimulator

    return NativeEstimator(circuit, cfg, NativeSimulator(circuit, cfg.circuit_precision), seed)
