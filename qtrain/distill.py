"""Learning from the trained MODEL: its outputs as soft targets (distillation), its predictions
as labels when the data has none, and how closely another model agrees with it."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset, TensorDataset

from .config import DistillConfig
from .data import has_labels, inputs_of
from .errors import QTrainError


@torch.no_grad()
def teacher_outputs(teacher: nn.Module, ds: Dataset, device, batch_size: int = 1024
                    ) -> torch.Tensor:
    """The teacher's outputs on every example of ``ds`` (kept on the CPU, float32)."""
    teacher.to(device).eval()
    outs = [teacher(inputs_of(ds, i, min(i + batch_size, len(ds))).to(device)).float().cpu()
            for i in range(0, len(ds), batch_size)]
    return torch.cat(outs)


def infer_task(outputs: torch.Tensor, task: str) -> str:
    """``task`` unless ``auto``: classification when the model gives several values per example."""
    if task != "auto":
        return task
    return "classification" if outputs.dim() == 2 and outputs.shape[1] > 1 else "regression"


class _WithTeacher(Dataset):
    def __init__(self, ds: Dataset, labels: torch.Tensor | None, outputs: torch.Tensor):
        self.ds, self.labels, self.outputs = ds, labels, outputs

    def __len__(self):
        return len(self.ds)

    def __getitem__(self, i):
        item = self.ds[i]
        x = item[0] if isinstance(item, tuple | list) else item
        y = self.labels[i] if self.labels is not None else item[1]
        return x, y, self.outputs[i]


def with_teacher(ds: Dataset, outputs: torch.Tensor, task: str) -> Dataset:
    """``ds`` as (input, label, teacher output) triples; without labels, the teacher's
    prediction (argmax, or its output for regression) is the label."""
    labels = None
    if not has_labels(ds):
        labels = outputs.argmax(-1) if task == "classification" else outputs.clone()
    if isinstance(ds, TensorDataset):
        y = labels if labels is not None else ds.tensors[1]
        return TensorDataset(ds.tensors[0], y, outputs)
    return _WithTeacher(ds, labels, outputs)


class DistillLoss:
    """``alpha * T^2 * KL(teacher_T || student_T) + (1 - alpha) * label loss`` (Hinton et al.
    2015); for regression ``alpha * MSE(student, teacher) + (1 - alpha) * MSE(student, y)``.

    Called as ``loss(out, y, teacher_out)``.
    """

    def __init__(self, cfg: DistillConfig, task: str):
        self.alpha, self.t, self.task = cfg.alpha, cfg.temperature, task

    def __call__(self, out: torch.Tensor, y: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        if self.task == "classification":
            label = F.cross_entropy(out, y) if self.alpha < 1 else 0.0
            soft = F.kl_div(F.log_softmax(out / self.t, -1), F.log_softmax(teacher / self.t, -1),
                            log_target=True, reduction="batchmean") * self.t**2
        else:
            label = F.mse_loss(out, y.reshape(out.shape)) if self.alpha < 1 else 0.0
            soft = F.mse_loss(out, teacher.reshape(out.shape))
        return self.alpha * soft + (1 - self.alpha) * label


def agreement(student: torch.Tensor, teacher: torch.Tensor, task: str) -> dict:
    """How closely ``student``'s outputs follow ``teacher``'s on the same examples.

    Returns:
        Classification: ``{"top1": fraction of equal argmax, "kl": mean KL(teacher || student)
        in nats}``. Regression: ``{"mse": mean squared difference}``.
    """
    student, teacher = student.float(), teacher.float()
    if task != "classification":
        return {"mse": float(F.mse_loss(student, teacher.reshape(student.shape)))}
    top1 = float((student.argmax(-1) == teacher.argmax(-1)).float().mean())
    kl = F.kl_div(F.log_softmax(student, -1), F.log_softmax(teacher, -1), log_target=True,
                  reduction="batchmean")
    return {"top1": top1, "kl": float(kl)}


def agreement_on(student: nn.Module, teacher_out: torch.Tensor, ds: Dataset, task: str,
                 device) -> dict:
    """:func:`agreement` of ``student`` (evaluated now) with precomputed ``teacher_out``."""
    return agreement(teacher_outputs(student, ds, device), teacher_out, task)


def require_trained(trained: bool, what: str) -> None:
    """Refuse ``--distill``/``--init fit`` on a freshly initialised architecture."""
    if not trained:
        raise QTrainError(f"{what} needs a trained MODEL to learn from, but MODEL is a fresh "
                          "architecture with random weights: pass its weights (a state_dict "
                          "file with --arch, or a pickled module with --trust-pickle)")
