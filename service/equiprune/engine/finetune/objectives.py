"""Training objectives: what the primal step minimises and how multipliers move.

Shaped after cooper's split of a constrained problem into a Lagrangian (primal) and
multiplier updates (dual). Every objective sees each training mini-batch through the same
three calls, in this order (science.md: alternating, dual then primal):

    objective.observe(loss_per_sample, correct, groups)   # bookkeeping from this batch
    objective.dual_step(groups)                            # move the multipliers
    objective.primal_loss(loss_per_sample, groups)         # the scalar to back-propagate

The held-out variant additionally receives outcomes on constraint samples through
`observe_constraint`; the loop draws those only when `uses_constraint_split` is true.
"""

from __future__ import annotations

import torch

from .replay import ReplayBuffers


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

    def primal_loss(self, loss: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
        return loss.mean()

    def state_dict(self) -> dict:
        return {"multipliers": self.multipliers.clone()}

    def load_state_dict(self, state: dict) -> None:
        self.multipliers.copy_(state["multipliers"])


class EqualizedLoss(Objective):
    """Tran et al.: min J s.t. J_a = J for every group, with λ_a ← λ_a + η·|J_a − J|.

    The violation is measured on the batch, or, with replay, on each group's last k losses
    (less noisy for small groups).
    """

    def __init__(self, num_groups: int, dual_lr: float, replay_size: int | None,
                 group_weights: torch.Tensor) -> None:
        super().__init__(num_groups)
        self.dual_lr = dual_lr
        self.weights = group_weights.double()
        self.replay = ReplayBuffers(num_groups, replay_size) if replay_size else None
        self._batch_violation = torch.zeros(num_groups, dtype=torch.float64)
        self._batch_present = torch.zeros(num_groups, dtype=torch.bool)

    def observe(self, loss, correct, groups):
        if self.replay is not None:
            self.replay.push(loss, groups)
        group_loss, present = group_mean_losses(loss.detach(), groups, self.num_groups)
        self._batch_violation = (group_loss - loss.detach().mean()).abs().double().cpu()
        self._batch_present = present.cpu()

    def dual_step(self, groups):
        if self.replay is None:
            violation, active = self._batch_violation, self._batch_present
        else:
            means = self.replay.means()
            ready = self.replay.ready()
            active = ready & self._batch_present
            # J(θ; D) weighs groups by their share, like the batch mean the primal step uses.
            weights = self.weights * ready
            overall = (means.nan_to_num(0.0) * weights).sum() / weights.sum().clamp(min=1e-12)
            violation = (means - overall).abs().nan_to_num(0.0)
        self.multipliers += torch.where(active, self.dual_lr * violation, torch.zeros_like(violation))

    def primal_loss(self, loss, groups):
        overall = loss.mean()
        group_loss, present = group_mean_losses(loss, groups, self.num_groups)
        lam = self.multipliers.to(loss.device, loss.dtype)
        penalty = (lam * (group_loss - overall).abs() * present).sum()
        return overall + penalty

    def state_dict(self):
        state = super().state_dict()
        if self.replay is not None:
            state["replay"] = self.replay.state_dict()
        return state

    def load_state_dict(self, state):
        super().load_state_dict(state)
        if self.replay is not None:
            self.replay.load_state_dict(state["replay"])


class CEAG(Objective):
    """Hashemizadeh et al.: min L s.t. ψ_g ≤ ε, with a loss proxy in the primal step.

    Dual: λ_g ← max(0, λ_g + η(ψ_g − ε)) with ψ_g from replay-buffer accuracies against the
    dense model's accuracies on the same data. Primal: L + Σ λ_g ψ̃_g where
    ψ̃_g = (J_g − J_g*) − (J − J*), dense losses J* precomputed once.
    """

    def __init__(
        self,
        num_groups: int,
        *,
        dual_lr: float,
        tolerance: float,
        buffer_size: int,
        min_count: int | None = None,
        reference_group_accuracy: torch.Tensor,
        reference_group_loss: torch.Tensor,
        group_weights: torch.Tensor,
    ) -> None:
        super().__init__(num_groups)
        self.dual_lr = dual_lr
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

    def dual_step(self, groups):
        psi = self.excess_gaps()
        active = self.buffers.ready() & self._present
        step = torch.where(active, self.dual_lr * (psi - self.tolerance), torch.zeros_like(psi))
        self.multipliers = (self.multipliers + step.nan_to_num(0.0)).clamp(min=0)

    def primal_loss(self, loss, groups):
        overall = loss.mean()
        group_loss, present = group_mean_losses(loss, groups, self.num_groups)
        # ψ̃_g = (J_g − J_g*) − (J − J*); J* is a constant and drops out of the gradient.
        proxy = (group_loss - self.ref_loss.to(loss.device, loss.dtype)) - overall
        lam = self.multipliers.to(loss.device, loss.dtype)
        return overall + (lam * proxy * present).sum()

    def state_dict(self):
        return {**super().state_dict(), "buffers": self.buffers.state_dict()}

    def load_state_dict(self, state):
        super().load_state_dict(state)
        self.buffers.load_state_dict(state["buffers"])


class HeldOutCEAG(CEAG):
    """Ours: CEAG whose dual step only sees a constraint split the primal step never trains on.

    The published methods estimate ψ_g on the very samples they fit, so the bound they
    enforce is a training-set bound that does not carry to new data (science.md §3, §6).
    Here the buffers hold outcomes on held-out constraint samples, drawn balanced per group
    at every step, compared with the dense model's accuracies on that same split.
    """

    uses_constraint_split = True

    def observe(self, loss, correct, groups):
        self._present = torch.zeros(self.num_groups, dtype=torch.bool)

    def observe_constraint(self, correct, groups):
        self.buffers.push(correct, groups)
        self._present = torch.bincount(groups.cpu(), minlength=self.num_groups) > 0
