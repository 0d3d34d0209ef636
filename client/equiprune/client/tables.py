"""Plain-text tables of jobs, artifacts, per-group reports and served models' monitors, for people.

Accuracies print as percentages (91.3%), excess accuracy gaps ψ_g as signed percentage points
with two decimals (+2.13; more when needed to tell ψ_g from ε), ε in points with its unit, and a
number the server left unset (it could not be computed) as `-`. Groups with too few samples
carry a `*` (reports) or `insufficient` (monitor windows): shown but not judged. Monitor
windows print as 5m, 1h, 1d.

The tables live by area in table_format (numbers, columns), report_tables (per-group reports,
sweeps, diagnostics), job_tables (jobs, artifacts) and serving_tables (served models, monitors);
the formats and report tables themselves are equiprune.text's, shared with `equiprune-engine`.
This module re-exports their public names, so callers keep using `tables.<name>`.
"""

from __future__ import annotations

from .job_tables import artifact_line, artifacts_table, job_headline, job_report, jobs_table, outputs_lines
from .report_tables import (chosen_split, comparison_table, damage_table, diagnostics_table, repair_comparison,
                            stage_reports, sweep_table)
from .serving_tables import (counts_line, disparity_line, metrics_report, served_model_line, served_models_table,
                             totals_line, window_name, window_seconds, window_table)
from .table_format import pct, pts, render, size, yes_no

__all__ = [
    "artifact_line", "artifacts_table", "chosen_split", "comparison_table", "counts_line", "damage_table",
    "diagnostics_table", "disparity_line", "job_headline", "job_report", "jobs_table", "metrics_report",
    "outputs_lines", "pct", "pts", "render", "repair_comparison", "served_model_line", "served_models_table",
    "size", "stage_reports", "sweep_table", "totals_line", "window_name", "window_seconds", "window_table",
    "yes_no",
]
