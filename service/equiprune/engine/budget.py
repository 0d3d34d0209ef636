"""Compression budget search: the highest sparsity at which every group stays within ε.

Each probe prunes the dense model at one sparsity, fine-tunes it and measures the per-group
report on evaluation data; that is expensive, so the search bisects between a sparsity known
to be safe and one known to break the tolerance. Bisection assumes the violation grows with
sparsity, which the paper and our runs show on average; the full list of probes (the
frontier) is returned so a reader can see where that assumption wobbled.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields

from .errors import InvalidConfigError
from .jsonable import json_safe
from .report import GroupReport


@dataclass(frozen=True)
class BudgetConfig:
    """tolerance: ε on every group's excess accuracy gap ψ_g.
    require_confidence: judge by every ψ_g's upper 95 % bound instead of the point estimate.
    """

    tolerance: float = 0.01
    low: float = 0.5
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
class BudgetResult:
    best_sparsity: float | None  # None: even `low` broke the tolerance
    frontier: tuple[BudgetProbe, ...]  # every probe, sorted by sparsity
    config: BudgetConfig

    def to_dict(self) -> dict:
        return json_safe({
            "best_sparsity": self.best_sparsity,
            "frontier": [vars(p) for p in self.frontier],
            "config": self.config.to_dict(),
        })


def search_budget(
    probe: Callable[[float], GroupReport],
    config: BudgetConfig,
    *,
    on_probe: Callable[[BudgetProbe], None] | None = None,
) -> BudgetResult:
    """Bisect for the largest sparsity whose report meets the tolerance.

    `probe(sparsity)` prunes the dense model, fine-tunes it and returns its report on the data
    the decision should rest on (a validation split, ideally not the final test split).
    """
    probes: list[BudgetProbe] = []

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
        if on_probe is not None:
            on_probe(result)
        return result.met

    best = None
    if run(config.low):
        best, safe, unsafe = config.low, config.low, config.high
        if run(config.high):
            best = config.high
        else:
            while unsafe - safe > config.resolution and len(probes) < config.max_probes:
                middle = round((safe + unsafe) / 2, 6)
                if run(middle):
                    best = safe = middle
                else:
                    unsafe = middle
    return BudgetResult(best, tuple(sorted(probes, key=lambda p: p.sparsity)), config)
