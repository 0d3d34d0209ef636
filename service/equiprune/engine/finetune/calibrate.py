"""Held-out output calibration: the pruned model predicts each class as often as the dense one.

At high sparsity a pruned classifier stops predicting its rare classes: on UTKFace at 95 %,
after naive fine-tuning, the rare class "Others" all but vanished from the predictions, and
that, not the training loss, is where the largest ψ_g on unseen data came from (docs/results/
fair-repair.md). Fine-tuning cannot see this on the training data, which the model fits.

So after fine-tuning, C output offsets are fitted on the constraint split (never trained on):
the offsets make the pruned model's predicted-class frequencies there match the dense model's
predictions on the same samples — a prior correction (Saerens et al. 2002) on argmax rates.
No label is read: it asks the pruned model to behave like the dense one, which is what ψ_g
measures, and C numbers fitted on thousands of held-out samples have little room to overfit.
The offsets are added to the bias of the output layer, so the model keeps its architecture
and exports as before. A model whose output is not an additive `nn.Linear` bias is left alone
(the result says so).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..evaluation import evaluate
from ..groups import GroupedData
from ..modes import mode

ITERATIONS = 200


@dataclass(frozen=True)
class Calibration:
    applied: bool
    note: str
    offsets: tuple[float, ...] = ()
    # Total variation distance between the dense and pruned predicted-class frequencies.
    distance_before: float | None = None
    distance_after: float | None = None

    def to_dict(self) -> dict:
        return {"applied": self.applied, "note": self.note, "offsets": list(self.offsets),
                "distance_before": self.distance_before, "distance_after": self.distance_after}


def output_bias(model: nn.Module, num_classes: int) -> nn.Parameter | None:
    """The bias of the last `nn.Linear` with `num_classes` outputs, if the model has one.

    A torch.export program has no `nn.Linear` modules left, only its parameters: there the
    last one-dimensional parameter of `num_classes` values is the candidate. Either way the
    caller checks that moving it moves the output by as much before keeping the change."""
    last = None
    for module in model.modules():
        if isinstance(module, nn.Linear) and module.out_features == num_classes and module.bias is not None:
            last = module.bias
    if last is None:
        for _, parameter in model.named_parameters():
            if parameter.dim() == 1 and parameter.numel() == num_classes:
                last = parameter
    return last


@torch.no_grad()
def match_prediction_rates(model: nn.Module, constraint: GroupedData, dense_logits: torch.Tensor,
                           *, device=None) -> Calibration:
    """Fit and apply the output offsets (module docstring). `dense_logits`: the dense model's
    logits on `constraint`, in its order."""
    num_classes = dense_logits.shape[1]
    bias = output_bias(model, num_classes)
    if bias is None or len(constraint) == 0:
        return Calibration(False, "no output bias of one value per class: outputs left as trained")
    logits = evaluate(model, constraint, device=device, keep_logits=True).logits
    if logits is None or logits.shape != dense_logits.shape:
        return Calibration(False, "the model's outputs do not match the dense model's: outputs left as trained")
    target = _rates(dense_logits.argmax(dim=1), num_classes)
    offsets, best, best_distance = torch.zeros(num_classes), torch.zeros(num_classes), None
    before = _distance(_rates(logits.argmax(dim=1), num_classes), target)
    for step in range(ITERATIONS):
        rates = _rates((logits + offsets).argmax(dim=1), num_classes)
        distance = _distance(rates, target)
        if best_distance is None or distance < best_distance:
            best, best_distance = offsets.clone(), distance
        # A damped multiplicative correction of each class's share; smoothed so that a class
        # predicted nowhere still moves.
        offsets += 0.5 * (1 - step / ITERATIONS) * torch.log(target / rates)
    # Check that the bias is added to the output as it stands (no later layer rescales it).
    probe = constraint.inputs[:8].to(bias.device)
    original = bias.detach().clone()
    with mode(model, training=False):
        was = model(probe).float()
        bias += best.to(bias.device, bias.dtype)
        moved = model(probe).float() - was
    if not torch.allclose(moved, best.to(moved.device).expand_as(moved), atol=1e-3):
        bias.copy_(original)
        return Calibration(False, "the output layer's bias is not added to the output as is: outputs left as trained")
    return Calibration(True, "output offsets fitted on the constraint split", tuple(best.tolist()),
                       before, best_distance)


def _rates(predictions: torch.Tensor, num_classes: int) -> torch.Tensor:
    counts = torch.bincount(predictions, minlength=num_classes).double() + 0.5
    return counts / counts.sum()


def _distance(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(0.5 * (a - b).abs().sum())
