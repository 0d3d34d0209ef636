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
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from operator import mul
from pathlib import Path

from equiprune.engine.dataset import INTERSECTION_SEPARATOR
from equiprune.service.errors import InvalidArgument, NotFound, ResourceExhausted

from .ledger import JoinLedger, PendingPrediction
from .windows import (
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
    WindowMetrics,
    WindowRing,
    grow,
    is_finite,
    window_metrics,
)

SNAPSHOT_FORMAT = "equiprune-monitor"
SNAPSHOT_VERSION = 1
MAX_GROUP_VALUE_CHARS = 200
OUTCOME_RESULTS = ("joined", "unknown", "duplicate", "late", "invalid")


class MonitorInputError(InvalidArgument, ValueError):
    """Bad input to the monitor; `field` names the part of the request at fault.
    An InvalidArgument, so errors.client_status maps it to INVALID_ARGUMENT as is."""


class MonitorGroupLimitError(ResourceExhausted, ValueError):
    """A model already monitors `max_groups_per_model` groups and a new one arrived."""


class UnknownModelError(NotFound, LookupError):
    """No model of that name was ever registered (or it is not registered now, for writes)."""


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
class ModelReference:
    """What a served model is judged against: per-group dense accuracies and ε."""

    name: str
    group_by: tuple[str, ...]
    reference_accuracy: Mapping[str, float] = field(default_factory=dict)
    reference_overall_accuracy: float | None = None
    tolerance: float = 0.01
    num_classes: int | None = None

    def __post_init__(self) -> None:
        if not self.name:
            raise MonitorInputError("must not be empty", field="name")
        group_by = tuple(self.group_by)
        if not group_by or any(not isinstance(a, str) or not a for a in group_by):
            raise MonitorInputError("must name at least one attribute, none empty", field="group_by")
        object.__setattr__(self, "group_by", group_by)
        reference = dict(self.reference_accuracy)
        for group, accuracy in reference.items():
            if not is_finite(accuracy) or not 0.0 <= accuracy <= 1.0:
                raise MonitorInputError(f"must be in [0, 1], got {accuracy!r}", field=f"reference_accuracy[{group}]")
        object.__setattr__(self, "reference_accuracy", reference)
        overall = self.reference_overall_accuracy
        if overall is not None and (not is_finite(overall) or not 0.0 <= overall <= 1.0):
            raise MonitorInputError(f"must be in [0, 1], got {overall!r}", field="reference_overall_accuracy")
        if not is_finite(self.tolerance) or not 0.0 <= self.tolerance < 1.0:
            raise MonitorInputError(f"must be in [0, 1), got {self.tolerance!r}", field="tolerance")
        if self.num_classes is not None and int(self.num_classes) < 1:
            raise MonitorInputError(f"must be at least 1, got {self.num_classes!r}", field="num_classes")

    def to_json(self) -> dict:
        return {**asdict(self), "group_by": list(self.group_by), "reference_accuracy": dict(self.reference_accuracy)}

    @classmethod
    def from_json(cls, data: dict) -> ModelReference:
        return cls(**{**data, "group_by": tuple(data["group_by"])})


@dataclass(frozen=True)
class MonitorTotals:
    """Lifetime counters of one model (field names as in serving.proto)."""

    predictions: int = 0
    outcomes_joined: int = 0
    outcomes_unknown: int = 0
    outcomes_duplicate: int = 0
    outcomes_late: int = 0
    outcomes_invalid: int = 0
    evaluation_records: int = 0


@dataclass(frozen=True)
class ModelMetrics:
    """Everything GetModelMetrics returns for one model."""

    model: str
    reference: ModelReference
    registered: bool
    windows: tuple[WindowMetrics, ...]  # shortest first
    totals: MonitorTotals
    min_count: int

    def window(self, seconds: int) -> WindowMetrics:
        for w in self.windows:
            if w.window_seconds == seconds:
                return w
        raise KeyError(seconds)


@dataclass(frozen=True)
class MonitorStatus:
    """Monitor-wide numbers (not per model)."""

    pending_predictions: int
    evicted_predictions: int  # forgotten for room or age before an outcome came
    heartbeat_time: float  # last maintain(), or creation/restore (clock seconds)
    last_persist_time: float | None  # when the last saved snapshot was taken
    unattributed_outcomes: dict[str, int]  # results whose prediction id names no known model


class _Model:
    """Mutable per-model state; only the Monitor touches it, under its lock."""

    __slots__ = ("index", "reference", "registered", "group_names", "group_ids", "key_cache", "rings", "totals")

    def __init__(self, index: int, reference: ModelReference, config: MonitorConfig) -> None:
        self.index = index
        self.reference = reference
        self.registered = True
        self.group_names: list[str] = []
        self.group_ids: dict[str, int] = {}
        self.key_cache: dict[tuple, int] = {}  # group attribute values → group id
        self.rings = [WindowRing(w, config.buckets_per_window) for w in config.windows_s]
        self.totals = dict.fromkeys(asdict(MonitorTotals()), 0)


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
        self._models: list[_Model] = []
        self._by_name: dict[str, _Model] = {}
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
                model = _Model(len(self._models), reference, self.config)
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
            return _group_name(self._known(name).reference.group_by, groups, field_prefix)

    # -- recording -----------------------------------------------------------------------

    def record_predictions(
        self,
        name: str,
        items: Iterable[tuple[str, float, Mapping[str, str], int, Sequence[float], int | None]],
    ) -> int:
        """Record served predictions: (prediction_id, time_s, groups, predicted_class,
        probabilities, shadow_class or None). The whole batch is checked before anything is
        counted. Returns the number recorded."""
        with self._lock:
            model = self._registered(name)
            now = self._clock()
            rows = self._check_predictions(model, items, now)
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
        prediction's time."""
        counts = dict.fromkeys(OUTCOME_RESULTS, 0)
        with self._lock:
            now = self._clock()
            late_before = now - self.config.longest_window_s
            ledger, models = self._ledger, self._models
            now_indexes: dict[int, list[int]] = {}  # per model touched, computed once per call
            for prediction_id, label in items:
                entry = ledger.pending(prediction_id, now)
                if entry is None:
                    joined_model = ledger.joined_model(prediction_id)
                    result = "unknown" if joined_model is None else "duplicate"
                    if label < 0:
                        result = "invalid"
                    self._count_unmatched(prediction_id, joined_model, result)
                    counts[result] += 1
                    continue
                model = models[entry.model]
                num_classes = model.reference.num_classes
                if label < 0 or (num_classes is not None and label >= num_classes):
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
            rows = self._check_evaluations(model, records, now)
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
            models = [
                {
                    "reference": m.reference.to_json(),
                    "registered": m.registered,
                    "groups": list(m.group_names),
                    "totals": dict(m.totals),
                    "rings": [ring.to_json() for ring in m.rings],
                }
                for m in self._models
            ]
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
        bounds forget the oldest entries."""
        if snapshot.get("format") != SNAPSHOT_FORMAT or snapshot.get("version") != SNAPSHOT_VERSION:
            raise ValueError(f"not an {SNAPSHOT_FORMAT} v{SNAPSHOT_VERSION} snapshot")
        saved_data = dict(snapshot["config"])
        saved = MonitorConfig(**{**saved_data, "windows_s": tuple(saved_data["windows_s"])})
        config = config or saved
        same_buckets = config.buckets_per_window == saved.buckets_per_window
        monitor = cls(config, clock)
        for index, data in enumerate(snapshot["models"]):
            model = _Model(index, ModelReference.from_json(data["reference"]), config)
            model.registered = bool(data["registered"])
            model.group_names = list(data["groups"])
            model.group_ids = {g: i for i, g in enumerate(model.group_names)}
            model.totals.update(data["totals"])
            saved_rings = {int(r["window_s"]): r for r in data["rings"]} if same_buckets else {}
            model.rings = [WindowRing.from_json(saved_rings[w], config.buckets_per_window) if w in saved_rings
                           else WindowRing(w, config.buckets_per_window) for w in config.windows_s]
            monitor._models.append(model)
            monitor._by_name[model.reference.name] = model
        monitor._ledger = JoinLedger.from_json(snapshot["ledger"], config.max_pending, config.pending_ttl_s,
                                               config.remembered_outcome_ids)
        monitor._unattributed.update(snapshot["unattributed_outcomes"])
        monitor._last_persist_time = snapshot.get("taken_at")
        return monitor

    def save(self, path: str | Path) -> None:
        """Write the snapshot atomically (temporary file in the same folder, fsync, rename).
        Serialising happens outside the lock, so traffic waits only for the copy."""
        snapshot = self.snapshot()
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        try:
            with open(tmp, "w", encoding="utf-8") as f:
                json.dump(snapshot, f, separators=(",", ":"), allow_nan=False)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        with self._lock:
            self._last_persist_time = snapshot["taken_at"]

    @classmethod
    def load(cls, path: str | Path, clock: Callable[[], float] = time.time,
             config: MonitorConfig | None = None) -> Monitor:
        """Monitor.restore of a file `save` wrote."""
        with open(path, encoding="utf-8") as f:
            return cls.restore(json.load(f), clock, config)

    # -- internals (called with the lock held) -------------------------------------------

    def _known(self, name: str) -> _Model:
        model = self._by_name.get(name)
        if model is None:
            raise UnknownModelError(f"no monitored model named {name!r}", field="model")
        return model

    def _registered(self, name: str) -> _Model:
        model = self._known(name)
        if not model.registered:
            raise UnknownModelError(f"model {name!r} is not deployed", field="model")
        return model

    def _check_predictions(self, model: _Model, items, now: float) -> list[tuple]:
        rows, seen = [], set()
        num_classes = model.reference.num_classes
        group_by = model.reference.group_by
        for i, (prediction_id, t, groups, cls, probabilities, shadow) in enumerate(items):
            if not isinstance(prediction_id, str) or not prediction_id:
                raise MonitorInputError("must be a non-empty string", field=f"predictions[{i}].prediction_id")
            if prediction_id in seen or self._ledger.knows(prediction_id):
                raise MonitorInputError(f"{prediction_id!r} was already recorded",
                                        field=f"predictions[{i}].prediction_id")
            seen.add(prediction_id)
            if not is_finite(t):
                raise MonitorInputError(f"must be a finite time, got {t!r}", field=f"predictions[{i}].time_s")
            width = len(probabilities)
            if not 0 <= cls < width or (num_classes is not None and cls >= num_classes):
                raise MonitorInputError(f"{cls} is not a class of the {width} probabilities",
                                        field=f"predictions[{i}].predicted_class")
            if shadow is not None and not 0 <= shadow < width:
                raise MonitorInputError(f"{shadow} is not a class of the {width} probabilities",
                                        field=f"predictions[{i}].shadow_class")
            key = _group_key(group_by, groups, f"instances[{i}].groups")
            boundary = 1.0 - sum(map(mul, probabilities, probabilities))
            rows.append((prediction_id, min(t, now), key, cls, float(probabilities[cls]), boundary, shadow))
        return rows

    def _check_evaluations(self, model: _Model, records, now: float) -> list[tuple]:
        rows = []
        num_classes = model.reference.num_classes
        group_by = model.reference.group_by
        for i, (t, groups, label, cls, confidence) in enumerate(records):
            if t is None:
                t = now
            elif not is_finite(t):
                raise MonitorInputError(f"must be a finite time, got {t!r}", field=f"records[{i}].time")
            for field_name, value in (("label", label), ("predicted_class", cls)):
                if value < 0 or (num_classes is not None and value >= num_classes):
                    limit = f" (the model has {num_classes} classes)" if num_classes is not None else ""
                    raise MonitorInputError(f"{value} is not a class{limit}", field=f"records[{i}].{field_name}")
            if confidence is not None and (not is_finite(confidence) or not 0.0 <= confidence <= 1.0):
                raise MonitorInputError(f"must be in [0, 1], got {confidence!r}", field=f"records[{i}].confidence")
            key = _group_key(group_by, groups, f"records[{i}].groups")
            rows.append((min(t, now), key, label, cls, confidence))
        return rows

    def _group_ids(self, model: _Model, keys: list[tuple], field_prefix: str) -> list[int]:
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

    def _group_id(self, model: _Model, group: str, field_prefix: str) -> int:
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


def _group_key(group_by: tuple[str, ...], groups: Mapping[str, str], field_prefix: str) -> tuple[str, ...]:
    try:
        key = tuple(groups[attribute] for attribute in group_by)
    except KeyError as missing:
        raise MonitorInputError(f"the model is monitored by {list(group_by)}; this instance has no {missing.args[0]!r}",
                                field=f"{field_prefix}.{missing.args[0]}") from None
    for attribute, value in zip(group_by, key):
        if not isinstance(value, str) or not value or len(value) > MAX_GROUP_VALUE_CHARS:
            raise MonitorInputError(f"must be a non-empty string of at most {MAX_GROUP_VALUE_CHARS} characters",
                                    field=f"{field_prefix}.{attribute}")
    return key


def _group_name(group_by: tuple[str, ...], groups: Mapping[str, str], field_prefix: str) -> str:
    return INTERSECTION_SEPARATOR.join(_group_key(group_by, groups, field_prefix))
