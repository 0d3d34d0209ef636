"""One monitored model: what it is judged against (ModelReference), the mutable state the
monitor keeps for it (ModelState: groups, window rings, lifetime totals) with its snapshot
section, and what is answered about it (MonitorTotals, ModelMetrics)."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field

from equiprune.service.serving.monitor.refusals import MonitorInputError, is_class_index, is_finite_real
from equiprune.service.serving.monitor.windows import WindowMetrics, WindowRing

log = logging.getLogger("equiprune.service.serving.monitor")


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
        # Everything here is compared with live accuracies and exported: only finite numbers.
        if not isinstance(self.name, str) or not self.name:
            raise MonitorInputError("must be a non-empty string", field="name")
        group_by = tuple(self.group_by)
        if not group_by or any(not isinstance(a, str) or not a for a in group_by):
            raise MonitorInputError("must name at least one attribute, none empty", field="group_by")
        object.__setattr__(self, "group_by", group_by)
        reference = dict(self.reference_accuracy)
        for group, accuracy in reference.items():
            if not isinstance(group, str) or not group:
                raise MonitorInputError(f"group names must be non-empty strings, got {group!r}",
                                        field="reference_accuracy")
            if not is_finite_real(accuracy) or not 0.0 <= accuracy <= 1.0:
                raise MonitorInputError(f"must be in [0, 1], got {accuracy!r}", field=f"reference_accuracy[{group}]")
            reference[group] = float(accuracy)
        object.__setattr__(self, "reference_accuracy", reference)
        overall = self.reference_overall_accuracy
        if overall is not None and (not is_finite_real(overall) or not 0.0 <= overall <= 1.0):
            raise MonitorInputError(f"must be in [0, 1], got {overall!r}", field="reference_overall_accuracy")
        if not is_finite_real(self.tolerance) or not 0.0 <= self.tolerance < 1.0:
            raise MonitorInputError(f"must be in [0, 1), got {self.tolerance!r}", field="tolerance")
        if self.num_classes is not None and (not is_class_index(self.num_classes) or self.num_classes < 1):
            raise MonitorInputError(f"must be an integer of at least 1, got {self.num_classes!r}",
                                    field="num_classes")

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


class ModelState:
    """Mutable per-model state; only the Monitor touches it, under its lock."""

    __slots__ = ("index", "reference", "registered", "group_names", "group_ids", "key_cache", "rings", "totals",
                 "repaired_values")

    def __init__(self, index: int, reference: ModelReference, windows_s: Sequence[int], buckets: int) -> None:
        self.index = index
        self.reference = reference
        self.registered = True
        self.group_names: list[str] = []
        self.group_ids: dict[str, int] = {}
        self.key_cache: dict[tuple, int] = {}  # group attribute values → group id
        self.rings = [WindowRing(w, buckets) for w in windows_s]
        self.totals = dict.fromkeys(asdict(MonitorTotals()), 0)
        self.repaired_values = 0  # lifetime; saved with the model

    def to_json(self) -> dict:
        """This model's snapshot section. Copies every list: called under the monitor's lock."""
        return {
            "reference": self.reference.to_json(),
            "registered": self.registered,
            "groups": list(self.group_names),
            "totals": dict(self.totals),
            "repaired_values": self.repaired_values,
            "rings": [ring.to_json() for ring in self.rings],
        }

    def repair(self) -> int:
        """Reset the non-finite values of every ring (see WindowRing.repair); returns how many."""
        repaired = sum(ring.repair() for ring in self.rings)
        self.repaired_values += repaired
        return repaired

    @classmethod
    def from_json(cls, index: int, section: dict, windows_s: Sequence[int], buckets: int,
                  saved_buckets: int) -> ModelState:
        """A model from its snapshot section, with rings for `windows_s` of `buckets` buckets
        (a window the section has keeps its buckets when `saved_buckets == buckets`; any other
        starts empty). Raises (anything) when the section is damaged. Non-finite window values
        (json.load reads NaN and Infinity, so a hand-edited file may hold them) are repaired."""
        model = cls(index, ModelReference.from_json(section["reference"]), windows_s, buckets)
        model.registered = section["registered"] is True
        groups = section["groups"]
        if (not isinstance(groups, list) or not all(isinstance(g, str) and g for g in groups)
                or len(set(groups)) < len(groups)):
            raise ValueError("its group names are not distinct non-empty strings")
        model.group_names = list(groups)
        model.group_ids = {g: i for i, g in enumerate(groups)}
        totals = section["totals"]
        if set(totals) - set(model.totals) or not all(type(v) is int and v >= 0 for v in totals.values()):
            raise ValueError(f"its totals are not counts of {sorted(model.totals)}")
        model.totals.update(totals)
        repaired_before = section.get("repaired_values", 0)  # absent in snapshots from before issue #8
        if type(repaired_before) is not int or repaired_before < 0:
            raise ValueError(f"its repaired_values is not a count: {repaired_before!r}")
        saved_rings = {int(r["window_s"]): r for r in section["rings"]} if buckets == saved_buckets else {}
        model.rings = [WindowRing.from_json(saved_rings[w], buckets, len(groups)) if w in saved_rings
                       else WindowRing(w, buckets) for w in windows_s]
        model.repaired_values = repaired_before
        repaired = model.repair()
        if repaired:
            log.error("monitor snapshot: model %r had %d window values that were not finite numbers; reset them",
                      model.reference.name, repaired)
        return model
