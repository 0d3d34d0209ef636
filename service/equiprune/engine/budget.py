"""Compression budget search: the highest sparsity at which every group stays within ε.

Each probe prunes the dense model at one sparsity, fine-tunes it and measures the per-group
report on evaluation data; that is expensive, so the search brackets and bisects:

1. it probes `low` (0.1 by default: a sparsity most models survive);
2. when `low` holds, it probes `high`; when that breaks the tolerance it bisects between the
   two until the bracket is `resolution` narrow or `max_probes` are spent;
3. when `low` already breaks it, it halves the sparsity (down to 1 %) until one holds, then
   bisects between that one and the lowest that broke.

When no probe holds, the result carries a `BudgetShortfall`: the group that broke the
tolerance at the lowest sparsity probed, its ψ_g against ε, and what the engine can honestly
suggest. Bisection assumes the violation grows with sparsity, which the paper and our runs
show on average; the full list of probes (the frontier) is returned so a reader can see
where that assumption wobbled.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, fields

from .errors import InvalidConfigError
from .jsonable import json_safe
from .report import GroupReport

# The search never halves below this sparsity: a model 1 % pruned is the dense model for
# every practical purpose, and a gap there is not the pruning's doing.
FLOOR = 0.01


@dataclass(frozen=True)
class BudgetConfig:
    """tolerance: ε on every group's excess accuracy gap ψ_g, a fraction (0.01 = 1 point).
    low: the first probe and the bottom of the bracket; when it breaks ε the search halves it.
    high: the top of the bracket. resolution: stop bisecting when the bracket is this narrow.
    require_confidence: judge by every ψ_g's upper 95 % bound instead of the point estimate.
    """

    tolerance: float = 0.01
    low: float = 0.1
    high: float = 0.95
    resolution: float = 0.025
    max_probes: int = 8
    require_confidence: bool = False

    def __post_init__(self) -> None:
        if not 0 <= self.tolerance < 1:  # the comparisons also refuse NaN
            raise InvalidConfigError("budget.tolerance", f"must be in [0, 1), got {self.tolerance}")
        if not 0 <= self.low < self.high < 1:
            raise InvalidConfigError("budget.high", f"need 0 <= low < high < 1, got low={self.low}, high={self.high}")
        if not 0 < self.resolution < 1:  # also refuses NaN and infinity
            raise InvalidConfigError("budget.resolution", f"must be in (0, 1), got {self.resolution}")
        if not 2 <= self.max_probes <= 64:
            raise InvalidConfigError("budget.max_probes", f"must be 2 (the two ends) to 64, got {self.max_probes}")

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass(frozen=True)
class BudgetProbe:
    sparsity: float
    accuracy: float
    worst_group_accuracy: float | None
    max_excess_accuracy_gap: float | None
    met: bool


@dataclass(frozen=True)
class BudgetShortfall:
    """Why no probed sparsity held: at the lowest one, the group whose ψ_g (or its upper 95 %
    bound, under require_confidence) was furthest over ε, and what to try. Fields are named as
    the proto BudgetShortfall's; fractions, like every report number."""

    sparsity: float
    group: str
    n: int
    excess_accuracy_gap: float
    excess_accuracy_gap_ci_high: float | None
    tolerance: float
    judged_with_confidence: bool
    suggestions: tuple[str, ...]

    def to_dict(self) -> dict:
        return json_safe(asdict(self))


@dataclass(frozen=True)
class BudgetResult:
    best_sparsity: float | None  # None: no probe held, not even the lowest
    frontier: tuple[BudgetProbe, ...]  # every probe, sorted by sparsity
    config: BudgetConfig
    shortfall: BudgetShortfall | None = None  # set exactly when best_sparsity is None

    def to_dict(self) -> dict:
        return json_safe({
            "best_sparsity": self.best_sparsity,
            "frontier": [vars(p) for p in self.frontier],
            "config": self.config.to_dict(),
            "shortfall": self.shortfall.to_dict() if self.shortfall is not None else None,
        })


def search_budget(
    probe: Callable[[float], GroupReport],
    config: BudgetConfig,
    *,
    on_probe: Callable[[BudgetProbe], None] | None = None,
    pruning_kind: str = "unstructured",
    finetuned: str | None = None,
    measured: Callable[[float], float] = lambda target: target,
) -> BudgetResult:
    """Bracket and bisect for the largest sparsity whose report meets the tolerance.

    `probe(sparsity)` prunes the dense model, fine-tunes it and returns its report on the data
    the decision should rest on (a validation split, ideally not the final test split).
    `pruning_kind` and `finetuned` (how the probes were fine-tuned, e.g. "fair_distill for 3
    epochs"; None: not at all) only shape the suggestions of a shortfall. `measured(target)`:
    the sparsity the probe at `target` really reached (pruning rounds per layer), which a
    shortfall reports and advises on.
    """
    probes: list[BudgetProbe] = []
    reports: dict[float, GroupReport] = {}

    def run(sparsity: float) -> bool:
        report = probe(sparsity)
        summary = report.summary
        met = summary.tolerance_met_with_confidence if config.require_confidence else summary.tolerance_met
        if met is None:
            raise InvalidConfigError("job.min_group_size", "no group has enough samples to be judged, so no "
                                     "sparsity can be shown to meet the tolerance; lower min_group_size")
        result = BudgetProbe(
            sparsity=sparsity,
            accuracy=report.overall.accuracy,
            worst_group_accuracy=summary.worst_group_accuracy,
            max_excess_accuracy_gap=summary.max_excess_accuracy_gap,
            met=bool(met),
        )
        probes.append(result)
        reports[sparsity] = report
        if on_probe is not None:
            on_probe(result)
        return result.met

    def left() -> bool:
        return len(probes) < config.max_probes

    safe = unsafe = None
    if run(config.low):
        safe, unsafe = config.low, config.high
        if run(config.high):
            safe = unsafe = config.high
    else:
        unsafe, lower = config.low, round(config.low / 2, 6)
        while lower >= FLOOR and left():
            if run(lower):
                safe = lower
                break
            unsafe, lower = lower, round(lower / 2, 6)
    if safe is not None:
        while unsafe - safe > config.resolution and left():
            middle = round((safe + unsafe) / 2, 6)
            if run(middle):
                safe = middle
            else:
                unsafe = middle
    frontier = tuple(sorted(probes, key=lambda p: p.sparsity))
    shortfall = None
    if safe is None:
        lowest = frontier[0].sparsity
        shortfall = budget_shortfall(reports[lowest], measured(lowest), config, pruning_kind=pruning_kind,
                                     finetuned=finetuned)
    return BudgetResult(safe, frontier, config, shortfall)


def budget_shortfall(report: GroupReport, sparsity: float, config: BudgetConfig, *,
                     pruning_kind: str = "unstructured", finetuned: str | None = None) -> BudgetShortfall:
    """The group that broke ε in `report` (the lowest probe's) and what to try instead."""
    judged = [g for g in report.groups if g.sufficient_data and g.excess_accuracy_gap is not None]
    if config.require_confidence:
        def score(g):
            return g.excess_accuracy_gap_ci_high if g.excess_accuracy_gap_ci_high is not None else g.excess_accuracy_gap
    else:
        def score(g):
            return g.excess_accuracy_gap
    worst = max(judged, key=score)
    return BudgetShortfall(
        sparsity=sparsity, group=worst.group, n=worst.n, excess_accuracy_gap=worst.excess_accuracy_gap,
        excess_accuracy_gap_ci_high=worst.excess_accuracy_gap_ci_high, tolerance=config.tolerance,
        judged_with_confidence=config.require_confidence,
        suggestions=_suggestions(worst, score(worst), sparsity, config, pruning_kind, finetuned))


def _suggestions(worst, judged_gap: float, sparsity: float, config: BudgetConfig, pruning_kind: str,
                 finetuned: str | None) -> tuple[str, ...]:
    """What could make a probe hold, in the order most likely to help; every tolerance in
    points, as the CLIs take it."""
    tips = []
    needed = _ceil_points(judged_gap)
    if needed < 100:
        tips.append(f"a larger tolerance: ε of {needed:g} points (--tolerance {needed:g}) would have accepted "
                    f"sparsity {sparsity:.3f}, if a gap that size is acceptable for {worst.group}")
    high, low = worst.excess_accuracy_gap_ci_high, None
    if worst.excess_accuracy_gap_ci_low is not None:
        low = worst.excess_accuracy_gap_ci_low
    if high is not None and low is not None and (high - low) / 2 > config.tolerance:
        tips.append(f"more evaluation data for {worst.group}: with n = {worst.n} its ψ_g 95% interval "
                    f"[{100 * low:+.2f}, {100 * high:+.2f}] points is wider than ε, so noise alone can break it")
    if config.require_confidence and worst.excess_accuracy_gap <= config.tolerance:
        tips.append(f"judge by the point estimate (leave out --require-confidence): {worst.group}'s ψ_g "
                    f"{100 * worst.excess_accuracy_gap:+.2f} points is within ε; only its upper bound is not")
    if finetuned is None:
        tips.append("fine-tune every probe (a fine-tuning method, e.g. fair_distill, the fair default) to "
                    "repair the damage before it is judged")
    else:
        tips.append(f"the probes were fine-tuned ({finetuned}): more epochs may repair more, and a search "
                    "without fine-tuning shows whether fine-tuning itself moved the gap")
    if pruning_kind == "structured":
        tips.append("unstructured pruning (--kind unstructured): removing single weights usually costs a group "
                    "less than removing whole channels at the same sparsity")
    if sparsity <= 2 * FLOOR:
        tips.append(f"at sparsity {sparsity:.3f} the model is nearly dense: a gap this large more likely comes "
                    "from fine-tuning or sampling noise than from the pruning")
    return tuple(tips)


def _ceil_points(fraction: float) -> float:
    """The fraction in points, rounded up to a tenth of a point (at least 0.1)."""
    tenths = -(-round(fraction * 1000, 6) // 1)
    return max(tenths, 1) / 10
