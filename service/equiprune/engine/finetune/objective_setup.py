"""`build_objective`: the fine-tuning objective for `config.method`, with its PI controllers and
the dense references (evaluations, teacher outputs) the method needs.

Separate from the loop because choosing and wiring the method is independent of how steps run:
the loop only talks to the `Objective` interface (objectives.py).
"""

from __future__ import annotations

from ..errors import InvalidConfigError
from ..evaluation import Evaluation
from ..groups import GroupedData
from .config import FinetuneConfig
from .distill import TeacherOutputs
from .dual import PIMultipliers
from .objectives import CEAG, EqualizedLoss, FairDistillation, HeldOutCEAG, Objective


def build_objective(
    config: FinetuneConfig,
    train: GroupedData,
    train_reference: Evaluation | None,
    constraint: GroupedData | None,
    constraint_reference: Evaluation | None,
    steps_per_epoch: int = 1,
    teacher: TeacherOutputs | None = None,
) -> Objective:
    """The objective for `config.method`, with the dense references it needs."""
    g = train.num_groups
    shares = train.group_counts().double()

    def controller(proportional: float = config.dual_proportional, total_bound: bool = True) -> PIMultipliers:
        # CEAG's Lagrangian needs Σλ ≤ λ_max (dual.py); Equalized Loss's |J_a − J| terms do not.
        return PIMultipliers(g, integral_gain=config.dual_lr, proportional_gain=proportional,
                             max_multiplier=config.max_multiplier, steps_per_epoch=steps_per_epoch,
                             total_bound=total_bound)

    def held_out() -> HeldOutCEAG:
        if constraint is None or constraint_reference is None or len(constraint) == 0:
            raise InvalidConfigError("finetune.method", f"{config.method} needs a non-empty constraint split and "
                                     "the dense model's evaluation on it")
        if train_reference is None:
            raise InvalidConfigError("finetune.method", f"{config.method} needs the dense model's evaluation on the training data")
        return HeldOutCEAG(
            g, dual=controller(), tolerance=config.tolerance, confidence_z=config.confidence_z,
            buffer_size=config.constraint_window, min_count=config.replay_size,
            reference_group_accuracy=constraint_reference.group_accuracy(),
            # The primal proxy compares training losses with the dense training losses.
            reference_group_loss=train_reference.group_loss(),
            # Δ averages groups by their share of the population (the training data), as the
            # report does, whatever the make-up of the constraint split.
            group_weights=shares,
        )

    if config.method == "naive":
        return Objective(g)
    if config.method == "equalized_loss":
        # J is the epoch's mean over every sample, so no group shares are needed.
        return EqualizedLoss(g, controller(proportional=0.0, total_bound=False))
    def train_side() -> CEAG:
        if train_reference is None:
            raise InvalidConfigError("finetune.method", f"{config.method} needs the dense model's evaluation on the training data")
        return CEAG(
            g, dual=controller(), tolerance=config.tolerance, buffer_size=config.replay_size,
            reference_group_accuracy=train_reference.group_accuracy(),
            reference_group_loss=train_reference.group_loss(), group_weights=shares,
        )

    if config.method == "ceag":
        return train_side()
    if config.method == "fair_distill":
        if teacher is None:
            raise InvalidConfigError("finetune.method", "fair_distill needs the dense model (the teacher)")
        if config.calibrate_outputs and (constraint is None or len(constraint) == 0):
            raise InvalidConfigError("finetune.calibrate_outputs",
                                     "fair_distill's output calibration needs a non-empty constraint split")
        constraint = {"none": None, "train": train_side, "held_out": held_out}[config.distill_constraint]
        return FairDistillation(g, teacher=teacher, alpha=config.distill_alpha, temperature=config.distill_temperature,
                                constraint=constraint() if constraint is not None else None)
    return held_out()
