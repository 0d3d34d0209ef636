"""Configuration and result types of the per-group diagnostics (see `equiprune.engine.diagnostics`).

Kept apart from the estimators so that code which only configures a job or reads a report
(job specs, summaries, the CLI) depends on plain dataclasses, not on the Hessian machinery.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from equiprune.engine.errors import InvalidConfigError
from equiprune.engine.groups import GroupedData
from equiprune.engine.jsonable import json_float
from equiprune.engine.pruning.masks import Masks

Vector = tuple[torch.Tensor, ...]


# --------------------------------------------------------------------------- configuration


def _require_int(name: str, value: Any, minimum: int, maximum: int | None = None) -> None:
    if (isinstance(value, bool) or not isinstance(value, int) or value < minimum
            or (maximum is not None and value > maximum)):
        bound = f">= {minimum}" if maximum is None else f"from {minimum} to {maximum}"
        raise InvalidConfigError(f"diagnostics.{name}", f"expected an integer {bound}, got {value!r}")


@dataclass(frozen=True)
class DiagnosticsConfig:
    """How much work the estimates get.

    probes: Rademacher probes for the Hutchinson trace (its standard error shrinks as 1/√probes).
    power_iterations: most HVP passes spent on the top eigenvalue.
    power_tolerance: stop early once the eigenvalue estimate changes by at most this fraction
        of its size between two iterations (0 = always run every iteration).
    batch_size: samples per forward pass; memory grows with it (double backward keeps a graph).
    seed: seeds the probes and the power-iteration start, so results are reproducible.
    parameters: names (as in `named_parameters()`) to diagnose; None = every trainable one.
    include_overall: also diagnose the whole data set as one group (costs as much again).
    samples_per_group: samples per group the pipeline diagnoses; the estimates cost tens of
        evaluation passes and their per-group means need far fewer samples than a split has.
    """

    probes: int = 10
    power_iterations: int = 20
    power_tolerance: float = 1e-3
    batch_size: int = 256
    seed: int = 0
    parameters: tuple[str, ...] | None = None
    include_overall: bool = True
    samples_per_group: int = 1000

    def __post_init__(self) -> None:
        _require_int("probes", self.probes, 1, 10_000)
        _require_int("power_iterations", self.power_iterations, 1, 10_000)
        _require_int("batch_size", self.batch_size, 1)
        _require_int("samples_per_group", self.samples_per_group, 2, 10**7)
        _require_int("seed", self.seed, 0)
        if self.seed >= 2**63:
            raise InvalidConfigError("diagnostics.seed", f"expected an integer below 2**63, got {self.seed}")
        tol = self.power_tolerance
        if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not math.isfinite(tol) or tol < 0:
            raise InvalidConfigError(
                "diagnostics.power_tolerance", f"expected a finite number >= 0, got {tol!r}"
            )
        if not isinstance(self.include_overall, bool):
            raise InvalidConfigError(
                "diagnostics.include_overall", f"expected true or false, got {self.include_overall!r}"
            )
        self._validate_parameters()

    def _validate_parameters(self) -> None:
        names = self.parameters
        if names is None:
            return
        if isinstance(names, str) or not isinstance(names, (tuple, list)):
            raise InvalidConfigError(
                "diagnostics.parameters", f"expected a list of parameter names or null, got {names!r}"
            )
        if not names:
            raise InvalidConfigError("diagnostics.parameters", "expected at least one parameter name, got none")
        if not all(isinstance(n, str) and n for n in names):
            raise InvalidConfigError("diagnostics.parameters", f"expected non-empty strings, got {names!r}")
        if len(set(names)) != len(names):
            raise InvalidConfigError("diagnostics.parameters", f"names must be unique, got {names!r}")
        object.__setattr__(self, "parameters", tuple(names))

    def to_dict(self) -> dict:
        return {
            "probes": self.probes,
            "power_iterations": self.power_iterations,
            "power_tolerance": float(self.power_tolerance),
            "batch_size": self.batch_size,
            "seed": self.seed,
            "parameters": None if self.parameters is None else list(self.parameters),
            "include_overall": self.include_overall,
        }


# --------------------------------------------------------------------------- results


@dataclass(frozen=True)
class GroupDiagnostics:
    """The numbers for one group; every field but `group` and `n` is None when n = 0.

    top_eigenvalue is the dominant (largest-magnitude) eigenvalue of H_a, signed; near a
    minimum it is the largest eigenvalue. power_iterations_used counts the HVP passes spent.
    """

    group: str
    n: int
    loss: float | None
    grad_norm: float | None
    hessian_trace: float | None
    hessian_trace_stderr: float | None
    top_eigenvalue: float | None
    power_iterations_used: int | None
    mean_uncertainty: float | None
    mean_margin: float | None
    mean_logit_margin: float | None

    @classmethod
    def empty(cls, group: str) -> GroupDiagnostics:
        return cls(group, 0, None, None, None, None, None, None, None, None, None)

    def to_dict(self) -> dict:
        return {
            "group": self.group,
            "n": self.n,
            "loss": json_float(self.loss),
            "grad_norm": json_float(self.grad_norm),
            "hessian_trace": json_float(self.hessian_trace),
            "hessian_trace_stderr": json_float(self.hessian_trace_stderr),
            "top_eigenvalue": json_float(self.top_eigenvalue),
            "power_iterations_used": self.power_iterations_used,
            "mean_uncertainty": json_float(self.mean_uncertainty),
            "mean_margin": json_float(self.mean_margin),
            "mean_logit_margin": json_float(self.mean_logit_margin),
        }


@dataclass(frozen=True)
class _DenseState:
    """What `diagnose` keeps for later predictions: gradients and a check of the weights.

    gradients maps a group index (-1 for overall) to g_a in float64. The weight fingerprint
    (per-parameter sum and sum of squares) catches a model pruned in place after diagnosis:
    its w_P would read as zero and its HVPs would no longer be taken at θ*.
    """

    gradients: Mapping[int, Vector]
    fingerprint: tuple[tuple[float, float], ...]
    group_names: tuple[str, ...]
    group_counts: tuple[int, ...]


@dataclass(frozen=True)
class Diagnostics:
    """Per-group diagnostics of one dense model on one data split."""

    groups: tuple[GroupDiagnostics, ...]
    overall: GroupDiagnostics | None
    config: DiagnosticsConfig
    parameters: tuple[str, ...]
    num_parameters: int
    _state: _DenseState = field(repr=False, compare=False)

    def predict_excess_loss(self, model: nn.Module, data: GroupedData, masks: Masks) -> tuple[PredictedExcessLoss, ...]:
        """`predict_excess_loss` reusing these diagnostics (one HVP pass per group)."""
        # Imported here: the prediction module imports these types, so a top-level import
        # would be circular.
        from equiprune.engine.diagnostics_prediction import predict_excess_loss

        return predict_excess_loss(model, data, masks, diagnostics=self)

    def group(self, name: str) -> GroupDiagnostics:
        for g in self.groups:
            if g.group == name:
                return g
        raise KeyError(name)

    def to_dict(self) -> dict:
        return {
            "parameters": list(self.parameters),
            "num_parameters": self.num_parameters,
            "config": self.config.to_dict(),
            "groups": [g.to_dict() for g in self.groups],
            "overall": None if self.overall is None else self.overall.to_dict(),
        }


@dataclass(frozen=True)
class PredictedExcessLoss:
    """Taylor prediction of R(a) = J(θ*−w_P; D_a) − J(θ*; D_a) for one group and mask set.

    first_order = −g_aᵀ w_P, second_order = ½ w_Pᵀ H_a w_P, predicted = their sum;
    upper_bound = ‖g_a‖·‖w_P‖ + ½·|λ|·‖w_P‖² with λ the dominant eigenvalue (|λ| bounds the
    largest eigenvalue from above even when λ is negative). None when the group is empty.
    """

    group: str
    n: int
    pruned_norm: float
    first_order: float | None
    second_order: float | None
    predicted: float | None
    upper_bound: float | None

    def to_dict(self) -> dict:
        return {
            "group": self.group,
            "n": self.n,
            "pruned_norm": json_float(self.pruned_norm),
            "first_order": json_float(self.first_order),
            "second_order": json_float(self.second_order),
            "predicted": json_float(self.predicted),
            "upper_bound": json_float(self.upper_bound),
        }
