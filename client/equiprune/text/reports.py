"""Tables of a job's results, for either CLI: per-group reports of each stage side by side,
a stage's disparity summary, the budget search's probes (and, when none held, which group
broke ε and what to try), and the dense-model diagnostics.

They read proto messages (the client) and the engine's dataclasses or dicts alike, by field
name (formats.value): the two are shaped the same, by design (docs/metrics.md). Stages are
named as the proto's ReportStage values, lower case: dense, pruned,
pruned_without_recalibration, finetuned.
"""

from __future__ import annotations

from typing import Iterable, Mapping

from .formats import gap, pct, render, tolerance, value, yes_no

STAGE_LABELS = {"dense": "dense", "pruned": "pruned", "pruned_without_recalibration": "pruned (no BN recal.)",
                "finetuned": "fine-tuned"}
# The stages of a comparison, in the order a model goes through them.
COMPARED = ("dense", "pruned", "finetuned")


def stage_reports(entries: Iterable, split: str | None, stage_name=lambda stage: stage) -> dict:
    """{stage name: report} of one split from entries with .stage, .split and .report. Without
    a recalibrated pruned report the one before recalibration stands in for it."""
    chosen = {stage_name(e.stage): e.report for e in entries if e.split == split}
    unrecalibrated = chosen.pop("pruned_without_recalibration", None)
    if unrecalibrated is not None and "pruned" not in chosen:
        chosen["pruned"] = unrecalibrated
    return chosen


def comparison_table(by_stage: Mapping[str, object], split: str | None) -> str:
    """Per group: n, then accuracy (and ψ_g after the dense stage) of every stage present, the
    last with its 95 % interval; then overall accuracy and each stage's disparity summary.
    Groups below the minimum size carry a `*`: shown, not judged."""
    stages = [s for s in COMPARED if s in by_stage]
    if not stages:
        return "(no per-group report)"
    last = stages[-1]
    header = ["group", "n"]
    for stage in stages:
        header.append(STAGE_LABELS[stage] + (" [95% CI]" if stage == last and len(stages) > 1 else ""))
        if stage != "dense":
            header.append("ψ_g")
    first = by_stage[stages[0]]
    rows = []
    for group in first.groups:
        row = [group.group + ("" if group.sufficient_data else " *"), str(group.n)]
        for stage in stages:
            metrics = _group(by_stage[stage], group.group)
            row.append(accuracy_with_ci(metrics) if stage == last and len(stages) > 1 else pct(metrics, "accuracy"))
            if stage != "dense":
                row.append(gap(metrics, "excess_accuracy_gap", against=_tolerance(by_stage[stage])))
        rows.append(row)
    overall = ["overall", str(first.overall.n)]
    for stage in stages:
        overall.append(pct(by_stage[stage].overall, "accuracy"))
        if stage != "dense":
            overall.append("")
    lines = render(header, rows + [overall], right=range(1, len(header)))
    lines.insert(len(lines) - 1, lines[1])  # a rule above the overall row
    title = f"per-group accuracy on the {split or 'whole'} split"
    lines.insert(0, title + (" (ψ_g: excess accuracy gap, points)" if len(stages) > 1 else ""))
    lines.extend(summary_line(STAGE_LABELS[s], by_stage[s].summary) for s in stages if s != "dense" or len(stages) == 1)
    footnote = small_groups_footnote(first)
    return "\n".join(lines + ([footnote] if footnote else []))


def small_groups_footnote(report) -> str | None:
    """The `*` footnote, when some group of `report` is below its minimum size."""
    if all(g.sufficient_data for g in report.groups):
        return None
    return f"* fewer than {report.min_group_size} samples (min_group_size): shown, not judged"


def accuracy_with_ci(metrics) -> str:
    text = pct(metrics, "accuracy")
    if value(metrics, "accuracy_ci_low") is not None and value(metrics, "accuracy_ci_high") is not None:
        text += f" [{pct(metrics, 'accuracy_ci_low')},{pct(metrics, 'accuracy_ci_high')}]"
    return text


def summary_line(label: str, s) -> str:
    """max ψ_g (group), worst group, and ε with both verdicts, in numbers that show them."""
    parts = []
    eps, top = value(s, "tolerance"), value(s, "max_excess_accuracy_gap")
    if top is not None:
        parts.append(f"max ψ_g {gap(top, against=eps)} ({value(s, 'max_excess_accuracy_gap_group')})")
    if value(s, "worst_group"):
        parts.append(f"worst group {s.worst_group} {pct(s, 'worst_group_accuracy')}")
    if eps is not None:
        parts.append(f"tolerance {tolerance(eps, against=top)} met: {yes_no(s, 'tolerance_met')} "
                     f"(with 95% confidence: {yes_no(s, 'tolerance_met_with_confidence')})")
    return f"{label}: " + (", ".join(parts) if parts else "no disparity summary")


def _group(report, name: str):
    return next((g for g in report.groups if g.group == name), None)


def _tolerance(report):
    return value(value(report, "summary"), "tolerance")


# ---------------------------------------------------------------- the budget search

def sweep_table(points: Iterable, best_sparsity: float | None, shortfall=None) -> str:
    """The probes (each with .sparsity, .tolerance_met and .report), the highest sparsity
    within tolerance, or, when none held, the shortfall: which group broke ε and what to try."""
    rows, eps = [], None
    for point in sorted(points, key=lambda p: p.sparsity):
        s = point.report.summary
        eps = value(s, "tolerance")
        worst = f"{s.worst_group} {pct(s, 'worst_group_accuracy')}" if value(s, "worst_group") else "-"
        top = gap(s, "max_excess_accuracy_gap", against=eps)
        if value(s, "max_excess_accuracy_gap_group"):
            top += f" ({s.max_excess_accuracy_gap_group})"
        rows.append([f"{point.sparsity:.3f}", pct(point.report.overall, "accuracy"), worst, top,
                     "yes" if point.tolerance_met else "no"])
    lines = [f"budget search probes (ε {tolerance(eps)})" if eps is not None else "budget search probes"]
    lines += render(["sparsity", "accuracy", "worst group", "max ψ_g", "met"], rows, right=(0, 1))
    if best_sparsity is not None:
        lines.append(f"highest sparsity within tolerance: {best_sparsity:.3f}")
    else:
        lines.append("no probed sparsity kept every group within tolerance" + (":" if shortfall else ""))
        if shortfall is not None:
            lines.extend(shortfall_lines(shortfall))
    return "\n".join(lines)


def shortfall_lines(shortfall) -> list[str]:
    """Which group broke ε at the lowest sparsity probed, and what to try."""
    eps, point = value(shortfall, "tolerance"), value(shortfall, "excess_accuracy_gap")
    high = value(shortfall, "excess_accuracy_gap_ci_high")
    judged = high if value(shortfall, "judged_with_confidence") and high is not None else point
    text = (f"  at the lowest sparsity probed, {shortfall.sparsity:.3f}, group {shortfall.group} "
            f"(n = {shortfall.n}) had ψ_g {gap(point, against=eps)} points")
    if high is not None:
        text += f" (upper 95% bound {gap(high, against=eps)})"
    text += f", over ε {tolerance(eps, against=judged)}"
    if value(shortfall, "judged_with_confidence"):
        text += " (judged by the upper bound)"
    return [text, "to try:", *(f"  - {tip}" for tip in value(shortfall, "suggestions") or ())]


# ---------------------------------------------------------------- diagnostics

def diagnostics_table(summary) -> str:
    """Per-group diagnostics of the dense model, and how well they predicted the damage."""
    def num(g, name, fmt="{:.3g}"):
        x = value(g, name)
        return "-" if x is None else fmt.format(x)

    rows = [[value(g, "group"), str(value(g, "n") or 0), num(g, "loss"),
             num(g, "gradient_norm"), num(g, "hessian_trace"), num(g, "hessian_top_eigenvalue"),
             num(g, "mean_uncertainty"), num(g, "predicted_excess_loss"), num(g, "measured_excess_loss"),
             num(g, "measured_excess_loss_after_recalibration")]
            for g in value(summary, "groups") or ()]
    header = ["group", "n", "loss", "‖g_a‖", "tr H", "λ_max", "uncert.", "pred. R(a)", "meas. R(a)",
              "meas. R(a) recal."]
    lines = ["dense-model diagnostics"] + render(header, rows, right=range(1, len(header)))
    correlation = value(summary, "rank_correlation")
    if correlation is not None:
        lines.append(f"Spearman correlation of predicted and measured R(a): {correlation:+.2f}")
    if value(summary, "prediction_note"):
        lines.append(value(summary, "prediction_note"))
    return "\n".join(lines)
