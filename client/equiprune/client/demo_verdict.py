"""The demo's verdict: what one run of dense → pruned → naive → fair shows, in plain words.

It reads only the jobs' reports on the evaluation split (data no model trained on) and says:
- where pruning hurt, and whether it broke ε at all (no damage, nothing to repair);
- whether fair fine-tuning kept every group within ε, and whether naive did;
- whether the two fine-tuned models differ beyond the noise of this one run (do their
  intervals for the worst group overlap?), and what the repair cost in accuracy.
Every sentence is computed from the numbers; a run that shows no repair says so.
"""

from __future__ import annotations

from dataclasses import dataclass

from equiprune.v1 import reports_pb2

_SEEDS_DOC = "docs/results/demo-setup.md re-checks this set-up on other splits"


@dataclass(frozen=True)
class Verdict:
    kept: bool | None       # fair fine-tuning kept every group within ε (None: not judged)
    lines: tuple[str, ...]

    def text(self) -> str:
        return "\n".join(self.lines)


def _pts(fraction: float) -> str:
    return f"{100 * fraction:+.1f}"


def _pct(fraction: float) -> str:
    return f"{100 * fraction:.1f} %"


def _group(report: reports_pb2.GroupReport, name: str) -> reports_pb2.GroupMetrics | None:
    return next((g for g in report.groups if g.group == name), None)


def _ci(g: reports_pb2.GroupMetrics) -> tuple[float, float]:
    lo = g.accuracy_ci_low if g.HasField("accuracy_ci_low") else g.accuracy
    hi = g.accuracy_ci_high if g.HasField("accuracy_ci_high") else g.accuracy
    return lo, hi


def demo_verdict(dense: reports_pb2.GroupReport, pruned: reports_pb2.GroupReport,
                 naive: reports_pb2.GroupReport, fair: reports_pb2.GroupReport, *,
                 sparsity: float, split: str, fair_name: str) -> Verdict:
    """The verdict on one split from the four stages' reports (fractions in, points out)."""
    s = pruned.summary
    if not s.HasField("tolerance") or not fair.summary.HasField("tolerance_met"):
        return Verdict(None, (f"verdict: no judgement possible — the reports on {split!r} carry no tolerance verdict "
                              "(groups too small to judge?)",))
    eps = s.tolerance
    lines = []
    hurt = s.max_excess_accuracy_gap_group
    before, after = _group(dense, hurt), _group(pruned, hurt)
    damage = (f"pruning to {sparsity:.0%} hurt the {hurt} group most on the {split} split (data no model trained "
              f"on): its accuracy fell from {_pct(before.accuracy)} to {_pct(after.accuracy)}, ψ_g "
              f"{_pts(s.max_excess_accuracy_gap)} points against ε = {100 * eps:g}") if before and after else ""
    if s.tolerance_met:
        lines.append(f"verdict: pruning alone kept every group within ε = {100 * eps:g} points (max ψ_g "
                     f"{_pts(s.max_excess_accuracy_gap)}, {hurt}), so this run has no damage to repair; "
                     "it cannot show the fair method working.")
    else:
        lines.append(f"{damage}.")
    f, n = fair.summary, naive.summary
    fair_words = (f"{fair_name} kept every group within ε (worst ψ_g {_pts(f.max_excess_accuracy_gap)}, "
                  f"{f.max_excess_accuracy_gap_group})" if f.tolerance_met else
                  f"{fair_name} did NOT keep every group within ε (ψ_g {_pts(f.max_excess_accuracy_gap)}, "
                  f"{f.max_excess_accuracy_gap_group})")
    naive_words = (f"naive fine-tuning also did ({_pts(n.max_excess_accuracy_gap)}, {n.max_excess_accuracy_gap_group})"
                   if n.tolerance_met else
                   f"naive fine-tuning did not ({_pts(n.max_excess_accuracy_gap)}, {n.max_excess_accuracy_gap_group})")
    if not s.tolerance_met:
        head = "verdict: promise kept — " if f.tolerance_met and not n.tolerance_met else \
            "verdict: both repaired — " if f.tolerance_met else \
            "verdict: promise NOT kept — " if n.tolerance_met else "verdict: not repaired — "
        lines.append(f"{head}{fair_words}; {naive_words}.")
        if not f.tolerance_met and not n.tolerance_met:
            change = n.max_excess_accuracy_gap - f.max_excess_accuracy_gap
            lines.append(f"{fair_name} {'narrowed' if change > 0 else 'did not narrow'} the worst gap against "
                         f"naive ({abs(100 * change):.1f} points {'less' if change > 0 else 'more'}).")
    lines.append(_noise(naive, fair, hurt, fair_name))
    lines.append(f"overall accuracy: dense {_pct(dense.overall.accuracy)}, pruned {_pct(pruned.overall.accuracy)}, "
                 f"naive {_pct(naive.overall.accuracy)}, {fair_name} {_pct(fair.overall.accuracy)}.")
    return Verdict(bool(f.tolerance_met), tuple(lines))


def _noise(naive: reports_pb2.GroupReport, fair: reports_pb2.GroupReport, group: str, fair_name: str) -> str:
    """Whether this one run separates the two fine-tuned models for the group pruning hurt."""
    a, b = _group(naive, group), _group(fair, group)
    if a is None or b is None or not a.HasField("accuracy") or not b.HasField("accuracy"):
        return f"(the {group} group has no accuracy in one of the fine-tuned reports)"
    (alo, ahi), (blo, bhi) = _ci(a), _ci(b)
    span = f"{group}: naive {_pct(a.accuracy)} [{100 * alo:.1f}, {100 * ahi:.1f}], {fair_name} " \
           f"{_pct(b.accuracy)} [{100 * blo:.1f}, {100 * bhi:.1f}]"
    if alo <= bhi and blo <= ahi:
        return (f"one run, and the 95 % intervals overlap ({span}): this run alone does not show {fair_name} "
                f"beating naive beyond noise; {_SEEDS_DOC}.")
    better = fair_name if b.accuracy > a.accuracy else "naive fine-tuning"
    return f"the 95 % intervals do not overlap ({span}): {better} is ahead beyond this run's sampling noise."
