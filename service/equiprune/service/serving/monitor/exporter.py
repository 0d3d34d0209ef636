"""Prometheus exposition of the monitor: a custom collector read at scrape time.

Nothing is pushed into prometheus_client's own metric objects: every scrape asks the monitor
for each registered model's windows (one consistent `now` per scrape) and yields metric
families built from them, so what Prometheus sees is exactly what GetModelMetrics returns.
Labels are bounded: model, group, window and result. Prediction ids never become labels.
Names and meanings: docs/monitoring.md.

One model never spoils the scrape for the others: a sample whose value is not a finite number
is left out (like an unset value; a NaN or Inf sample would poison every PromQL aggregate over
it), and a model whose metrics cannot be computed at all is logged and left out of this scrape.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from threading import Thread
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import start_http_server
from prometheus_client.registry import Collector

from equiprune.service.serving.monitor.model import ModelMetrics
from equiprune.service.serving.monitor.state import OUTCOME_RESULTS, Monitor, MonitorStatus
from equiprune.service.serving.monitor.windows import window_label

log = logging.getLogger("equiprune.service.serving.monitor")

# (metric name, GroupWindowMetrics attribute, help). Values that are None (or not finite) are left out.
GROUP_WINDOW_GAUGES = (
    ("equiprune_group_predictions", "predictions", "Predictions in the window."),
    ("equiprune_group_outcomes", "n", "Labelled outcomes (n) in the window."),
    ("equiprune_group_accuracy_ratio", "accuracy", "Accuracy over the window's outcomes (absent when n = 0)."),
    ("equiprune_group_accuracy_ci_low_ratio", "accuracy_ci_low", "95 % Wilson lower bound of the accuracy."),
    ("equiprune_group_accuracy_ci_high_ratio", "accuracy_ci_high", "95 % Wilson upper bound of the accuracy."),
    ("equiprune_group_error_ratio", "error_rate", "1 - accuracy."),
    ("equiprune_group_confidence_mean_ratio", "mean_confidence", "Mean probability of the predicted class."),
    ("equiprune_group_boundary_proxy_mean", "mean_boundary_proxy",
     "Mean 1 - sum of squared class probabilities (higher: closer to a decision boundary)."),
    ("equiprune_group_accuracy_drop_ratio", "accuracy_drop", "Delta_g = reference accuracy - accuracy."),
    ("equiprune_group_excess_accuracy_gap_ratio", "excess_accuracy_gap", "psi_g = Delta_g - overall Delta."),
    ("equiprune_group_sufficient_data", "sufficient_data", "1 when the group has at least min_count outcomes, else 0."),
    ("equiprune_group_shadow_agreement_ratio", "shadow_agreement",
     "Share of shadowed predictions where the dense shadow predicted the same class."),
    ("equiprune_group_shadow_predictions", "shadow_n", "Predictions with a shadow prediction."),
)


class MonitorExporter(Collector):
    """Registers itself on `registry` (when given) and reports `monitor` on every scrape."""

    def __init__(self, monitor: Monitor, registry: CollectorRegistry | None = None) -> None:
        self.monitor = monitor
        if registry is not None:
            registry.register(self)

    def describe(self) -> list[Metric]:
        # Returning nothing keeps registration from running a full collect() up front.
        return []

    def collect(self) -> Iterator[Metric]:
        now = self.monitor.now()
        status = self.monitor.status()
        reports = list(_reports(self.monitor, now))
        yield from _group_window_families(reports)
        yield from _model_families(reports, status)
        yield from _monitor_families(status)


def _reports(monitor: Monitor, now: float) -> Iterator[ModelMetrics]:
    for name in monitor.models():
        try:
            yield monitor.metrics(name, now)
        except Exception:  # noqa: BLE001 - one model's failure must not take every model's metrics down
            log.exception("monitor: the metrics of model %r could not be computed; left out of this scrape", name)


def _add(family: Metric, labels: list[str], value) -> None:
    """Add a sample unless its value is unset or not a finite number."""
    if value is not None and math.isfinite(value):
        family.add_metric(labels, float(value))


def _group_window_families(reports: list[ModelMetrics]) -> Iterator[Metric]:
    families = [(GaugeMetricFamily(name, help_, labels=["model", "group", "window"]), attribute)
                for name, attribute, help_ in GROUP_WINDOW_GAUGES]
    for report in reports:
        for window in report.windows:
            label = window_label(window.window_seconds)
            for group in window.groups:
                labels = [report.model, group.group, label]
                for family, attribute in families:
                    _add(family, labels, getattr(group, attribute))
    for family, _ in families:
        yield family


def _model_families(reports: list[ModelMetrics], status: MonitorStatus) -> Iterator[Metric]:
    reference = GaugeMetricFamily("equiprune_group_reference_accuracy_ratio",
                                  "Dense reference accuracy of the group.", labels=["model", "group"])
    max_gap = GaugeMetricFamily("equiprune_model_max_excess_accuracy_gap_ratio",
                                "Max psi_g over groups with sufficient data.", labels=["model", "window"])
    parity = GaugeMetricFamily("equiprune_model_accuracy_parity_gap_ratio",
                               "Highest minus lowest group accuracy over groups with sufficient data.",
                               labels=["model", "window"])
    tolerance = GaugeMetricFamily("equiprune_model_tolerance_ratio", "Allowed excess accuracy gap epsilon.",
                                  labels=["model"])
    predictions = CounterMetricFamily("equiprune_model_predictions", "Predictions recorded.", labels=["model"])
    outcomes = CounterMetricFamily("equiprune_model_outcomes", "Outcomes reported, by what happened to them.",
                                   labels=["model", "result"])
    evaluations = CounterMetricFamily("equiprune_model_evaluation_records", "Evaluation records received.",
                                      labels=["model"])
    repaired = CounterMetricFamily("equiprune_model_repaired_values",
                                   "Window values found not to be finite numbers and reset (a bug let them in).",
                                   labels=["model"])
    for report in reports:
        model, totals = report.model, report.totals
        for group, accuracy in sorted(report.reference.reference_accuracy.items()):
            _add(reference, [model, group], accuracy)
        for window in report.windows:
            label = window_label(window.window_seconds)
            _add(max_gap, [model, label], window.max_excess_accuracy_gap)
            _add(parity, [model, label], window.accuracy_parity_gap)
        _add(tolerance, [model], report.reference.tolerance)
        _add(predictions, [model], totals.predictions)
        for result in OUTCOME_RESULTS:
            _add(outcomes, [model, result], getattr(totals, f"outcomes_{result}"))
        _add(evaluations, [model], totals.evaluation_records)
        _add(repaired, [model], status.repaired_values.get(model, 0))
    yield from (reference, max_gap, parity, tolerance, predictions, outcomes, evaluations, repaired)


def _monitor_families(status: MonitorStatus) -> Iterator[Metric]:
    yield GaugeMetricFamily("equiprune_monitor_heartbeat_timestamp_seconds",
                            "Last time the monitor loop ran, or the monitor started (unix seconds).",
                            value=status.heartbeat_time)
    if status.last_persist_time is not None:
        yield GaugeMetricFamily("equiprune_monitor_last_persist_timestamp_seconds",
                                "When the last saved monitor snapshot was taken (unix seconds).",
                                value=status.last_persist_time)
    yield GaugeMetricFamily("equiprune_monitor_pending_predictions", "Predictions waiting for an outcome.",
                            value=status.pending_predictions)
    yield CounterMetricFamily("equiprune_monitor_evicted_predictions",
                              "Pending predictions forgotten (room or age) before their outcome came.",
                              value=status.evicted_predictions)
    unattributed = CounterMetricFamily("equiprune_monitor_unattributed_outcomes",
                                       "Outcomes whose prediction id names no known model.", labels=["result"])
    for result in OUTCOME_RESULTS:
        unattributed.add_metric([result], status.unattributed_outcomes[result])
    yield unattributed


def serve_metrics(registry: CollectorRegistry, host: str = "127.0.0.1", port: int = 0) -> tuple[WSGIServer, Thread]:
    """Serve `registry` at http://host:port/metrics on a daemon thread; returns (server,
    thread) as prometheus_client's start_http_server does. Port 0 picks a free one (read it
    from `server.server_port`); `server.shutdown()` then `server.server_close()` stop it."""
    return start_http_server(port, addr=host, registry=registry)
