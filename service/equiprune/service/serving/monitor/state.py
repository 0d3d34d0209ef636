"""The monitor: per-model windows of per-group counts, fed by predictions, delayed outcomes
and direct evaluation records; thread-safe, bounded, and saved to a file across restarts.

Plain Python on purpose (no Ray, gRPC or numpy): the serving replica calls it inline on every
Predict and ReportOutcomes, so each call must cost microseconds per item, and the exporter
reads it at scrape time. One lock guards everything; every public method takes it once.

What is bounded, and by what (docs/monitoring.md has the numbers):
- per model: one ring of `buckets_per_window` buckets per window, each holding up to
  `max_groups_per_model` groups × 9 numbers;
- the join ledger: `max_pending` pending predictions (and `pending_ttl_s`), and
  `remembered_outcome_ids` joined ids for duplicate detection.
The model table itself grows with the names ever registered (their history stays queryable).

One model's trouble stays its own (issue #8): refusals.py keeps anything that is not a finite
number out, metrics() cannot be made to raise by a bad value that got in anyway, a save
repairs or leaves out one model without failing the others (persistence.py), and a load skips
a damaged model's section and loads the rest.

This module holds `Monitor` with its models, reading and upkeep; recording.py the recording of
predictions, outcomes and evaluations, snapshots.py the snapshot, restore, save and load,
config.py `MonitorConfig`, `MonitorStatus` and prediction ids.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping

from equiprune.service.serving.monitor.config import (
    OUTCOME_RESULTS, MonitorConfig, MonitorStatus, make_prediction_id, model_of_prediction_id,
)
from equiprune.service.serving.monitor.ledger import JoinLedger
from equiprune.service.serving.monitor.model import ModelMetrics, ModelReference, ModelState, MonitorTotals
from equiprune.service.serving.monitor.recording import MonitorRecording
from equiprune.service.serving.monitor.refusals import UnknownModelError, group_name
from equiprune.service.serving.monitor.snapshots import MonitorSnapshots
from equiprune.service.serving.monitor.windows import FIELDS, window_metrics

# Imported from here by monitor/__init__.py, exporter.py, serving/plane.py and serving/monitoring.py.
__all__ = ["OUTCOME_RESULTS", "ModelReference", "Monitor", "MonitorConfig", "MonitorStatus", "make_prediction_id",
           "model_of_prediction_id"]


class Monitor(MonitorRecording, MonitorSnapshots):
    def __init__(self, config: MonitorConfig | None = None, clock: Callable[[], float] = time.time) -> None:
        self.config = config or MonitorConfig()
        self._clock = clock
        self._lock = threading.Lock()
        self._models: list[ModelState] = []
        self._by_name: dict[str, ModelState] = {}
        self._ledger = JoinLedger(self.config.max_pending, self.config.pending_ttl_s,
                                  self.config.remembered_outcome_ids)
        self._unattributed = dict.fromkeys(OUTCOME_RESULTS, 0)
        self._heartbeat_time = clock()  # liveness counts from creation (or restore)
        self._last_persist_time: float | None = None

    # -- models --------------------------------------------------------------------------

    def register_model(self, reference: ModelReference) -> None:
        """Start (or resume) monitoring a model. Registering a known name again replaces its
        reference and keeps its windows, groups and totals."""
        with self._lock:
            model = self._by_name.get(reference.name)
            if model is None:
                model = ModelState(len(self._models), reference, self.config.windows_s, self.config.buckets_per_window)
                self._models.append(model)
                self._by_name[reference.name] = model
            elif model.reference.group_by != reference.group_by:
                model.key_cache.clear()
            model.reference = reference
            model.registered = True

    def unregister_model(self, name: str) -> None:
        """Stop accepting predictions for a model; its history stays queryable and outcomes for
        its pending predictions still join."""
        with self._lock:
            self._known(name).registered = False

    def models(self, include_unregistered: bool = False) -> list[str]:
        with self._lock:
            return [m.reference.name for m in self._models if m.registered or include_unregistered]

    def reference(self, name: str) -> ModelReference:
        with self._lock:
            return self._known(name).reference

    def group_of(self, name: str, groups: Mapping[str, str], field_prefix: str = "groups") -> str:
        """The group name of an instance (its `group_by` values joined by "&"); raises
        MonitorInputError naming `<field_prefix>.<attribute>` when one is missing. Lets the
        service refuse a request before running the model."""
        with self._lock:
            return group_name(self._known(name).reference.group_by, groups, field_prefix)

    # -- reading -------------------------------------------------------------------------

    def metrics(self, name: str, now: float | None = None) -> ModelMetrics:
        """Per-window, per-group metrics of a model (registered or not) at `now` (default:
        the clock)."""
        with self._lock:
            model = self._known(name)
            now = self._clock() if now is None else now
            ref = model.reference
            size = len(model.group_names) * FIELDS
            windows = tuple(
                window_metrics(ring.window_s, ring.sum(now, size), model.group_names, ref.reference_accuracy,
                               ref.reference_overall_accuracy, self.config.min_count)
                for ring in model.rings
            )
            return ModelMetrics(
                model=name,
                reference=ref,
                registered=model.registered,
                windows=windows,
                totals=MonitorTotals(**model.totals),
                min_count=self.config.min_count,
            )

    def totals(self, name: str) -> MonitorTotals:
        with self._lock:
            return MonitorTotals(**self._known(name).totals)

    def status(self) -> MonitorStatus:
        with self._lock:
            return MonitorStatus(
                pending_predictions=len(self._ledger),
                evicted_predictions=self._ledger.evicted,
                heartbeat_time=self._heartbeat_time,
                last_persist_time=self._last_persist_time,
                unattributed_outcomes=dict(self._unattributed),
                repaired_values={m.reference.name: m.repaired_values for m in self._models},
            )

    def now(self) -> float:
        return self._clock()

    # -- upkeep --------------------------------------------------------------------------

    def maintain(self, now: float | None = None) -> int:
        """The service's periodic tick: forget pending predictions past their TTL and record
        the heartbeat. Returns how many were forgotten."""
        with self._lock:
            now = self._clock() if now is None else now
            forgotten = self._ledger.expire(now)
            self._heartbeat_time = now
            return forgotten

    # -- internals (called with the lock held) -------------------------------------------

    def _known(self, name: str) -> ModelState:
        model = self._by_name.get(name)
        if model is None:
            raise UnknownModelError(f"no monitored model named {name!r}", field="model")
        return model

    def _registered(self, name: str) -> ModelState:
        model = self._known(name)
        if not model.registered:
            raise UnknownModelError(f"model {name!r} is not deployed", field="model")
        return model
