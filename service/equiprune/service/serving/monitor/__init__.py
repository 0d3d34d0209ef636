"""Production monitoring: per-group accuracy, confidence and shadow agreement of served models
over sliding windows, joined from delayed outcomes, with a Prometheus exporter.

`Monitor` (state.py) is the one stateful object; model.py holds what it keeps and answers per
model, windows.py the bucket rings and the metric math, ledger.py the bounded join of outcomes
to predictions, refusals.py what input is refused, persistence.py the snapshot file, and
exporter.py the Prometheus collector (the only module that imports prometheus_client).
docs/monitoring.md documents every metric, the windows, the join and the memory bound.
"""

from equiprune.service.serving.monitor.model import ModelMetrics, ModelReference, MonitorTotals
from equiprune.service.serving.monitor.refusals import MonitorGroupLimitError, MonitorInputError, UnknownModelError
from equiprune.service.serving.monitor.state import (
    OUTCOME_RESULTS,
    Monitor,
    MonitorConfig,
    MonitorStatus,
    make_prediction_id,
    model_of_prediction_id,
)
from equiprune.service.serving.monitor.windows import GroupWindowMetrics, WindowMetrics, window_label

__all__ = [
    "OUTCOME_RESULTS",
    "GroupWindowMetrics",
    "ModelMetrics",
    "ModelReference",
    "Monitor",
    "MonitorConfig",
    "MonitorGroupLimitError",
    "MonitorInputError",
    "MonitorStatus",
    "MonitorTotals",
    "UnknownModelError",
    "WindowMetrics",
    "make_prediction_id",
    "model_of_prediction_id",
    "window_label",
]
