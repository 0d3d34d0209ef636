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
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from equiprune.engine.dataset import INTERSECTION_SEPARATOR

from equiprune.service.serving.monitor.ledger import JoinLedger, PendingPrediction
from equiprune.service.serving.monitor.model import ModelMetrics, ModelReference, ModelState, MonitorTotals
from equiprune.service.serving.monitor.persistence import encode_snapshot, read_snapshot, section_name, write_atomically
from equiprune.service.serving.monitor.refusals import (
    MonitorGroupLimitError,
    UnknownModelError,
    check_evaluations,
    check_predictions,
    group_name,
    is_class_index,
    is_finite_real,
)
from equiprune.service.serving.monitor.windows import (
    F_BOUNDARY_N,
    F_BOUNDARY_SUM,
    F_CONFIDENCE_N,
    F_CONFIDENCE_SUM,
    F_CORRECT,
    F_OUTCOMES,
    F_PREDICTIONS,
    F_SHADOW_AGREE,
    F_SHADOW_N,
    FIELDS,
    grow,
    window_metrics,
)

log = logging.getLogger("equiprune.service.serving.monitor")

SNAPSHOT_FORMAT = "equiprune-monitor"
SNAPSHOT_VERSION = 1
OUTCOME_RESULTS = ("joined", "unknown", "duplicate", "late", "invalid")


@dataclass(frozen=True)
class MonitorConfig:
    windows_s: tuple[int, ...] = (300, 3600, 86400)
    buckets_per_window: int = 60
    min_count: int = 30  # outcomes a group needs in a window to be judged
    max_pending: int = 1_000_000  # predictions awaiting an outcome (oldest forgotten first)
    pending_ttl_s: float = 7 * 86400.0
    remembered_outcome_ids: int = 1_000_000  # joined ids kept to recognise duplicates
    max_groups_per_model: int = 256  # label cardinality and memory bound

    def __post_init__(self) -> None:
        windows = tuple(int(w) for w in self.windows_s)
        if not windows or any(w <= 0 for w in windows) or len(set(windows)) != len(windows):
            raise ValueError(f"windows_s must be distinct positive seconds, got {self.windows_s!r}")
        object.__setattr__(self, "windows_s", tuple(sorted(windows)))
        for name in ("buckets_per_window", "min_count", "max_pending", "remembered_outcome_ids",
                     "max_groups_per_model"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)!r}")
        if not self.pending_ttl_s > 0:
            raise ValueError(f"pending_ttl_s must be positive, got {self.pending_ttl_s!r}")

    @property
    def longest_window_s(self) -> int:
        return self.windows_s[-1]


@dataclass(frozen=True)
class MonitorStatus:
    """Monitor-wide numbers (not per model)."""

    pending_predictions: int
    evicted_predictions: int  # forgotten for room or age before an outcome came
    heartbeat_time: float  # last maintain(), or creation/restore (clock seconds)
    last_persist_time: float | None  # when the last saved snapshot was taken
    unattributed_outcomes: dict[str, int]  # results whose prediction id names no known model
    repaired_values: dict[str, int]  # per model: non-finite window values reset (a bug let them in)


def make_prediction_id(model: str) -> str:
    """A fresh prediction id that names its model ("<model>.<24 hex>"), so an outcome for an id
    the monitor has forgotten can still be counted as that model's "unknown"."""
    return f"{model}.{os.urandom(12).hex()}"


def model_of_prediction_id(prediction_id: str) -> str:
    return prediction_id.partition(".")[0]


class Monitor:
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

    # -- recording -----------------------------------------------------------------------

    def record_predictions(
        self,
        name: str,
        items: Iterable[tuple[str, float, Mapping[str, str], int, Sequence[float], int | None]],
    ) -> int:
        """Record served predictions: (prediction_id, time_s, groups, predicted_class,
        probabilities, shadow_class or None). The whole batch is checked before anything is
        counted (refusals.check_predictions: probabilities must be finite and in [0, 1], classes
        in range). Returns the number recorded."""
        with self._lock:
            model = self._registered(name)
            now = self._clock()
            rows = check_predictions(items, model.reference.group_by, model.reference.num_classes,
                                     self._ledger.knows, now)
            gids = self._group_ids(model, [row[2] for row in rows], "instances")
            ledger, index, totals = self._ledger, model.index, model.totals
            now_indexes = [ring.index(now) for ring in model.rings]
            for (prediction_id, t, _, cls, confidence, boundary, shadow), gid in zip(rows, gids):
                for ring, now_index in zip(model.rings, now_indexes):
                    run = ring.slot_for(t, now_index)
                    if run is None:
                        continue
                    base = gid * FIELDS
                    if len(run) <= base:
                        grow(run, gid)
                    run[base + F_PREDICTIONS] += 1
                    run[base + F_CONFIDENCE_N] += 1
                    run[base + F_CONFIDENCE_SUM] += confidence
                    run[base + F_BOUNDARY_N] += 1
                    run[base + F_BOUNDARY_SUM] += boundary
                    if shadow is not None:
                        run[base + F_SHADOW_N] += 1
                        if shadow == cls:
                            run[base + F_SHADOW_AGREE] += 1
                ledger.add(prediction_id, PendingPrediction(index, t, gid, cls))
            totals["predictions"] += len(rows)
            return len(rows)

    def record_outcomes(self, items: Iterable[tuple[str, int]]) -> dict[str, int]:
        """Join true labels to pending predictions: (prediction_id, label). Each outcome counts
        in exactly one of joined / unknown / duplicate / late / invalid (see docs/monitoring.md
        for the order of the checks). A joined outcome lands in the buckets of its
        prediction's time. A label that is not a class index (negative, not an int) is
        "invalid"; a prediction id that is not a string is an unattributed "invalid"."""
        counts = dict.fromkeys(OUTCOME_RESULTS, 0)
        with self._lock:
            now = self._clock()
            late_before = now - self.config.longest_window_s
            ledger, models = self._ledger, self._models
            now_indexes: dict[int, list[int]] = {}  # per model touched, computed once per call
            for prediction_id, label in items:
                if not isinstance(prediction_id, str):
                    self._unattributed["invalid"] += 1
                    counts["invalid"] += 1
                    continue
                entry = ledger.pending(prediction_id, now)
                valid_label = is_class_index(label)
                if entry is None:
                    joined_model = ledger.joined_model(prediction_id)
                    result = "unknown" if joined_model is None else "duplicate"
                    if not valid_label:
                        result = "invalid"
                    self._count_unmatched(prediction_id, joined_model, result)
                    counts[result] += 1
                    continue
                model = models[entry.model]
                num_classes = model.reference.num_classes
                if not valid_label or (num_classes is not None and label >= num_classes):
                    result = "invalid"  # the prediction stays pending: a corrected label may follow
                elif entry.time_s < late_before:
                    result = "late"
                    ledger.join(prediction_id)
                else:
                    result = "joined"
                    ledger.join(prediction_id)
                    correct = 1 if label == entry.predicted_class else 0
                    indexes = now_indexes.get(entry.model)
                    if indexes is None:
                        indexes = now_indexes[entry.model] = [ring.index(now) for ring in model.rings]
                    for ring, now_index in zip(model.rings, indexes):
                        run = ring.slot_for(entry.time_s, now_index)
                        if run is not None:
                            base = grow(run, entry.group)
                            run[base + F_OUTCOMES] += 1
                            run[base + F_CORRECT] += correct
                model.totals["outcomes_" + result] += 1
                counts[result] += 1
            return counts

    def record_evaluations(
        self,
        name: str,
        records: Iterable[tuple[float | None, Mapping[str, str], int, int, float | None]],
    ) -> dict[str, int]:
        """Add labelled records directly: (time_s or None for now, groups, label,
        predicted_class, confidence or None). Each is a prediction with its outcome. Records
        older than every window count in the totals only ("late"). The whole batch is checked
        before anything is counted."""
        with self._lock:
            model = self._registered(name)
            now = self._clock()
            rows = check_evaluations(records, model.reference.group_by, model.reference.num_classes, now)
            gids = self._group_ids(model, [row[1] for row in rows], "records")
            late_before = now - self.config.longest_window_s
            now_indexes = [ring.index(now) for ring in model.rings]
            late = 0
            for (t, _, label, cls, confidence), gid in zip(rows, gids):
                if t < late_before:
                    late += 1
                    continue
                for ring, now_index in zip(model.rings, now_indexes):
                    run = ring.slot_for(t, now_index)
                    if run is None:
                        continue
                    base = grow(run, gid)
                    run[base + F_PREDICTIONS] += 1
                    run[base + F_OUTCOMES] += 1
                    run[base + F_CORRECT] += label == cls
                    if confidence is not None:
                        run[base + F_CONFIDENCE_N] += 1
                        run[base + F_CONFIDENCE_SUM] += confidence
            model.totals["evaluation_records"] += len(rows)
            return {"recorded": len(rows) - late, "late": late}

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

    # -- upkeep and persistence ----------------------------------------------------------

    def maintain(self, now: float | None = None) -> int:
        """The service's periodic tick: forget pending predictions past their TTL and record
        the heartbeat. Returns how many were forgotten."""
        with self._lock:
            now = self._clock() if now is None else now
            forgotten = self._ledger.expire(now)
            self._heartbeat_time = now
            return forgotten

    def snapshot(self) -> dict:
        """The whole state as JSON-ready data (see docs/monitoring.md, "Persistence"). Only
        shallow copies are taken under the lock; the large lists are built after it."""
        with self._lock:
            taken_at = self._clock()
            ledger = self._ledger.copy()
            models = [m.to_json() for m in self._models]
            unattributed = dict(self._unattributed)
        return {
            "format": SNAPSHOT_FORMAT,
            "version": SNAPSHOT_VERSION,
            "taken_at": taken_at,
            "config": asdict(self.config),
            "models": models,
            "ledger": ledger.to_json(),
            "unattributed_outcomes": unattributed,
        }

    @classmethod
    def restore(cls, snapshot: dict, clock: Callable[[], float] = time.time,
                config: MonitorConfig | None = None) -> Monitor:
        """A monitor with the state of `snapshot`, under its saved config or `config`. With a
        new config, a window kept from the saved one keeps its buckets (when
        `buckets_per_window` is unchanged), a new window starts empty, and smaller ledger
        bounds forget the oldest entries.

        Not a snapshot at all (format, version, config): ValueError. A damaged part is logged
        and skipped instead, so that it cannot keep the rest from loading: a model's section
        (that model starts afresh when registered again; its pending predictions are dropped),
        the ledger (it starts empty), the unattributed counts. Non-finite window values are
        repaired and counted in the model's `repaired_values`."""
        if snapshot.get("format") != SNAPSHOT_FORMAT or snapshot.get("version") != SNAPSHOT_VERSION:
            raise ValueError(f"not an {SNAPSHOT_FORMAT} v{SNAPSHOT_VERSION} snapshot")
        saved_data = dict(snapshot["config"])
        saved = MonitorConfig(**{**saved_data, "windows_s": tuple(saved_data["windows_s"])})
        config = config or saved
        monitor = cls(config, clock)
        loaded: dict[int, tuple[int, int]] = {}  # saved index → (index now, number of groups)
        for saved_index, section in enumerate(snapshot.get("models") or []):
            try:
                model = ModelState.from_json(len(monitor._models), section, config.windows_s,
                                             config.buckets_per_window, saved.buckets_per_window)
                if model.reference.name in monitor._by_name:
                    raise ValueError("a second section for the same model")
            except Exception as exc:  # noqa: BLE001 - a damaged section may fail anyhow; the others still load
                log.error("monitor snapshot: the section of model %r (#%d) is damaged and was not loaded: %r",
                          section_name(section), saved_index, exc)
                continue
            monitor._models.append(model)
            monitor._by_name[model.reference.name] = model
            loaded[saved_index] = (model.index, len(model.group_names))
        try:
            monitor._ledger, dropped = JoinLedger.from_json(snapshot["ledger"], config.max_pending,
                                                            config.pending_ttl_s, config.remembered_outcome_ids,
                                                            loaded)
            if dropped:
                log.warning("monitor snapshot: %d ledger entries (of models not loaded, or damaged) were dropped",
                            dropped)
        except Exception as exc:  # noqa: BLE001 - as above: without the ledger the windows still load
            log.error("monitor snapshot: the ledger is damaged and was not loaded; it starts empty: %r", exc)
        saved_unattributed = snapshot.get("unattributed_outcomes")
        for result in OUTCOME_RESULTS:
            count = saved_unattributed.get(result, 0) if isinstance(saved_unattributed, dict) else None
            if type(count) is int and count >= 0:
                monitor._unattributed[result] = count
            else:
                log.error("monitor snapshot: the unattributed %r count is damaged (%r); it starts at 0", result, count)
        taken_at = snapshot.get("taken_at")
        monitor._last_persist_time = taken_at if is_finite_real(taken_at) else None
        return monitor

    def save(self, path: str | Path) -> None:
        """Write the snapshot atomically (persistence.write_atomically). Serialising happens
        outside the lock, so traffic waits only for the copy. Each model is encoded on its
        own: one that cannot be (a bug let a NaN in) is repaired or, failing that, left out of
        this round, and the other models and the ledger are saved all the same."""
        snapshot = self.snapshot()
        write_atomically(path, encode_snapshot(snapshot, self._repaired_section))
        with self._lock:
            self._last_persist_time = snapshot["taken_at"]

    @classmethod
    def load(cls, path: str | Path, clock: Callable[[], float] = time.time,
             config: MonitorConfig | None = None) -> Monitor:
        """Monitor.restore of a file `save` wrote."""
        return cls.restore(read_snapshot(path), clock, config)

    def _repaired_section(self, index: int) -> dict:
        """Repair model `index` in its live state, so that its windows and its next save are
        clean again, and return its section anew (save found that it cannot be encoded)."""
        with self._lock:
            model = self._models[index]
            repaired = model.repair()
            log.error("monitor: model %r had %d window values that were not finite numbers; reset them to 0 "
                      "(%d so far)", model.reference.name, repaired, model.repaired_values)
            return model.to_json()

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

    def _group_ids(self, model: ModelState, keys: list[tuple], field_prefix: str) -> list[int]:
        """Group ids for checked keys, creating new groups (up to the limit) only now that the
        whole batch is known to be valid."""
        cache = model.key_cache
        ids = []
        for key in keys:
            gid = cache.get(key)
            if gid is None:
                gid = self._group_id(model, INTERSECTION_SEPARATOR.join(key), field_prefix)
                cache[key] = gid
            ids.append(gid)
        return ids

    def _group_id(self, model: ModelState, group: str, field_prefix: str) -> int:
        gid = model.group_ids.get(group)
        if gid is None:
            limit = self.config.max_groups_per_model
            if len(model.group_names) >= limit:
                raise MonitorGroupLimitError(
                    f"model {model.reference.name!r} already monitors {limit} groups; {group!r} would be one more",
                    field=f"{field_prefix}.groups")
            gid = len(model.group_names)
            model.group_names.append(group)
            model.group_ids[group] = gid
        return gid

    def _count_unmatched(self, prediction_id: str, joined_model: int | None, result: str) -> None:
        """Count an outcome without a pending prediction against the model it can be traced to
        (a remembered join, or the model named by the id), else as unattributed."""
        if joined_model is not None:
            model = self._models[joined_model]
        else:
            model = self._by_name.get(model_of_prediction_id(prediction_id))
        if model is None:
            self._unattributed[result] += 1
        else:
            model.totals["outcomes_" + result] += 1
