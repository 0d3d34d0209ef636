"""A compression result's reports and diagnostics in the shape of the proto JobResult."""

from __future__ import annotations

from ..diagnostics import Diagnostics
from ..pipeline import CompressionResult
from ..ranking import prediction_note
from .outcome import STAGES, StageReport


def stage_reports(result: CompressionResult) -> tuple[StageReport, ...]:
    """Every stage's report on the training split and, when there is one, the evaluation split."""
    job, entries = result.job, []
    for stage in STAGES:
        reports = getattr(result, stage)
        if reports is None:
            continue
        entries.append(StageReport(stage, job.train_split or "", reports.train))
        if reports.eval is not None:
            entries.append(StageReport(stage, job.eval_split or "", reports.eval))
    return tuple(entries)


def diagnostics_summary(diagnostics: Diagnostics, prediction: dict | None) -> dict:
    """Per-group diagnostics beside the predicted and measured excess loss (proto DiagnosticsSummary)."""
    prediction = prediction or {}
    predicted = prediction.get("predicted_excess_loss", {})
    before = prediction.get("before_recalibration", {})
    after = prediction.get("after_recalibration", {})
    measured = before.get("measured_excess_loss", {})
    measured_after = after.get("measured_excess_loss", {})
    as_dict = diagnostics.to_dict()
    groups = list(as_dict["groups"])
    if as_dict.get("overall") is not None:
        groups.append({**as_dict["overall"], "group": "overall"})
    return {
        "groups": [{
            "group": g["group"], "n": g["n"], "loss": g["loss"], "gradient_norm": g["grad_norm"],
            "hessian_trace": g["hessian_trace"], "hessian_trace_stderr": g["hessian_trace_stderr"],
            "hessian_top_eigenvalue": g["top_eigenvalue"], "mean_uncertainty": g["mean_uncertainty"],
            "mean_margin": g["mean_margin"], "mean_logit_margin": g["mean_logit_margin"],
            "predicted_excess_loss": predicted.get(g["group"]), "measured_excess_loss": measured.get(g["group"]),
            "measured_excess_loss_after_recalibration": measured_after.get(g["group"]),
        } for g in groups],
        "rank_correlation": (before.get("rank_agreement") or {}).get("spearman"),
        "rank_correlation_after_recalibration": (after.get("rank_agreement") or {}).get("spearman"),
        "prediction_note": prediction_note(prediction or None),
    }
