"""Multiplier updates whose strength does not depend on how many steps a run has.

The published dual step, λ ← max(0, λ + η·e) once per mini-batch, moves a multiplier by
η·e·S per epoch of S steps: the same η is a hundred times stronger on a data set a hundred
times larger, and at the papers' η (1e-4) nothing moves in a short run (science.md §6–7; a
tabular set here: ≤ 0.02 in 3 epochs). So time is measured in epochs, not steps, and the
update is a PI controller (Sohrabi et al., ICML 2024, "On PI controllers for updating
Lagrange multipliers in constrained optimization"):

    I ← clamp(I + e·(1/S), 0, λ_max / κ_i)        the integral of the violation, in epochs
    λ = clamp(κ_p·ē + κ_i·I, 0, λ_max)

with e the violation seen at this step (ψ_g − ε, or |J_a − J|) and ē its running mean over
the last epoch's worth of updates (the proportional term reacts at once but on a smoothed
signal: per-step estimates from a replay buffer of 40 bits swing by ±6 points).
- κ_i (`dual_lr`): multiplier change per epoch of constant unit violation. A run of any data
  size reaches the same λ after the same number of epochs.
- κ_p (`dual_proportional`): immediate response, which damps the integral's overshoot; it
  falls back to zero as soon as the violation does.
- λ_max (`max_multiplier`): bounded multipliers; the integral stops growing there too
  (anti-windup), so a constraint the model cannot meet does not push ever harder.
Only groups marked active at a step move (CEAG: present in the batch with a full buffer).

`total_bound` (CEAG and its variants): the multipliers are also scaled down together so that
Σ_g λ_g ≤ λ_max. CEAG's proxy Lagrangian is L + Σ_g λ_g·((J_g − J_g*) − (J − J*)): the overall
loss J enters with the coefficient 1 − Σ_g λ_g, and once the multipliers of several groups
add up past 1 the primal step *ascends* the average loss of every group whose multiplier is
small. With ten groups (CIFAR-10 classes) and per-group bounds only, that is what happened:
training accuracy collapsed to 25–36 % (docs/results/fair-repair.md). Bounding the sum keeps
the coefficient non-negative whatever the number of groups.
"""

from __future__ import annotations

import torch


class PIMultipliers:
    """Per-group multipliers driven by a PI controller on the violation (module docstring)."""

    def __init__(self, num_groups: int, *, integral_gain: float, proportional_gain: float,
                 max_multiplier: float, steps_per_epoch: int, total_bound: bool = False) -> None:
        self.total_bound = total_bound
        self.ki = float(integral_gain)
        self.kp = float(proportional_gain)
        self.max = float(max_multiplier)
        self.dt = 1.0 / max(int(steps_per_epoch), 1)
        self.integral = torch.zeros(num_groups, dtype=torch.float64)
        self.smoothed = torch.zeros(num_groups, dtype=torch.float64)
        self.value = torch.zeros(num_groups, dtype=torch.float64)

    def update(self, violation: torch.Tensor, active: torch.Tensor) -> torch.Tensor:
        """One step: move the active groups' multipliers; returns all multipliers."""
        e = violation.double().nan_to_num(0.0)
        active = active.bool()
        ceiling = self.max / self.ki if self.ki > 0 else 0.0
        integral = (self.integral + e * self.dt).clamp(0.0, ceiling)
        # An exponential mean with a time constant of half an epoch (at least one step).
        smoothed = self.smoothed + min(1.0, 2 * self.dt) * (e - self.smoothed)
        self.integral = torch.where(active, integral, self.integral)
        self.smoothed = torch.where(active, smoothed, self.smoothed)
        value = (self.kp * self.smoothed + self.ki * self.integral).clamp(0.0, self.max)
        self.value = self._within_total(torch.where(active, value, self.value))
        return self.value

    def _within_total(self, value: torch.Tensor) -> torch.Tensor:
        """Scale every multiplier down alike when their sum exceeds λ_max (`total_bound`)."""
        total = float(value.sum())
        if not self.total_bound or total <= self.max or total == 0.0:
            return value
        return value * (self.max / total)

    def step_epoch(self, violation: torch.Tensor, active: torch.Tensor) -> torch.Tensor:
        """A whole epoch's worth of update at once (Fioretto et al.'s per-epoch dual step)."""
        e = violation.double().nan_to_num(0.0)
        ceiling = self.max / self.ki if self.ki > 0 else 0.0
        self.integral = torch.where(active.bool(), (self.integral + e).clamp(0.0, ceiling), self.integral)
        self.smoothed = torch.where(active.bool(), e, self.smoothed)
        value = (self.kp * self.smoothed + self.ki * self.integral).clamp(0.0, self.max)
        self.value = torch.where(active.bool(), value, self.value)
        return self.value

    def state_dict(self) -> dict:
        return {"integral": self.integral.clone(), "smoothed": self.smoothed.clone(), "value": self.value.clone()}

    def load_state_dict(self, state: dict) -> None:
        self.integral.copy_(state["integral"])
        self.smoothed.copy_(state["smoothed"])
        self.value.copy_(state["value"])
