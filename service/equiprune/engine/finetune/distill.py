"""The dense model's outputs for distillation, computed once where that is cheaper.

Without augmentation a training sample always looks the same, so the teacher's logits for
the whole training split are computed in one evaluation pass before the first step (about one
ninth of three epochs of training) and looked up by row afterwards. With augmentation, or
when the table would be large (more than `max_table_bytes`), the teacher runs on each batch
as the pruned model saw it, which costs one more forward pass per step.
"""

from __future__ import annotations

import torch
from torch import nn

from ..groups import GroupedData
from ..modes import mode

MAX_TABLE_BYTES = 1 << 30


class TeacherOutputs:
    """Callable (row indices, batch inputs) → the teacher's logits for that batch."""

    def __init__(self, teacher: nn.Module, train: GroupedData, *, augmenting: bool, device,
                 batch_size: int = 512, max_table_bytes: int = MAX_TABLE_BYTES) -> None:
        self.teacher = teacher
        self.device = device
        self.table: torch.Tensor | None = None
        if not augmenting:
            self.table = self._table(train, batch_size, max_table_bytes)

    @torch.no_grad()
    def _table(self, train: GroupedData, batch_size: int, max_bytes: int) -> torch.Tensor | None:
        parts, total = [], 0
        with mode(self.teacher, training=False):
            for x, _, _ in train.batches(batch_size):
                logits = self.teacher(x.to(self.device)).float().cpu()
                total += logits.numel() * 4
                if total > max_bytes:
                    return None  # too large to keep: fall back to running the teacher per batch
                parts.append(logits)
        return torch.cat(parts) if parts else torch.zeros(0)

    @torch.no_grad()
    def __call__(self, index: torch.Tensor, inputs: torch.Tensor | None) -> torch.Tensor:
        if self.table is not None:
            return self.table[index.cpu()]
        with mode(self.teacher, training=False):
            return self.teacher(inputs).float()
