"""The per-group report: one schema for jobs, the API and the production monitor.

Quantities follow science.md: Δ_g = acc_g(dense) − acc_g(model), Δ likewise overall,
ψ_g = Δ_g − Δ (excess accuracy gap), R(a) = J_a(model) − J_a(dense) (excess loss).

Intervals:
- accuracy: Wilson score interval (good coverage for small groups and accuracies near 0/1).
- ψ_g: normal approximation. When the reference was evaluated on the same samples (the usual
  case in a job) the comparison is paired: each sample contributes d_i = c_dense − c_model, so
  only disagreeing samples add variance. Var Δ_g = (p_b + p_c − (p_b − p_c)²)/n_g with the
  discordant rates p_b, p_c shrunk by one pseudo-count each, so that a group with no
  disagreement still gets an interval of honest width. Overall Δ = Σ_h w_h Δ_h with group shares w_h, hence
  ψ_g = (1 − w_g) Δ_g − Σ_{h≠g} w_h Δ_h and, groups being disjoint samples,
  Var ψ_g = (1 − w_g)² Var Δ_g + Σ_{h≠g} w_h² Var Δ_h.
  With only reference accuracies (no per-sample data), the reference is treated as exact and
  only the model's sampling noise enters.
A tolerance ε is "met with confidence" when every group's ψ_g upper bound is ≤ ε.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass

import torch

from .evaluation import Evaluation
from .jsonable import json_safe

Z_95 = 1.959963984540054


def wilson_interval(successes: float, n: int, z: float = Z_95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion; (nan, nan) when n == 0."""
    if n <= 0:
        return (math.nan, math.nan)
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


@dataclass(frozen=True)
class GroupMetrics:
    group: str
    n: int
    accuracy: float | None
    accuracy_ci_low: float | None
    accuracy_ci_high: float | None
    loss: float | None
    reference_accuracy: float | None = None
    reference_loss: float | None = None
    accuracy_drop: float | None = None  # Δ_g
    excess_accuracy_gap: float | None = None  # ψ_g
    excess_accuracy_gap_ci_low: float | None = None
    excess_accuracy_gap_ci_high: float | None = None
    excess_loss: float | None = None  # R(a)
    sufficient_data: bool = True


@dataclass(frozen=True)
class OverallMetrics:
    n: int
    accuracy: float
    accuracy_ci_low: float
    accuracy_ci_high: float
    loss: float
    reference_accuracy: float | None = None
    reference_loss: float | None = None
    accuracy_drop: float | None = None  # Δ


@dataclass(frozen=True)
class DisparitySummary:
    worst_group: str | None
    worst_group_accuracy: float | None
    accuracy_parity_gap: float | None  # max_a acc_a − min_a acc_a
    max_excess_accuracy_gap: float | None  # max_g ψ_g, the headline
    max_excess_accuracy_gap_group: str | None
    excess_accuracy_gap_spread: float | None  # max_g ψ_g − min_g ψ_g
    max_pairwise_excess_loss_gap: float | None  # ξ = max |R(a) − R(a')|
    tolerance: float | None
    tolerance_met: bool | None  # point estimate: max ψ_g ≤ ε
    tolerance_met_with_confidence: bool | None  # every ψ_g upper bound ≤ ε
    insufficient_groups: tuple[str, ...]


@dataclass(frozen=True)
class GroupReport:
    """Per-group and overall metrics of one model on one data split."""

    groups: tuple[GroupMetrics, ...]
    overall: OverallMetrics
    summary: DisparitySummary
    paired: bool  # whether ψ_g intervals used paired per-sample comparison
    min_group_size: int

    def to_dict(self) -> dict:
        return json_safe(asdict(self))

    def group(self, name: str) -> GroupMetrics:
        for g in self.groups:
            if g.group == name:
                return g
        raise KeyError(name)


def build_report(
    current: Evaluation,
    reference: Evaluation | Mapping[str, float] | None = None,
    *,
    reference_overall_accuracy: float | None = None,
    tolerance: float | None = None,
    min_group_size: int = 1,
) -> GroupReport:
    """Compare `current` with a dense `reference` (an Evaluation on the same samples, or a
    mapping of per-group reference accuracies with `reference_overall_accuracy`)."""
    names = current.group_names
    n = current.group_counts()
    acc = current.group_accuracy()
    loss = current.group_loss()
    weights = n.double() / max(int(n.sum()), 1)

    ref_acc = ref_loss = None
    paired = isinstance(reference, Evaluation)
    if isinstance(reference, Evaluation):
        if not _same_samples(current, reference):
            raise ValueError("reference evaluation must cover the same samples in the same order")
        ref_acc = reference.group_accuracy()
        ref_loss = reference.group_loss()
        ref_overall_acc, ref_overall_loss = reference.accuracy(), reference.mean_loss()
    elif reference is not None:
        unknown = set(reference) - set(names)
        if unknown:
            raise ValueError(f"reference names unknown groups: {sorted(unknown)}")
        ref_acc = torch.tensor([reference.get(name, math.nan) for name in names], dtype=torch.float64)
        if reference_overall_accuracy is None:
            present = ~torch.isnan(ref_acc) & (n > 0)
            reference_overall_accuracy = float((ref_acc[present] * weights[present]).sum() / weights[present].sum())
        ref_overall_acc, ref_overall_loss = reference_overall_accuracy, None

    overall_acc = current.accuracy()
    lo, hi = wilson_interval(float(current.correct.sum()), len(current))
    overall_drop = (ref_overall_acc - overall_acc) if ref_acc is not None else None
    overall = OverallMetrics(
        n=len(current),
        accuracy=overall_acc,
        accuracy_ci_low=lo,
        accuracy_ci_high=hi,
        loss=current.mean_loss(),
        reference_accuracy=ref_overall_acc if ref_acc is not None else None,
        reference_loss=ref_overall_loss if ref_acc is not None else None,
        accuracy_drop=overall_drop,
    )

    drop_var = _drop_variances(current, reference if paired else None, ref_acc, acc, n)
    groups = []
    for g, name in enumerate(names):
        ng = int(n[g])
        if ng == 0:
            groups.append(GroupMetrics(name, 0, None, None, None, None, sufficient_data=False))
            continue
        lo, hi = wilson_interval(float(current.group_correct()[g]), ng)
        metrics = dict(
            group=name, n=ng, accuracy=float(acc[g]), accuracy_ci_low=lo, accuracy_ci_high=hi,
            loss=float(loss[g]), sufficient_data=ng >= min_group_size,
        )
        if ref_acc is not None and not math.isnan(float(ref_acc[g])):
            drop = float(ref_acc[g] - acc[g])
            psi = drop - overall_drop
            var = (1 - weights[g]) ** 2 * drop_var[g] + sum(
                weights[h] ** 2 * drop_var[h] for h in range(len(names)) if h != g and n[h] > 0
            )
            se = math.sqrt(float(var))
            metrics.update(
                reference_accuracy=float(ref_acc[g]), accuracy_drop=drop, excess_accuracy_gap=psi,
                excess_accuracy_gap_ci_low=psi - Z_95 * se, excess_accuracy_gap_ci_high=psi + Z_95 * se,
            )
            if ref_loss is not None:
                metrics.update(reference_loss=float(ref_loss[g]), excess_loss=float(loss[g] - ref_loss[g]))
        groups.append(GroupMetrics(**metrics))

    return GroupReport(
        groups=tuple(groups),
        overall=overall,
        summary=_summarise(groups, tolerance),
        paired=paired,
        min_group_size=min_group_size,
    )


def _summarise(groups: list[GroupMetrics], tolerance: float | None) -> DisparitySummary:
    judged = [g for g in groups if g.n > 0 and g.sufficient_data]
    insufficient = tuple(g.group for g in groups if not g.sufficient_data)
    if not judged:
        return DisparitySummary(None, None, None, None, None, None, None, tolerance, None, None, insufficient)
    worst = min(judged, key=lambda g: g.accuracy)
    accs = [g.accuracy for g in judged]
    with_psi = [g for g in judged if g.excess_accuracy_gap is not None]
    max_psi = spread = max_psi_group = met = met_conf = None
    if with_psi:
        top = max(with_psi, key=lambda g: g.excess_accuracy_gap)
        max_psi, max_psi_group = top.excess_accuracy_gap, top.group
        spread = max_psi - min(g.excess_accuracy_gap for g in with_psi)
        if tolerance is not None:
            met = max_psi <= tolerance
            met_conf = all(g.excess_accuracy_gap_ci_high <= tolerance for g in with_psi)
    losses = [g.excess_loss for g in judged if g.excess_loss is not None]
    xi = (max(losses) - min(losses)) if len(losses) >= 2 else None
    return DisparitySummary(
        worst_group=worst.group,
        worst_group_accuracy=worst.accuracy,
        accuracy_parity_gap=max(accs) - min(accs),
        max_excess_accuracy_gap=max_psi,
        max_excess_accuracy_gap_group=max_psi_group,
        excess_accuracy_gap_spread=spread,
        max_pairwise_excess_loss_gap=xi,
        tolerance=tolerance,
        tolerance_met=met,
        tolerance_met_with_confidence=met_conf,
        insufficient_groups=insufficient,
    )


def _drop_variances(
    current: Evaluation,
    paired_reference: Evaluation | None,
    ref_acc: torch.Tensor | None,
    acc: torch.Tensor,
    n: torch.Tensor,
) -> torch.Tensor:
    """Variance of each group's Δ_g estimate (zeros where undefined)."""
    size = len(current.group_names)
    if ref_acc is None:
        return torch.zeros(size, dtype=torch.float64)
    nn_ = n.double().clamp(min=1)
    if paired_reference is None:
        return (acc * (1 - acc) / nn_).nan_to_num(0.0)
    d = paired_reference.correct.double() - current.correct.double()
    # Discordant counts: b samples only the reference got right, c only the model. With the
    # plain sample variance a group without disagreements would get a zero-width interval;
    # adding one pseudo-disagreement of each sign (Agresti–Caffo style) keeps it honest.
    b = torch.bincount(current.groups, weights=(d > 0).double(), minlength=size)
    c = torch.bincount(current.groups, weights=(d < 0).double(), minlength=size)
    p_b, p_c = (b + 1) / (nn_ + 2), (c + 1) / (nn_ + 2)
    return (p_b + p_c - (p_b - p_c) ** 2) / nn_


def _same_samples(a: Evaluation, b: Evaluation) -> bool:
    return len(a) == len(b) and a.group_names == b.group_names and torch.equal(a.groups, b.groups)
