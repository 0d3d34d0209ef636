"""Tables of served models and their monitors: served-model lines and list, a monitor's
per-window, per-group tables with the disparity verdict, totals, and monitor window names
(5m, 1h, 1d) both ways.

Separate from the job tables because they read the serving messages (serving_pb2) and are only
used by the serving commands.
"""

from __future__ import annotations

from typing import Iterable

from equiprune.v1 import serving_pb2

from .errors import SpecError
from .table_format import _time, gap, pct, pts, render
from .table_format import tolerance as tolerance_text


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
             f"tolerance ε {tolerance_text(model.tolerance)}"]
    if model.reference_accuracy:
        reference = ", ".join(f"{g} {pct(a)}" for g, a in sorted(model.reference_accuracy.items()))
        if model.HasField("reference_overall_accuracy"):
            reference += f" (overall {pct(model, 'reference_overall_accuracy')})"
        parts.append(f"reference {reference}")
    if model.input_shape:
        parts.append("input " + "×".join(map(str, model.input_shape)))
    return ", ".join(parts)


def served_models_table(models: Iterable[serving_pb2.ServedModel]) -> str:
    rows = [[m.name, m.artifact_id, m.shadow_artifact_id or "-", " & ".join(m.group_by), f"{100 * m.tolerance:.2f}",
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
            gap(g, "excess_accuracy_gap", against=tolerance), pct(g, "mean_confidence"), boundary, shadow, status]


def disparity_line(window: serving_pb2.WindowMetrics, tolerance: float | None) -> str:
    """max ψ_g (group), the accuracy parity gap, and whether max ψ_g is within the tolerance."""
    if not window.HasField("max_excess_accuracy_gap"):
        judged = "max ψ_g - (no group has enough outcomes to be judged)"
    else:
        judged = (f"max ψ_g {gap(window, 'max_excess_accuracy_gap', against=tolerance)} points "
                  f"({window.max_excess_accuracy_gap_group})")
    parity = f"accuracy parity gap {100 * window.accuracy_parity_gap:.1f} points" \
        if window.HasField("accuracy_parity_gap") else "accuracy parity gap -"
    if tolerance is None:
        verdict = "tolerance unknown (the model is no longer deployed)"
    elif not window.HasField("max_excess_accuracy_gap"):
        verdict = f"tolerance ε {tolerance_text(tolerance)}: not judged"
    else:
        within = window.max_excess_accuracy_gap <= tolerance
        verdict = (f"tolerance ε {tolerance_text(tolerance, against=window.max_excess_accuracy_gap)}: "
                   + ("within" if within else "EXCEEDED"))
    return f"{judged}; {parity}; {verdict}"


def totals_line(totals: serving_pb2.MonitorTotals) -> str:
    return (f"totals: {totals.predictions} predictions; outcomes {totals.outcomes_joined} joined, "
            f"{totals.outcomes_unknown} unknown, {totals.outcomes_duplicate} duplicate, {totals.outcomes_late} late, "
            f"{totals.outcomes_invalid} invalid; {totals.evaluation_records} evaluation records")


def counts_line(counts: dict[str, int]) -> str:
    """Counts such as ReportOutcomes' as `joined 10, unknown 0, …`."""
    return ", ".join(f"{name} {value}" for name, value in counts.items())
