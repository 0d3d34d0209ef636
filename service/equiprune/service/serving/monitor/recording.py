"""Recording into the monitor: served predictions, delayed outcomes joined to them, and
direct evaluation records, each batch checked whole before anything is counted.

`MonitorRecording` is a part of `Monitor` (state.py), which owns the lock, the models, the
join ledger and the clock; every public method here takes the lock once.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from equiprune.engine.dataset import INTERSECTION_SEPARATOR

from equiprune.service.serving.monitor.config import OUTCOME_RESULTS, model_of_prediction_id
from equiprune.service.serving.monitor.ledger import PendingPrediction
from equiprune.service.serving.monitor.model import ModelState
from equiprune.service.serving.monitor.refusals import (
    MonitorGroupLimitError, check_evaluations, check_predictions, is_class_index,
)
from equiprune.service.serving.monitor.windows import (
    F_BOUNDARY_N, F_BOUNDARY_SUM, F_CONFIDENCE_N, F_CONFIDENCE_SUM, F_CORRECT, F_OUTCOMES, F_PREDICTIONS,
    F_SHADOW_AGREE, F_SHADOW_N, FIELDS, grow,
)


class MonitorRecording:
    """The recording half of `Monitor`."""

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

    # -- internals (called with the lock held) -------------------------------------------

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
