"""One evaluation pass: per-sample correctness and loss, kept for paired comparisons.

Keeping per-sample results (not only per-group counts) lets a report pair the dense and the
pruned model on the very same samples, which gives much tighter intervals for the accuracy
drop than treating the two accuracies as independent.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .groups import GroupedData
from .modes import mode

MAX_KEPT_LOGITS_BYTES = 1 << 30


@dataclass(frozen=True)
class Evaluation:
    """Per-sample outcome of one model on one GroupedData, in the data's order."""

    correct: torch.Tensor  # bool (N,)
    loss: torch.Tensor  # float32 (N,), cross-entropy per sample
    confidence: torch.Tensor  # float32 (N,), max class probability
    groups: torch.Tensor  # int64 (N,)
    group_names: tuple[str, ...]
    # float32 (N, classes) when asked for (`keep_logits`): the dense model's outputs are the
    # distillation targets of fair fine-tuning, and its report already ran this pass.
    logits: torch.Tensor | None = None

    def __len__(self) -> int:
        return int(self.correct.shape[0])

    def group_counts(self) -> torch.Tensor:
        return torch.bincount(self.groups, minlength=len(self.group_names))

    def group_correct(self) -> torch.Tensor:
        return torch.bincount(self.groups, weights=self.correct.double(), minlength=len(self.group_names))

    def group_loss_sum(self) -> torch.Tensor:
        return torch.bincount(self.groups, weights=self.loss.double(), minlength=len(self.group_names))

    def accuracy(self) -> float:
        return float(self.correct.double().mean()) if len(self) else float("nan")

    def mean_loss(self) -> float:
        return float(self.loss.double().mean()) if len(self) else float("nan")

    def group_accuracy(self) -> torch.Tensor:
        """Accuracy per group, float64 (num_groups,); NaN for a group with no sample."""
        return _per_group_mean(self.group_correct(), self.group_counts())

    def group_loss(self) -> torch.Tensor:
        """Mean loss per group, float64 (num_groups,); NaN for a group with no sample."""
        return _per_group_mean(self.group_loss_sum(), self.group_counts())

    def group_accuracies(self) -> dict[str, float | None]:
        return _by_name(self.group_accuracy(), self.group_names)

    def group_losses(self) -> dict[str, float | None]:
        return _by_name(self.group_loss(), self.group_names)


@torch.no_grad()
def evaluate(
    model: nn.Module,
    data: GroupedData,
    *,
    batch_size: int = 512,
    device: torch.device | str | None = None,
    keep_logits: bool = False,
) -> Evaluation:
    """Run the model once over `data` in eval mode (when the model allows switching).

    keep_logits: also return every sample's logits, unless they would take more than
    MAX_KEPT_LOGITS_BYTES (then `logits` is None and a caller computes what it needs itself)."""
    device = torch.device(device) if device is not None else _model_device(model)
    correct, losses, confidence, kept, kept_bytes = [], [], [], [], 0
    with mode(model, training=False):
        for x, y, _ in data.batches(batch_size):
            x, y = x.to(device), y.to(device)
            logits = model(x).float()
            losses.append(F.cross_entropy(logits, y, reduction="none").cpu())
            probs = logits.softmax(dim=1)
            conf, pred = probs.max(dim=1)
            correct.append((pred == y).cpu())
            confidence.append(conf.cpu())
            if keep_logits and kept is not None:
                kept_bytes += logits.numel() * 4
                if kept_bytes > MAX_KEPT_LOGITS_BYTES:
                    kept = None  # too large to keep
                else:
                    kept.append(logits.cpu())
    empty = torch.empty(0)
    return Evaluation(
        correct=torch.cat(correct) if correct else empty.bool(),
        loss=torch.cat(losses) if losses else empty,
        confidence=torch.cat(confidence) if confidence else empty,
        groups=data.groups.clone(),
        group_names=data.group_names,
        logits=(torch.cat(kept) if kept else torch.zeros(0, 0)) if keep_logits and kept is not None else None,
    )


def _per_group_mean(total: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
    count = count.double()
    return torch.where(count > 0, total.double() / count.clamp(min=1), torch.full_like(count, float("nan")))


def _by_name(values: torch.Tensor, names: tuple[str, ...]) -> dict[str, float | None]:
    return {name: (None if v != v else float(v)) for name, v in zip(names, values.tolist())}


def _model_device(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")
