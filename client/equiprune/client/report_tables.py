"""Tables of a job's results: per-group reports of each stage side by side, one stage against
the dense model, the budget search's probes, the dense-model diagnostics, and fine-tuned
results of several jobs compared.

Separate from job_tables (a job's headline, lists, outputs) because these read the
report messages (reports_pb2) and carry the fairness vocabulary (ψ_g, Δ_g, intervals).
"""

from __future__ import annotations

from typing import Iterable

from equiprune.v1 import jobs_pb2, reports_pb2

from .specs import REPORT_STAGES
from .table_format import pct, pts, render, yes_no

_STAGE_LABELS = {
    reports_pb2.REPORT_STAGE_DENSE: "dense",
    reports_pb2.REPORT_STAGE_PRUNED: "pruned",
    reports_pb2.REPORT_STAGE_PRUNED_WITHOUT_RECALIBRATION: "pruned (no BN recal.)",
    reports_pb2.REPORT_STAGE_FINETUNED: "fine-tuned",
}
# The stages of a comparison, in the order a model goes through them.
_COMPARED = (reports_pb2.REPORT_STAGE_DENSE, reports_pb2.REPORT_STAGE_PRUNED, reports_pb2.REPORT_STAGE_FINETUNED)


# ---------------------------------------------------------------- per-group reports

def chosen_split(job: jobs_pb2.Job) -> str | None:
    """The split to show: the evaluation split when the job reported on one, else training."""
    splits = [r.split for r in job.result.reports]
    if not splits:
        return None
    data = job.spec.data
    if data.HasField("eval_split") and data.eval_split in splits:
        return data.eval_split
    train = data.train_split if data.HasField("train_split") else "train"
    others = [s for s in splits if s != train]
    return others[0] if others else splits[0]


def stage_reports(reports: Iterable[reports_pb2.StageReport], split: str | None) -> dict[int, reports_pb2.GroupReport]:
    """The reports of one split, by stage. Without a recalibrated pruned report the one
    before recalibration stands in for it."""
    chosen = {r.stage: r.report for r in reports if r.split == split}
    unrecalibrated = chosen.pop(reports_pb2.REPORT_STAGE_PRUNED_WITHOUT_RECALIBRATION, None)
    if unrecalibrated is not None and reports_pb2.REPORT_STAGE_PRUNED not in chosen:
        chosen[reports_pb2.REPORT_STAGE_PRUNED] = unrecalibrated
    return chosen


def comparison_table(reports: Iterable[reports_pb2.StageReport], split: str | None) -> str:
    """Per group: n, then accuracy (and ψ_g after the dense stage) of every stage present, the
    last with its 95 % interval; then overall accuracy and each stage's disparity summary."""
    by_stage = stage_reports(reports, split)
    stages = [s for s in _COMPARED if s in by_stage]
    if not stages:
        return "(no per-group report)"
    last = stages[-1]
    header = ["group", "n"]
    for stage in stages:
        header.append(_STAGE_LABELS[stage] + (" [95% CI]" if stage == last and len(stages) > 1 else ""))
        if stage != reports_pb2.REPORT_STAGE_DENSE:
            header.append("ψ_g")
    first = by_stage[stages[0]]
    rows = []
    for group in first.groups:
        row = [group.group + ("" if group.sufficient_data else " *"), str(group.n)]
        for stage in stages:
            metrics = _group(by_stage[stage], group.group)
            row.append(_accuracy_with_ci(metrics) if stage == last and len(stages) > 1 else pct(metrics, "accuracy"))
            if stage != reports_pb2.REPORT_STAGE_DENSE:
                row.append(pts(metrics, "excess_accuracy_gap"))
        rows.append(row)
    overall = ["overall", str(first.overall.n)]
    for stage in stages:
        overall.append(pct(by_stage[stage].overall.accuracy))
        if stage != reports_pb2.REPORT_STAGE_DENSE:
            overall.append("")
    lines = render(header, rows + [overall], right=range(1, len(header)))
    lines.insert(len(lines) - 1, lines[1])  # a rule above the overall row
    title = f"per-group accuracy on the {split or 'whole'} split"
    lines.insert(0, title + (" (ψ_g: excess accuracy gap, points)" if len(stages) > 1 else ""))
    lines.extend(_summary_line(_STAGE_LABELS[s], by_stage[s].summary) for s in stages
                 if s != reports_pb2.REPORT_STAGE_DENSE or len(stages) == 1)
    if any(not g.sufficient_data for g in first.groups):
        lines.append(f"* fewer than {first.min_group_size} samples: shown, not judged")
    return "\n".join(lines)


def damage_table(stage_report: reports_pb2.StageReport) -> str:
    """One report against its reference (the dense model): per group the accuracy before and
    after, Δ_g and ψ_g with its 95 % interval, then the disparity summary."""
    report = stage_report.report
    header = ["group", "n", "dense", _STAGE_LABELS.get(stage_report.stage, "model"), "Δ_g", "ψ_g [95% CI]"]
    rows = []
    for g in report.groups:
        gap = pts(g, "excess_accuracy_gap")
        if g.HasField("excess_accuracy_gap_ci_low") and g.HasField("excess_accuracy_gap_ci_high"):
            gap += f" [{pts(g, 'excess_accuracy_gap_ci_low')},{pts(g, 'excess_accuracy_gap_ci_high')}]"
        rows.append([g.group + ("" if g.sufficient_data else " *"), str(g.n), pct(g, "reference_accuracy"),
                     pct(g, "accuracy"), pts(g, "accuracy_drop"), gap])
    o = report.overall
    rows.append(["overall", str(o.n), pct(o, "reference_accuracy"), pct(o.accuracy), pts(o, "accuracy_drop"), ""])
    label = _STAGE_LABELS.get(stage_report.stage, REPORT_STAGES.name(stage_report.stage))
    lines = [f"{label} vs dense on the {stage_report.split or 'whole'} split"]
    lines.extend(render(header, rows, right=range(1, len(header))))
    lines.append(_summary_line(label, report.summary))
    return "\n".join(lines)


def _group(report: reports_pb2.GroupReport, name: str) -> reports_pb2.GroupMetrics | None:
    return next((g for g in report.groups if g.group == name), None)


def _accuracy_with_ci(metrics: reports_pb2.GroupMetrics | None) -> str:
    text = pct(metrics, "accuracy")
    if metrics is not None and metrics.HasField("accuracy_ci_low") and metrics.HasField("accuracy_ci_high"):
        text += f" [{pct(metrics, 'accuracy_ci_low')},{pct(metrics, 'accuracy_ci_high')}]"
    return text


def _summary_line(label: str, s: reports_pb2.DisparitySummary) -> str:
    parts = []
    if s.HasField("max_excess_accuracy_gap"):
        parts.append(f"max ψ_g {pts(s, 'max_excess_accuracy_gap')} ({s.max_excess_accuracy_gap_group})")
    if s.worst_group:
        parts.append(f"worst group {s.worst_group} {pct(s, 'worst_group_accuracy')}")
    if s.HasField("tolerance"):
        parts.append(f"tolerance {100 * s.tolerance:.1f} points met: {yes_no(s, 'tolerance_met')} "
                     f"(with 95% confidence: {yes_no(s, 'tolerance_met_with_confidence')})")
    return f"{label}: " + (", ".join(parts) if parts else "no disparity summary")


# ---------------------------------------------------------------- other results

def sweep_table(result: jobs_pb2.JobResult) -> str:
    """The budget search's probes, then the highest sparsity within tolerance."""
    rows = []
    for point in sorted(result.sweep, key=lambda p: p.sparsity):
        s = point.report.summary
        worst = f"{s.worst_group} {pct(s, 'worst_group_accuracy')}" if s.worst_group else "-"
        top = pts(s, "max_excess_accuracy_gap")
        if s.max_excess_accuracy_gap_group:
            top += f" ({s.max_excess_accuracy_gap_group})"
        rows.append([f"{point.sparsity:.3f}", pct(point.report.overall.accuracy), worst, top,
                     "yes" if point.tolerance_met else "no"])
    lines = ["budget search probes"] + render(["sparsity", "accuracy", "worst group", "max ψ_g", "met"], rows,
                                               right=(0, 1))
    if result.HasField("best_sparsity"):
        lines.append(f"highest sparsity within tolerance: {result.best_sparsity:.3f}")
    else:
        lines.append("no probed sparsity kept every group within tolerance")
    return "\n".join(lines)


def diagnostics_table(summary: reports_pb2.DiagnosticsSummary) -> str:
    """Per-group diagnostics of the dense model, and how well they predicted the damage."""
    def num(g, name, fmt="{:.3g}"):
        return fmt.format(getattr(g, name)) if g.HasField(name) else "-"

    rows = [[g.group, str(g.n), num(g, "loss"), num(g, "gradient_norm"), num(g, "hessian_trace"),
             num(g, "hessian_top_eigenvalue"), num(g, "mean_uncertainty"), num(g, "predicted_excess_loss"),
             num(g, "measured_excess_loss"), num(g, "measured_excess_loss_after_recalibration")]
            for g in summary.groups]
    header = ["group", "n", "loss", "‖g_a‖", "tr H", "λ_max", "uncert.", "pred. R(a)", "meas. R(a)",
              "meas. R(a) recal."]
    lines = ["dense-model diagnostics"] + render(header, rows, right=range(1, len(header)))
    if summary.HasField("rank_correlation"):
        lines.append(f"Spearman correlation of predicted and measured R(a): {summary.rank_correlation:+.2f}")
    if summary.prediction_note:
        lines.append(summary.prediction_note)
    return "\n".join(lines)


def repair_comparison(jobs: dict[str, jobs_pb2.Job]) -> str:
    """Fine-tuned results of several jobs side by side: worst group, max ψ_g, tolerance met,
    on the training split (what the constraint sees) and the evaluation split."""
    rows = []
    for label, job in jobs.items():
        for split in dict.fromkeys(r.split for r in job.result.reports if r.stage == reports_pb2.REPORT_STAGE_FINETUNED):
            report = stage_reports(job.result.reports, split).get(reports_pb2.REPORT_STAGE_FINETUNED)
            s = report.summary
            rows.append((label, split or "-", f"{100 * report.overall.accuracy:.1f}%",
                         f"{s.worst_group} {pct(s, 'worst_group_accuracy')}",
                         f"{pts(s, 'max_excess_accuracy_gap')} ({s.max_excess_accuracy_gap_group})",
                         yes_no(s, "tolerance_met")))
    if not rows:
        return "no fine-tuned reports to compare"
    header = ("fine-tuning", "split", "accuracy", "worst group", "max ψ_g", "within ε")
    return "\n".join(["repair compared (after fine-tuning)", *render(header, rows, right=(2,))])
