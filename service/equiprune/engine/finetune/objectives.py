"""Training objectives: what the primal step minimises and how multipliers move.

Shaped after cooper's split of a constrained problem into a Lagrangian (primal) and
multiplier updates (dual, see dual.py). Every objective sees each training mini-batch through
the same three calls, in this order (science.md: alternating, dual then primal):

    objective.observe(loss_per_sample, correct, groups)   # bookkeeping from this batch
    objective.dual_step(groups)                            # move the multipliers
    objective.primal_loss(loss_per_sample, groups, batch)  # the scalar to back-propagate

and `end_epoch()` after the last batch of every epoch. `batch` carries what a few objectives
need beyond the losses (the logits, the samples' indices into the training data). The
held-out variants additionally receive outcomes on constraint samples through
`observe_constraint`; the loop draws those only when `uses_constraint_split` is true.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .dual import PIMultipliers
from .replay import ReplayBuffers


@dataclass(frozen=True)
class Batch:
    """What the primal step may read besides the per-sample losses."""

    logits: torch.Tensor | None = None  # (n, classes), with grad
    index: torch.Tensor | None = None  # (n,) rows of the training data
    inputs: torch.Tensor | None = None  # (n, ...) as the model saw them (after augmentation)


def group_mean_losses(loss: torch.Tensor, groups: torch.Tensor, num_groups: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean loss per group in the batch (differentiable) and which groups are present."""
    counts = torch.bincount(groups, minlength=num_groups)
    sums = torch.zeros(num_groups, dtype=loss.dtype, device=loss.device).index_add(0, groups, loss)
    present = counts > 0
    return sums / counts.clamp(min=1).to(loss.dtype), present


class Objective:
    """Plain empirical risk: naive fine-tuning. Subclasses add constraints."""

    uses_constraint_split = False

    def __init__(self, num_groups: int) -> None:
        self.num_groups = num_groups
        self.multipliers = torch.zeros(num_groups, dtype=torch.float64)

    def observe(self, loss: torch.Tensor, correct: torch.Tensor, groups: torch.Tensor) -> None:
        pass

    def observe_constraint(self, correct: torch.Tensor, groups: torch.Tensor) -> None:
        raise NotImplementedError(f"{type(self).__name__} has no constraint split")

    def dual_step(self, groups: torch.Tensor) -> None:
        pass

    def end_epoch(self) -> None:
        pass

    def primal_loss(self, loss: torch.Tensor, groups: torch.Tensor, batch: Batch | None = None) -> torch.Tensor:
        return loss.mean()

    def state_dict(self) -> dict:
        return {"multipliers": self.multipliers.clone()}

    def load_state_dict(self, state: dict) -> None:
        self.multipliers.copy_(state["multipliers"])


class EqualizedLoss(Objective):
    """Tran et al.: min J s.t. J_a = J for every group, solved as their seed paper's solver
    does (Fioretto et al. 2020, Lagrangian duality for constrained deep learning):

    primal, every batch: J + Σ_a λ_a·|J_a − J| on the batch;
    dual, once per epoch: λ_a ← clamp(λ_a + η·|J_a − J|, 0, λ_max), with J_a and J the
    epoch's mean losses over every training sample seen (not a noisy batch).

    The per-batch step this replaced let the multipliers grow at every step without bound;
    here they grow at most once per epoch and stop at `max_multiplier`.
    """

    def __init__(self, num_groups: int, dual: PIMultipliers) -> None:
        super().__init__(num_groups)
        self.dual = dual
        self._loss_sum = torch.zeros(num_groups, dtype=torch.float64)
        self._count = torch.zeros(num_groups, dtype=torch.float64)

    def observe(self, loss, correct, groups):
        groups = groups.cpu()
        self._loss_sum += torch.bincount(groups, weights=loss.detach().double().cpu(), minlength=self.num_groups)
        self._count += torch.bincount(groups, minlength=self.num_groups).double()

    def epoch_sums(self) -> torch.Tensor:
        """(loss sums, counts) per group over the epoch so far, for a data-parallel all-reduce."""
        return torch.stack([self._loss_sum, self._count])

    def set_epoch_sums(self, sums: torch.Tensor) -> None:
        self._loss_sum.copy_(sums[0])
        self._count.copy_(sums[1])

    def end_epoch(self):
        seen = self._count > 0
        means = self._loss_sum / self._count.clamp(min=1)
        overall = self._loss_sum.sum() / self._count.sum().clamp(min=1)
        self.multipliers = self.dual.step_epoch((means - overall).abs(), seen).clone()
        self._loss_sum.zero_()
        self._count.zero_()

    def primal_loss(self, loss, groups, batch=None):
        overall = loss.mean()
        group_loss, present = group_mean_losses(loss, groups, self.num_groups)
        lam = self.multipliers.to(loss.device, loss.dtype)
        penalty = (lam * (group_loss - overall).abs() * present).sum()
        return overall + penalty

    def state_dict(self):
        return {**super().state_dict(), "dual": self.dual.state_dict(),
                "epoch_sums": torch.stack([self._loss_sum, self._count])}

    def load_state_dict(self, state):
        super().load_state_dict(state)
        self.dual.load_state_dict(state["dual"])
        self._loss_sum.copy_(state["epoch_sums"][0])
        self._count.copy_(state["epoch_sums"][1])


class CEAG(Objective):
    """Hashemizadeh et al.: min L s.t. ψ_g ≤ ε, with a loss proxy in the primal step.

    Dual: the violation ψ_g − ε, with ψ_g from replay-buffer accuracies against the dense
    model's accuracies on the same data, drives a PI controller (dual.py) instead of the
    paper's λ_g ← max(0, λ_g + η(ψ_g − ε)) per step, whose strength depended on the number of
    steps. Primal: L + Σ λ_g ψ̃_g where ψ̃_g = (J_g − J_g*) − (J − J*), dense losses J*
    precomputed once.
    """

    def __init__(
        self,
        num_groups: int,
        *,
        dual: PIMultipliers,
        tolerance: float,
        buffer_size: int,
        min_count: int | None = None,
        reference_group_accuracy: torch.Tensor,
        reference_group_loss: torch.Tensor,
        group_weights: torch.Tensor,
    ) -> None:
        super().__init__(num_groups)
        self.dual = dual
        self.tolerance = tolerance
        self.buffers = ReplayBuffers(num_groups, buffer_size, min_count)
        self.ref_acc = reference_group_accuracy.double().nan_to_num(0.0)
        self.ref_loss = reference_group_loss.double().nan_to_num(0.0)
        self.weights = group_weights.double()
        self._present = torch.zeros(num_groups, dtype=torch.bool)

    def observe(self, loss, correct, groups):
        self.buffers.push(correct, groups)
        self._present = torch.bincount(groups.cpu(), minlength=self.num_groups) > 0

    def excess_gaps(self) -> torch.Tensor:
        """Current ψ_g estimate from the buffers (NaN where a buffer is not ready).

        The overall accuracies, current and dense, are share-weighted over the groups whose
        buffers are ready, so both sides of Δ average over the same groups.
        """
        acc = self.buffers.means()
        weights = self.weights * self.buffers.ready()
        if not bool(weights.sum() > 0):
            return acc  # all NaN
        overall = (acc.nan_to_num(0.0) * weights).sum() / weights.sum()
        ref_overall = (self.ref_acc * weights).sum() / weights.sum()
        return (self.ref_acc - acc) - (ref_overall - overall)

    def violation(self) -> torch.Tensor:
        return self.excess_gaps() - self.tolerance

    def dual_step(self, groups):
        active = self.buffers.ready() & self._present
        self.multipliers = self.dual.update(self.violation(), active).clone()

    def primal_loss(self, loss, groups, batch=None):
        overall = loss.mean()
        group_loss, present = group_mean_losses(loss, groups, self.num_groups)
        # ψ̃_g = (J_g − J_g*) − (J − J*); J* is a constant and drops out of the gradient.
        proxy = (group_loss - self.ref_loss.to(loss.device, loss.dtype)) - overall
        lam = self.multipliers.to(loss.device, loss.dtype)
        return overall + (lam * proxy * present).sum()

    def state_dict(self):
        return {**super().state_dict(), "buffers": self.buffers.state_dict(), "dual": self.dual.state_dict()}

    def load_state_dict(self, state):
        super().load_state_dict(state)
        self.buffers.load_state_dict(state["buffers"])
        self.dual.load_state_dict(state["dual"])


class HeldOutCEAG(CEAG):
    """Ours: CEAG whose dual step only sees a constraint split the primal step never trains on.

    The published methods estimate ψ_g on the very samples they fit, so the bound they
    enforce is a training-set bound that does not carry to new data (science.md §3, §6).
    Here the buffers hold outcomes on held-out constraint samples, drawn balanced per group
    at every step, compared with the dense model's accuracies on that same split.

    Confidence-aware: a group's multiplier grows only while ψ_g's lower confidence bound
    (z standard errors of its window's accuracy) is above ε and shrinks only while the upper
    bound is below it; in between the evidence says nothing and the multiplier holds. Without
    this the controller integrated the window's sampling noise (±3 points at 200 outcomes).
    """

    uses_constraint_split = True

    def __init__(self, num_groups: int, *, confidence_z: float, **kwargs) -> None:
        super().__init__(num_groups, **kwargs)
        self.z = confidence_z

    def observe(self, loss, correct, groups):
        self._present = torch.zeros(self.num_groups, dtype=torch.bool)

    def observe_constraint(self, correct, groups):
        self.buffers.push(correct, groups)
        self._present = torch.bincount(groups.cpu(), minlength=self.num_groups) > 0

    def violation(self) -> torch.Tensor:
        psi = self.excess_gaps()
        held = self.buffers.count.clamp(max=self.buffers.size).clamp(min=1).double()
        acc = self.buffers.means().nan_to_num(0.5)
        # Wilson-like floor on the variance so a window of all-correct bits is not certain.
        se = ((acc * (1 - acc)).clamp(min=1.0 / held) / held).sqrt()
        low, high = psi - self.z * se, psi + self.z * se
        over, under = low - self.tolerance, high - self.tolerance
        return torch.where(over > 0, over, torch.where(under < 0, under, torch.zeros_like(psi)))


class FairDistillation(Objective):
    """Ours, the default fair method: learn the dense model's behaviour, every group alike,
    under CEAG's constraint.

    ψ_g is measured against the dense model, so a repair that carries to unseen data should
    make the pruned model *behave like the dense one* on every group, not only equalise
    training-set numbers: distillation (Hinton et al. 2015) transfers the dense model's
    function, and it asks nothing the dense model itself does not do (unlike equal losses,
    which the dense model violates).

        primal = (1 − α)·CE + α·T²·(1/|G_b|)·Σ_g KL_g(dense_T ‖ pruned_T) + Σ_g λ_g·ψ̃_g

    KL_g is the mean KL divergence over group g's samples in the batch, averaged with equal
    weight over the groups present (group-balanced). Balancing the distillation term, not the
    cross-entropy, is deliberate: up-weighting a group's cross-entropy shifts the classifier's
    prior towards it (its ψ_g goes negative, the majority's positive), while up-weighting its
    distillation term only makes the copy of the dense model more exact there.

    λ_g and ψ̃_g are those of a CEAG objective (`constraint`): on the training data (as
    CEAG) or on a held-out constraint split (as HeldOutCEAG); None leaves distillation alone.
    """

    def __init__(self, num_groups: int, *, teacher, alpha: float, temperature: float,
                 constraint: CEAG | None) -> None:
        super().__init__(num_groups)
        self.teacher = teacher
        self.alpha = alpha
        self.temperature = temperature
        self.constraint = constraint
        self.uses_constraint_split = constraint is not None and constraint.uses_constraint_split

    def observe(self, loss, correct, groups):
        if self.constraint is not None:
            self.constraint.observe(loss, correct, groups)

    def observe_constraint(self, correct, groups):
        self.constraint.observe_constraint(correct, groups)

    def dual_step(self, groups):
        if self.constraint is not None:
            self.constraint.dual_step(groups)
            self.multipliers = self.constraint.multipliers

    def primal_loss(self, loss, groups, batch=None):
        if batch is None or batch.logits is None or batch.index is None:
            raise ValueError("distillation needs the batch's logits and indices")
        t = self.temperature
        target = self.teacher(batch.index, batch.inputs).to(batch.logits.device)
        log_p = torch.log_softmax(batch.logits.float() / t, dim=1)
        log_q = torch.log_softmax(target.float() / t, dim=1)
        kl = (log_q.exp() * (log_q - log_p)).sum(dim=1)
        group_kl, present = group_mean_losses(kl, groups, self.num_groups)
        balanced = (group_kl * present).sum() / present.sum().clamp(min=1)
        total = (1 - self.alpha) * loss.mean() + self.alpha * t * t * balanced
        if self.constraint is not None:
            # The multipliers this objective reports are the ones trained on (a data-parallel
            # run replaces them with the workers' average after each dual step).
            self.constraint.multipliers = self.multipliers
            # CEAG's Lagrangian minus its own L: only the λ_g·ψ̃_g terms are added.
            total = total + self.constraint.primal_loss(loss, groups) - loss.mean()
        return total

    def state_dict(self):
        state = super().state_dict()
        if self.constraint is not None:
            state["constraint"] = self.constraint.state_dict()
        return state

    def load_state_dict(self, state):
        super().load_state_dict(state)
        if self.constraint is not None:
            self.constraint.load_state_dict(state["constraint"])
