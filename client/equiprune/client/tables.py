"""Plain-text tables of jobs, artifacts, per-group reports and served models' monitors, for people.

Accuracies print as percentages (91.3%), excess accuracy gaps ψ_g as signed percentage points
(+2.1), and a number the server left unset (it could not be computed) as `-`. Groups with too
few samples carry a `*` (reports) or `insufficient` (monitor windows): shown but not judged.
Monitor windows print as 5m, 1h, 1d.
"""

from __future__ import annotations

from typing import Iterable, Sequence

from equiprune.v1 import artifacts_pb2, jobs_pb2, reports_pb2, serving_pb2

from .errors import SpecError
from .specs import ARTIFACT_KINDS, JOB_KINDS, JOB_STATES, REPORT_STAGES

_STAGE_LABELS = {
    reports_pb2.REPORT_STAGE_DENSE: "dense",
    reports_pb2.REPORT_STAGE_PRUNED: "pruned",
    reports_pb2.REPORT_STAGE_PRUNED_WITHOUT_RECALIBRATION: "pruned (no BN recal.)",
    reports_pb2.REPORT_STAGE_FINETUNED: "fine-tuned",
}
# The stages of a comparison, in the order a model goes through them.
_COMPARED = (reports_pb2.REPORT_STAGE_DENSE, reports_pb2.REPORT_STAGE_PRUNED, reports_pb2.REPORT_STAGE_FINETUNED)


# ---------------------------------------------------------------- number formats

def pct(message, field: str | None = None) -> str:
    """`message.field` (or the number `message`) as a percentage; `-` when unset."""
    value = _value(message, field)
    return "-" if value is None else f"{100 * value:.1f}%"


def pts(message, field: str | None = None) -> str:
    """`message.field` (or the number `message`) as signed percentage points; `-` when unset."""
    value = _value(message, field)
    return "-" if value is None else f"{100 * value:+.1f}"


def _value(message, field: str | None):
    if field is None:
        return message
    if message is None or not message.HasField(field):
        return None
    return getattr(message, field)


def yes_no(message, field: str) -> str:
    return "-" if not message.HasField(field) else ("yes" if getattr(message, field) else "no")


def size(n_bytes: int) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n_bytes < 1000 or unit == "GB":
            return f"{n_bytes:.0f} {unit}" if unit == "B" else f"{n_bytes:.1f} {unit}"
        n_bytes /= 1000
    return str(n_bytes)


def render(header: Sequence[str], rows: Iterable[Sequence[str]], right: Iterable[int] = ()) -> list[str]:
    """Columns padded to their widest cell; columns in `right` are right-aligned."""
    rows = [list(map(str, row)) for row in rows]
    right = set(right)
    widths = [max([len(header[i])] + [len(row[i]) for row in rows if i < len(row)]) for i in range(len(header))]

    def line(cells):
        return "  ".join(cell.rjust(widths[i]) if i in right else cell.ljust(widths[i])
                         for i, cell in enumerate(cells)).rstrip()

    rule = "-" * len(line(["-" * w for w in widths]))
    return [line(header), rule] + [line(row) for row in rows]


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


def outputs_lines(result: jobs_pb2.JobResult) -> list[str]:
    return [f"{o.role}: {o.artifact.artifact_id}  {o.artifact.display_name}  ({size(o.artifact.size_bytes)})"
            for o in result.outputs]


def job_report(job: jobs_pb2.Job) -> str:
    """Everything worth reading about a job: state, error or result tables, outputs."""
    lines = [job_headline(job)]
    if job.state in (jobs_pb2.JOB_STATE_FAILED, jobs_pb2.JOB_STATE_CANCELLED) and job.HasField("error"):
        lines.append(f"error: {job.error.code}: {job.error.message}")
    if job.state != jobs_pb2.JOB_STATE_SUCCEEDED:
        return "\n".join(lines)
    result = job.result
    if result.HasField("diagnostics") and result.diagnostics.groups:
        lines += ["", diagnostics_table(result.diagnostics)]
    if result.reports:
        lines += ["", comparison_table(result.reports, chosen_split(job))]
    if result.sweep:
        lines += ["", sweep_table(result)]
    facts = []
    if result.HasField("measured_sparsity"):
        facts.append(f"measured sparsity of prunable weights: {result.measured_sparsity:.3f}")
    if result.parameters_before and result.parameters_after != result.parameters_before:
        facts.append(f"parameters: {result.parameters_before} → {result.parameters_after}")
    facts += [f"note: {note}" for note in result.notes]
    if facts:
        lines += [""] + facts
    if result.outputs:
        lines += ["", "outputs:"] + ["  " + line for line in outputs_lines(result)]
    return "\n".join(lines)


def job_headline(job: jobs_pb2.Job) -> str:
    return f"job {job.job_id} ({JOB_KINDS.name(job.spec.kind)}): {JOB_STATES.name(job.state)}"


def jobs_table(jobs: Iterable[jobs_pb2.Job]) -> str:
    rows = [[j.job_id, JOB_KINDS.name(j.spec.kind), JOB_STATES.name(j.state), j.progress.phase,
             _time(j.create_time) if j.HasField("create_time") else "-"] for j in jobs]
    if not rows:
        return "(no jobs)"
    return "\n".join(render(["job", "kind", "state", "phase", "created"], rows))


def artifacts_table(artifacts: Iterable[artifacts_pb2.Artifact]) -> str:
    rows = [[a.artifact_id, ARTIFACT_KINDS.name(a.kind), a.display_name, size(a.size_bytes), a.sha256[:12],
             a.source] for a in artifacts]
    if not rows:
        return "(no artifacts)"
    return "\n".join(render(["artifact", "kind", "name", "size", "sha256", "source"], rows, right=(3,)))


def artifact_line(artifact: artifacts_pb2.Artifact) -> str:
    described = " ".join(f"{k}={v}" for k, v in sorted(artifact.description.items()))
    return (f"{artifact.artifact_id}  {ARTIFACT_KINDS.name(artifact.kind)}  {artifact.display_name}  "
            f"{size(artifact.size_bytes)}  sha256 {artifact.sha256}" + (f"  {described}" if described else ""))


def _time(stamp) -> str:
    return stamp.ToDatetime().strftime("%Y-%m-%d %H:%M:%S") + " UTC"


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


# ---------------------------------------------------------------- served models and their monitors

_WINDOW_UNITS = (("d", 86400), ("h", 3600), ("m", 60), ("s", 1))


def window_name(seconds: int) -> str:
    """A window length as the largest unit dividing it: 300 → 5m, 3600 → 1h, 86400 → 1d, 90 → 90s."""
    for unit, size in _WINDOW_UNITS:
        if seconds and seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def window_seconds(text: str) -> int:
    """The seconds of a window written as 5m, 1h, 1d, 90s or plain seconds (SpecError if not)."""
    sizes = dict(_WINDOW_UNITS)
    text = text.strip().lower()
    number, unit = (text[:-1], text[-1]) if text[-1:] in sizes else (text, "s")
    if not number.isdigit() or int(number) == 0:
        raise SpecError("window", f"expected a length such as 5m, 1h or 1d, got {text!r}")
    return int(number) * sizes[unit]


def served_model_line(model: serving_pb2.ServedModel) -> str:
    """One served model: name, artifacts, groups, tolerance, reference, input shape."""
    parts = [f"{model.name}: {model.artifact_id}" + (f" (shadow {model.shadow_artifact_id})"
                                                     if model.shadow_artifact_id else ""),
             "monitored by " + " & ".join(model.group_by),
             f"tolerance ε {100 * model.tolerance:.1f} points"]
    if model.reference_accuracy:
        reference = ", ".join(f"{g} {pct(a)}" for g, a in sorted(model.reference_accuracy.items()))
        if model.HasField("reference_overall_accuracy"):
            reference += f" (overall {pct(model, 'reference_overall_accuracy')})"
        parts.append(f"reference {reference}")
    if model.input_shape:
        parts.append("input " + "×".join(map(str, model.input_shape)))
    return ", ".join(parts)


def served_models_table(models: Iterable[serving_pb2.ServedModel]) -> str:
    rows = [[m.name, m.artifact_id, m.shadow_artifact_id or "-", " & ".join(m.group_by), f"{100 * m.tolerance:.1f}",
             "×".join(map(str, m.input_shape)) or "-", _time(m.create_time) if m.HasField("create_time") else "-"]
            for m in models]
    if not rows:
        return "(no served models)"
    return "\n".join(render(["model", "artifact", "shadow", "group by", "ε (points)", "input", "deployed"], rows,
                            right=(4,)))


def metrics_report(metrics: serving_pb2.GetModelMetricsResponse, name: str,
                   windows: Iterable[serving_pb2.WindowMetrics] | None = None) -> str:
    """A served model's monitor: per window a per-group table, the disparity line; then totals."""
    model = metrics.model if metrics.HasField("model") else None
    tolerance = model.tolerance if model is not None else None
    if model is not None:
        lines = [f"model {served_model_line(model)}"]
    else:
        lines = [f"model {name} (no longer deployed)"]
    lines.append(f"groups need at least {metrics.min_count} outcomes in a window to be judged")
    for window in metrics.windows if windows is None else windows:
        lines += ["", *window_table(window, tolerance)]
    lines += ["", totals_line(metrics.totals)]
    return "\n".join(lines)


def window_table(window: serving_pb2.WindowMetrics, tolerance: float | None) -> list[str]:
    """One window: a row per group and one overall, then max ψ_g, parity gap and tolerance."""
    title = f"window {window_name(window.window_seconds)}"
    if not window.overall.predictions and not window.overall.n:
        return [title, "(no predictions or evaluation records in this window)"]
    header = ["group", "predictions", "n", "accuracy [95% CI]", "reference", "Δ_g", "ψ_g", "confidence",
              "boundary", "shadow agreement", "status"]
    rows = [_window_row(g, tolerance) for g in window.groups]
    overall = _window_row(window.overall, None)
    overall[0], overall[6], overall[-1] = "overall", "", ""
    lines = render(header, rows + [overall], right=range(1, 10))
    lines.insert(len(lines) - 1, lines[1])  # a rule above the overall row
    return [title, *lines, disparity_line(window, tolerance)]


def _window_row(g: serving_pb2.GroupWindowMetrics, tolerance: float | None) -> list[str]:
    accuracy = pct(g, "accuracy")
    if g.HasField("accuracy_ci_low") and g.HasField("accuracy_ci_high"):
        accuracy += f" [{pct(g, 'accuracy_ci_low')},{pct(g, 'accuracy_ci_high')}]"
    boundary = f"{g.mean_boundary_proxy:.3f}" if g.HasField("mean_boundary_proxy") else "-"
    shadow = f"{pct(g, 'shadow_agreement')} ({g.shadow_n})" if g.HasField("shadow_agreement") else "-"
    if not g.sufficient_data:
        status = "insufficient"
    elif tolerance is not None and g.HasField("excess_accuracy_gap") and g.excess_accuracy_gap > tolerance:
        status = "over ε"
    else:
        status = "ok"
    return [g.group, str(g.predictions), str(g.n), accuracy, pct(g, "reference_accuracy"), pts(g, "accuracy_drop"),
            pts(g, "excess_accuracy_gap"), pct(g, "mean_confidence"), boundary, shadow, status]


def disparity_line(window: serving_pb2.WindowMetrics, tolerance: float | None) -> str:
    """max ψ_g (group), the accuracy parity gap, and whether max ψ_g is within the tolerance."""
    if not window.HasField("max_excess_accuracy_gap"):
        judged = "max ψ_g - (no group has enough outcomes to be judged)"
    else:
        judged = f"max ψ_g {pts(window, 'max_excess_accuracy_gap')} points ({window.max_excess_accuracy_gap_group})"
    parity = f"accuracy parity gap {100 * window.accuracy_parity_gap:.1f} points" \
        if window.HasField("accuracy_parity_gap") else "accuracy parity gap -"
    if tolerance is None:
        verdict = "tolerance unknown (the model is no longer deployed)"
    elif not window.HasField("max_excess_accuracy_gap"):
        verdict = f"tolerance ε {100 * tolerance:.1f} points: not judged"
    else:
        within = window.max_excess_accuracy_gap <= tolerance
        verdict = f"tolerance ε {100 * tolerance:.1f} points: " + ("within" if within else "EXCEEDED")
    return f"{judged}; {parity}; {verdict}"


def totals_line(totals: serving_pb2.MonitorTotals) -> str:
    return (f"totals: {totals.predictions} predictions; outcomes {totals.outcomes_joined} joined, "
            f"{totals.outcomes_unknown} unknown, {totals.outcomes_duplicate} duplicate, {totals.outcomes_late} late, "
            f"{totals.outcomes_invalid} invalid; {totals.evaluation_records} evaluation records")


def counts_line(counts: dict[str, int]) -> str:
    """Counts such as ReportOutcomes' as `joined 10, unknown 0, …`."""
    return ", ".join(f"{name} {value}" for name, value in counts.items())
