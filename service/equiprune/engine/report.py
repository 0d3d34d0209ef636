"""The per-group report of a job: an Evaluation reduced to counts, measured by engine/metrics.py.

The formulas (Wilson intervals, Δ_g, ψ_g and its paired or unpaired interval, the summary and
the tolerance verdict) live in engine/metrics.py, shared with the production monitor. This
module only turns per-sample Evaluations into the counts the core takes, and keeps the report's
public shape: GroupReport (= the core's MetricFrame plus `to_dict`), build_report.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields

import torch

from .evaluation import Evaluation
from .jsonable import json_safe
from .metrics import (Z_95, DisparitySummary, GroupMetrics, MetricFrame, OverallMetrics, Reference, Tally,
                      group_metrics, wilson_interval)

__all__ = ["Z_95", "DisparitySummary", "GroupMetrics", "GroupReport", "OverallMetrics", "build_report",
           "wilson_interval"]


@dataclass(frozen=True)
class GroupReport(MetricFrame):
    """Per-group and overall metrics of one model on one data split."""

    def to_dict(self) -> dict:
        return json_safe(asdict(self))


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
    ref = None
    if isinstance(reference, Evaluation):
        if not _same_samples(current, reference):
            raise ValueError("reference evaluation must cover the same samples in the same order")
        ref = _paired_reference(current, reference)
    elif reference is not None:
        unknown = set(reference) - set(names)
        if unknown:
            raise ValueError(f"reference names unknown groups: {sorted(unknown)}")
        # NaN meant "no reference for this group" before the core took None for it.
        ref = Reference(accuracy={k: v for k, v in reference.items() if not math.isnan(v)},
                        overall_accuracy=reference_overall_accuracy)
    frame = group_metrics(_tallies(current), ref, overall=_overall_tally(current), tolerance=tolerance,
                          min_group_size=min_group_size)
    return GroupReport(**{f.name: getattr(frame, f.name) for f in fields(frame)})


def _tallies(ev: Evaluation) -> dict[str, Tally]:
    n, correct, loss = ev.group_counts().tolist(), ev.group_correct().tolist(), ev.group_loss_sum().tolist()
    return {name: Tally(n[g], correct[g], loss[g]) for g, name in enumerate(ev.group_names)}


def _overall_tally(ev: Evaluation) -> Tally:
    # The loss summed over all samples in one pass (as mean_loss does), not as a sum of group
    # sums: the two round differently and reports have always shown the former.
    return Tally(len(ev), float(ev.correct.sum()), float(ev.loss.double().sum()))


def _paired_reference(current: Evaluation, dense: Evaluation) -> Reference:
    tallies = _tallies(dense)
    d = dense.correct.double() - current.correct.double()
    size = len(current.group_names)
    only_dense = torch.bincount(current.groups, weights=(d > 0).double(), minlength=size).tolist()
    only_model = torch.bincount(current.groups, weights=(d < 0).double(), minlength=size).tolist()
    present = [name for name, t in tallies.items() if t.n > 0]
    return Reference(
        accuracy={name: tallies[name].correct / tallies[name].n for name in present},
        overall_accuracy=dense.accuracy(),
        loss={name: tallies[name].loss_sum / tallies[name].n for name in present},
        overall_loss=dense.mean_loss(),
        discordant={name: (only_dense[g], only_model[g]) for g, name in enumerate(current.group_names)},
    )


def _same_samples(a: Evaluation, b: Evaluation) -> bool:
    return len(a) == len(b) and a.group_names == b.group_names and torch.equal(a.groups, b.groups)
