"""The dense model's outputs for distillation, computed once where that is possible.

Without augmentation a training sample always looks the same, so the teacher's logits for
the whole training split are looked up by row: taken from the dense model's evaluation on the
training data when it kept them (the pipeline runs that pass for the dense report anyway, so
distillation then costs no extra forward pass), else computed in one evaluation pass before
the first step (about one ninth of three epochs of training). With augmentation, or when the
table would be too large (evaluation.MAX_KEPT_LOGITS_BYTES), the teacher runs on each batch as
the pruned model saw it, which costs one more forward pass per step.
"""

from __future__ import annotations

import torch
from torch import nn

from ..evaluation import Evaluation, evaluate
from ..groups import GroupedData
from ..modes import mode


class TeacherOutputs:
    """Callable (row indices, batch inputs) → the teacher's logits for that batch."""

    def __init__(self, teacher: nn.Module, train: GroupedData, *, augmenting: bool, device,
                 reference: Evaluation | None = None) -> None:
        self.teacher = teacher
        self.table: torch.Tensor | None = None
        if augmenting:
            return
        if reference is not None and reference.logits is not None and reference.logits.shape[0] == len(train):
            self.table = reference.logits
        else:
            self.table = evaluate(teacher, train, device=device, keep_logits=True).logits

    @torch.no_grad()
    def __call__(self, index: torch.Tensor, inputs: torch.Tensor | None) -> torch.Tensor:
        if self.table is not None:
            return self.table[index.cpu()]
        with mode(self.teacher, training=False):
            return self.teacher(inputs).float()
