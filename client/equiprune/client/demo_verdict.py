"""The demo's verdict: what one run of dense → pruned → naive → fair shows, in plain words.

It reads only the jobs' reports on one split and says:
- where pruning hurt, and whether it broke ε at all (no damage: nothing to repair, no verdict);
- whether fair fine-tuning kept every group within ε, and whether naive did — by the point
  estimate, and whether ε also holds with 95 % confidence;
- whether the two fine-tuned models differ beyond the noise of this one run (do their
  intervals for the group pruning hurt overlap?), and what the repair cost in accuracy.
Every sentence is computed from the numbers; a run that shows no repair says so, and a split
some model trained on is named as such (the promise is about data no model has seen).
Numbers are printed by equiprune.text's formats, as every table prints them.
"""

from __future__ import annotations

from dataclasses import dataclass

from equiprune.text.formats import gap, pct, tolerance
from equiprune.v1 import reports_pb2

_RECHECK_DOC = "docs/results/demo-setup.md re-checks this set-up on other splits"


@dataclass(frozen=True)
class Verdict:
    kept: bool | None       # fair fine-tuning kept every group within ε (None: nothing to judge)
    lines: tuple[str, ...]

    def text(self) -> str:
        return "\n".join(self.lines)


def _group(report: reports_pb2.GroupReport, name: str) -> reports_pb2.GroupMetrics | None:
    return next((g for g in report.groups if g.group == name), None)


def _ci(g: reports_pb2.GroupMetrics) -> tuple[float, float]:
    lo = g.accuracy_ci_low if g.HasField("accuracy_ci_low") else g.accuracy
    hi = g.accuracy_ci_high if g.HasField("accuracy_ci_high") else g.accuracy
    return lo, hi


def _within(summary: reports_pb2.DisparitySummary) -> str:
    """How a fine-tuned model stands against ε: point estimate, then the 95 % bound."""
    worst = f"worst ψ_g {gap(summary.max_excess_accuracy_gap, against=summary.tolerance)}, " \
            f"{summary.max_excess_accuracy_gap_group}"
    if not summary.tolerance_met:
        return worst
    sure = summary.HasField("tolerance_met_with_confidence") and summary.tolerance_met_with_confidence
    return f"{worst}; {'also' if sure else 'but not'} with 95 % confidence"


def demo_verdict(dense: reports_pb2.GroupReport, pruned: reports_pb2.GroupReport,
                 naive: reports_pb2.GroupReport, fair: reports_pb2.GroupReport, *,
                 sparsity: float, split: str, held_out: bool, fair_name: str) -> Verdict:
    """The verdict on `split` from the four stages' reports; `held_out`: no model trained on it."""
    s, f, n = pruned.summary, fair.summary, naive.summary
    if not s.HasField("tolerance") or not f.HasField("tolerance_met") or not n.HasField("tolerance_met"):
        return Verdict(None, (f"verdict: no judgement possible — the reports on {split!r} carry no tolerance verdict "
                              "(groups too small to judge?)",))
    eps = tolerance(s.tolerance)
    where = (f"on the {split} split (data no model trained on)" if held_out else
             f"on the {split or 'whole'} split, which the models trained on (the dataset has no held-out split: "
             "this says nothing about unseen data)")
    hurt = s.max_excess_accuracy_gap_group
    if s.tolerance_met:
        return Verdict(None, (f"verdict: nothing to repair — pruning to {sparsity:.0%} alone kept every group within "
                              f"ε = {eps} {where} (worst ψ_g {gap(s.max_excess_accuracy_gap, against=s.tolerance)}, "
                              f"{hurt}); this run cannot show the fair method working.",
                              _accuracy(dense, pruned, naive, fair, fair_name)))
    lines = []
    before, after = _group(dense, hurt), _group(pruned, hurt)
    fell = f"its accuracy fell from {pct(before, 'accuracy')} to {pct(after, 'accuracy')}, " if before and after else ""
    lines.append(f"pruning to {sparsity:.0%} hurt the {hurt} group most {where}: {fell}ψ_g "
                 f"{gap(s.max_excess_accuracy_gap, against=s.tolerance)} against ε = {eps}.")
    head = ("promise kept" if f.tolerance_met and not n.tolerance_met else "both repaired" if f.tolerance_met else
            "promise NOT kept" if n.tolerance_met else "not repaired")
    fair_words = f"{fair_name} {'kept' if f.tolerance_met else 'did NOT keep'} every group within ε ({_within(f)})"
    naive_words = f"naive fine-tuning {'did too' if n.tolerance_met else 'did not'} ({_within(n)})"
    lines.append(f"verdict: {head} — {fair_words}; {naive_words}.")
    if not f.tolerance_met and not n.tolerance_met:
        change = n.max_excess_accuracy_gap - f.max_excess_accuracy_gap
        lines.append(f"{fair_name} {'narrowed' if change > 0 else 'did not narrow'} the worst gap against naive "
                     f"({abs(100 * change):.2f} points {'less' if change > 0 else 'more'}).")
    lines.append(_noise(naive, fair, hurt, fair_name))
    lines.append(_accuracy(dense, pruned, naive, fair, fair_name))
    return Verdict(bool(f.tolerance_met), tuple(lines))


def _accuracy(dense, pruned, naive, fair, fair_name: str) -> str:
    return (f"overall accuracy: dense {pct(dense.overall.accuracy)}, pruned {pct(pruned.overall.accuracy)}, "
            f"naive {pct(naive.overall.accuracy)}, {fair_name} {pct(fair.overall.accuracy)}.")


def _noise(naive: reports_pb2.GroupReport, fair: reports_pb2.GroupReport, group: str, fair_name: str) -> str:
    """Whether this one run separates the two fine-tuned models for the group pruning hurt."""
    a, b = _group(naive, group), _group(fair, group)
    if a is None or b is None or not a.HasField("accuracy") or not b.HasField("accuracy"):
        return f"(the {group} group has no accuracy in one of the fine-tuned reports)"
    (alo, ahi), (blo, bhi) = _ci(a), _ci(b)
    span = (f"{group}: naive {pct(a.accuracy)} [{pct(alo)}, {pct(ahi)}], "
            f"{fair_name} {pct(b.accuracy)} [{pct(blo)}, {pct(bhi)}]")
    if alo <= bhi and blo <= ahi:
        return (f"one run, and the 95 % intervals overlap ({span}): this run alone does not show {fair_name} "
                f"beating naive beyond noise; {_RECHECK_DOC}.")
    better = fair_name if b.accuracy > a.accuracy else "naive fine-tuning"
    return f"the 95 % intervals do not overlap ({span}): {better} is ahead beyond this run's sampling noise."
