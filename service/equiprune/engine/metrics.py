"""Per-group metrics from counts: the one place their formulas live.

Job reports (engine/report.py), the production monitor's windows (service/serving/monitor/windows.py)
and the client tests' fake server all turn per-group tallies into the same numbers, so they
all call `group_metrics` here. Like fairlearn's MetricFrame it goes counts → by group →
overall → differences to a reference → intervals → a summary, but on counts rather than
samples: the monitor only ever has counts, and a job's per-sample data reduces to them
(the paired comparison needs one more count per group, see `Reference.discordant`).

Pure Python on purpose (no torch, no numpy): the monitor and torch-free processes import it.

Quantities follow science.md: Δ_g = acc_g(reference) − acc_g(model), Δ likewise overall,
ψ_g = Δ_g − Δ (excess accuracy gap), R(g) = J_g(model) − J_g(reference) (excess loss).

Intervals:
- accuracy: Wilson score interval (good coverage for small groups and accuracies near 0/1).
- ψ_g: normal approximation. When the reference was evaluated on the same samples (the usual
  case in a job) the comparison is paired: each sample contributes d_i = c_ref − c_model, so
  only disagreeing samples add variance. Var Δ_g = (p_b + p_c − (p_b − p_c)²)/n_g with the
  discordant rates p_b, p_c shrunk by one pseudo-count each, so that a group with no
  disagreement still gets an interval of honest width. Overall Δ = Σ_h w_h Δ_h with group
  shares w_h, hence ψ_g = (1 − w_g) Δ_g − Σ_{h≠g} w_h Δ_h and, groups being disjoint samples,
  Var ψ_g = (1 − w_g)² Var Δ_g + Σ_{h≠g} w_h² Var Δ_h.
  With only reference accuracies (no per-sample data), the reference is treated as exact and
  only the model's sampling noise enters.
A tolerance ε is "met with confidence" when every judged group's ψ_g upper bound is ≤ ε.

A number that is undefined (no sample, no reference) is None, never NaN. The arithmetic is
written operation for operation as report.py did it with float64 tensors, so that moving the
formulas here left every report's numbers bit-for-bit as they were.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

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


# ------------------------------------------------------------------ input


@dataclass(frozen=True)
class Tally:
    """One group's (or all groups') counts for one model: samples, correct ones, and the sum of
    the per-sample losses where the caller has them (the monitor does not)."""

    n: int
    correct: float
    loss_sum: float | None = None


@dataclass(frozen=True)
class Reference:
    """What the model is compared with (the dense model).

    accuracy: per-group reference accuracies; a group left out has no Δ_g or ψ_g.
    overall_accuracy: None → the n-weighted mean of the references of the groups that have
        samples, Σ n_h r_h / Σ n_h (integer weights, summed in the groups' order).
    loss, overall_loss: mean losses, when known (they give R(g)).
    discordant: per group (samples only the reference got right, samples only the model got
        right) when the reference ran on the same samples: the ψ_g intervals are then paired.
    """

    accuracy: Mapping[str, float]
    overall_accuracy: float | None = None
    loss: Mapping[str, float] = field(default_factory=dict)
    overall_loss: float | None = None
    discordant: Mapping[str, tuple[int, int]] | None = None

    @property
    def paired(self) -> bool:
        return self.discordant is not None


# ------------------------------------------------------------------ output


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
    excess_loss: float | None = None  # R(g)
    sufficient_data: bool = True


@dataclass(frozen=True)
class OverallMetrics:
    n: int
    accuracy: float | None  # None only without any sample
    accuracy_ci_low: float | None
    accuracy_ci_high: float | None
    loss: float | None
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
class MetricFrame:
    """Per-group and overall metrics of one model on one set of samples."""

    groups: tuple[GroupMetrics, ...]  # in the order the tallies were given
    overall: OverallMetrics
    summary: DisparitySummary
    paired: bool  # whether ψ_g intervals used paired per-sample comparison
    min_group_size: int

    def group(self, name: str) -> GroupMetrics:
        for g in self.groups:
            if g.group == name:
                return g
        raise KeyError(name)


# ------------------------------------------------------------------ the computation


def group_metrics(
    tallies: Mapping[str, Tally],
    reference: Reference | None = None,
    *,
    overall: Tally | None = None,
    tolerance: float | None = None,
    min_group_size: int = 1,
    gap_intervals: bool = True,
) -> MetricFrame:
    """The metrics of a model from its per-group `tallies` (in display order), compared with
    `reference` when given. `overall` defaults to the sum of the tallies; a caller passes its
    own where it has a more exact total (a job's loss summed over samples in one pass, which
    rounds differently from a sum of group sums). Groups with fewer than `min_group_size`
    samples (and empty ones) are reported but never judged in the summary. `gap_intervals`
    False leaves the ψ_g intervals (and so `tolerance_met_with_confidence`) unset: their
    variance sum is quadratic in the groups, and the monitor, with up to 256 groups per model
    and a scrape every few seconds, shows none."""
    names = list(tallies)
    counts = [tallies[name].n for name in names]
    if overall is None:
        losses = [t.loss_sum for t in tallies.values()]
        overall = Tally(sum(counts), sum(t.correct for t in tallies.values()),
                        None if None in losses else sum(losses))
    total = max(sum(counts), 1)
    weights = [n / total for n in counts]
    refs = [reference.accuracy.get(name) if reference is not None else None for name in names]

    overall_metrics = _overall(overall, reference, counts, refs)
    drop_var = _drop_variances(tallies, reference) if reference is not None and gap_intervals else None
    groups = []
    for g, name in enumerate(names):
        tally, ref = tallies[name], refs[g]
        if tally.n <= 0:
            groups.append(GroupMetrics(name, 0, None, None, None, None, sufficient_data=False))
            continue
        acc = tally.correct / tally.n
        low, high = wilson_interval(tally.correct, tally.n)
        loss = tally.loss_sum / tally.n if tally.loss_sum is not None else None
        metrics = dict(group=name, n=tally.n, accuracy=acc, accuracy_ci_low=low, accuracy_ci_high=high, loss=loss,
                       sufficient_data=tally.n >= min_group_size)
        if ref is not None:
            drop = ref - acc
            metrics.update(reference_accuracy=ref, accuracy_drop=drop)
            if overall_metrics.accuracy_drop is not None:
                psi = drop - overall_metrics.accuracy_drop
                metrics.update(excess_accuracy_gap=psi)
            if drop_var is not None and "excess_accuracy_gap" in metrics:
                # (1 − w_g)² Var Δ_g first, then the other groups' terms in order: report.py's order.
                own = 1 - weights[g]
                var = own * own * drop_var[g] + sum(
                    weights[h] * weights[h] * drop_var[h] for h in range(len(names)) if h != g and counts[h] > 0)
                se = math.sqrt(var)
                metrics.update(excess_accuracy_gap_ci_low=psi - Z_95 * se, excess_accuracy_gap_ci_high=psi + Z_95 * se)
            ref_loss = reference.loss.get(name)
            if ref_loss is not None and loss is not None:
                metrics.update(reference_loss=ref_loss, excess_loss=loss - ref_loss)
        groups.append(GroupMetrics(**metrics))

    return MetricFrame(
        groups=tuple(groups),
        overall=overall_metrics,
        summary=summarise(groups, tolerance),
        paired=reference is not None and reference.paired,
        min_group_size=min_group_size,
    )


def _overall(tally: Tally, reference: Reference | None, counts: list[int], refs: list[float | None]) -> OverallMetrics:
    accuracy = low = high = loss = None
    if tally.n > 0:
        accuracy = tally.correct / tally.n
        low, high = wilson_interval(tally.correct, tally.n)
        if tally.loss_sum is not None:
            loss = tally.loss_sum / tally.n
    if reference is None:
        return OverallMetrics(tally.n, accuracy, low, high, loss)
    ref = reference.overall_accuracy
    if ref is None:
        weighted = [(n, r) for n, r in zip(counts, refs) if n > 0 and r is not None]
        n_ref = sum(n for n, _ in weighted)
        ref = sum(n * r for n, r in weighted) / n_ref if n_ref else None
    drop = ref - accuracy if ref is not None and accuracy is not None else None
    return OverallMetrics(tally.n, accuracy, low, high, loss, reference_accuracy=ref,
                          reference_loss=reference.overall_loss, accuracy_drop=drop)


def _drop_variances(tallies: Mapping[str, Tally], reference: Reference) -> list[float]:
    """Variance of each group's Δ_g estimate (0 for a group without samples, which no ψ_g
    interval then counts)."""
    variances = []
    for name, tally in tallies.items():
        n = max(tally.n, 1)
        if reference.discordant is None:
            acc = tally.correct / n
            variances.append(acc * (1 - acc) / n if tally.n > 0 else 0.0)
            continue
        # Discordant counts: b samples only the reference got right, c only the model. With the
        # plain sample variance a group without disagreements would get a zero-width interval;
        # adding one pseudo-disagreement of each sign (Agresti–Caffo style) keeps it honest.
        b, c = reference.discordant.get(name, (0, 0))
        p_b, p_c = (b + 1) / (n + 2), (c + 1) / (n + 2)
        d = p_b - p_c
        variances.append((p_b + p_c - d * d) / n)
    return variances


def summarise(groups: list[GroupMetrics] | tuple[GroupMetrics, ...], tolerance: float | None) -> DisparitySummary:
    """Worst group, parity gap, max ψ_g and the tolerance verdict over the judged groups (with
    samples and sufficient data); ties go to the first group in order."""
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
            if all(g.excess_accuracy_gap_ci_high is not None for g in with_psi):
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
