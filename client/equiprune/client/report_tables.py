"""Tables of a job's results: per-group reports of each stage side by side, one stage against
the dense model, the budget search's probes, the dense-model diagnostics, and fine-tuned
results of several jobs compared.

Separate from job_tables (a job's headline, lists, outputs) because these read the
report messages (reports_pb2) and carry the fairness vocabulary (ψ_g, Δ_g, intervals).
"""

from __future__ import annotations

from typing import Iterable

from equiprune.text import reports as text
from equiprune.v1 import jobs_pb2, reports_pb2

from .specs import REPORT_STAGES
from .table_format import gap, pct, pts, render, value, yes_no


def _label(stage: int) -> str:
    return text.STAGE_LABELS.get(REPORT_STAGES.name(stage), REPORT_STAGES.name(stage))


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
    by_name = text.stage_reports(reports, split, REPORT_STAGES.name)
    return {REPORT_STAGES.value(name, "stage"): report for name, report in by_name.items()}


def comparison_table(reports: Iterable[reports_pb2.StageReport], split: str | None) -> str:
    """Per group: n, then accuracy (and ψ_g after the dense stage) of every stage present, the
    last with its 95 % interval; then overall accuracy and each stage's disparity summary."""
    return text.comparison_table(text.stage_reports(reports, split, REPORT_STAGES.name), split)


def damage_table(stage_report: reports_pb2.StageReport) -> str:
    """One report against its reference (the dense model): per group the accuracy before and
    after, Δ_g and ψ_g with its 95 % interval, then the disparity summary."""
    report = stage_report.report
    label = _label(stage_report.stage)
    header = ["group", "n", "dense", label, "Δ_g", "ψ_g [95% CI]"]
    eps = value(report.summary, "tolerance")
    rows = []
    for g in report.groups:
        psi = gap(g, "excess_accuracy_gap", against=eps)
        if g.HasField("excess_accuracy_gap_ci_low") and g.HasField("excess_accuracy_gap_ci_high"):
            psi += f" [{gap(g, 'excess_accuracy_gap_ci_low')},{gap(g, 'excess_accuracy_gap_ci_high')}]"
        rows.append([g.group + ("" if g.sufficient_data else " *"), str(g.n), pct(g, "reference_accuracy"),
                     pct(g, "accuracy"), pts(g, "accuracy_drop"), psi])
    o = report.overall
    rows.append(["overall", str(o.n), pct(o, "reference_accuracy"), pct(o.accuracy), pts(o, "accuracy_drop"), ""])
    lines = [f"{label} vs dense on the {stage_report.split or 'whole'} split"]
    lines.extend(render(header, rows, right=range(1, len(header))))
    lines.append(text.summary_line(label, report.summary))
    footnote = text.small_groups_footnote(report)
    return "\n".join(lines + ([footnote] if footnote else []))


# ---------------------------------------------------------------- other results

def sweep_table(result: jobs_pb2.JobResult) -> str:
    """The budget search's probes, then the highest sparsity within tolerance or, when none
    held, which group broke ε and what to try."""
    return text.sweep_table(result.sweep, result.best_sparsity if result.HasField("best_sparsity") else None,
                            result.budget_shortfall if result.HasField("budget_shortfall") else None)


def diagnostics_table(summary: reports_pb2.DiagnosticsSummary) -> str:
    """Per-group diagnostics of the dense model, and how well they predicted the damage."""
    return text.diagnostics_table(summary)


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
                         f"{gap(s, 'max_excess_accuracy_gap', against=value(s, 'tolerance'))} "
                         f"({s.max_excess_accuracy_gap_group})",
                         yes_no(s, "tolerance_met")))
    if not rows:
        return "no fine-tuned reports to compare"
    header = ("fine-tuning", "split", "accuracy", "worst group", "max ψ_g", "within ε")
    return "\n".join(["repair compared (after fine-tuning)", *render(header, rows, right=(2,))])
