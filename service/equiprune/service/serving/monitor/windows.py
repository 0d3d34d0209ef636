"""Sliding windows as rings of time buckets, and the per-group numbers of one window.

A window of `window_s` seconds is a ring of B buckets, each `window_s / B` seconds wide. A
bucket is identified by its index `floor(t / width)`; slot `index % B` of the ring holds it
until a newer bucket needs the slot, which drops the old one. That is the whole memory bound:
B slots per window, whatever the traffic.

A window's value at time `now` is the sum of the buckets whose index lies in
`(now_index − B, now_index]`: the current, partly elapsed bucket and the B − 1 before it. So
the window really spans between `window_s − width` and `window_s` seconds (with the default
60 buckets: the 5-minute window covers 295 to 300 s); an event drops out of it all at once
when its bucket leaves the ring, not at exactly `window_s` after it happened.

Each bucket holds, per group, a flat run of `FIELDS` numbers (see the `F_*` offsets), so that
summing buckets is one `map(add, …)` over a list rather than a loop per field.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from operator import add

from equiprune.engine.metrics import GroupMetrics, OverallMetrics, Reference, Tally, group_metrics, summarise

# Per-group fields of a bucket (offsets into the group's run of FIELDS numbers).
F_PREDICTIONS = 0  # predictions made (Predict and direct evaluation records)
F_CONFIDENCE_N = 1  # predictions with a known confidence
F_CONFIDENCE_SUM = 2
F_BOUNDARY_N = 3  # predictions with a known boundary proxy (1 − Σp²)
F_BOUNDARY_SUM = 4
F_SHADOW_N = 5  # predictions the dense shadow also classified
F_SHADOW_AGREE = 6  # ... and agreed on
F_OUTCOMES = 7  # labelled outcomes (n)
F_CORRECT = 8
FIELDS = 9

# Fields that only mean something together (a sum and its count, agreements and their count,
# correct and n): when repair() must reset one of them it resets its partner too, so that a
# mean or a share over the window stays one of real values.
PARTNER = {
    F_CONFIDENCE_N: F_CONFIDENCE_SUM, F_CONFIDENCE_SUM: F_CONFIDENCE_N,
    F_BOUNDARY_N: F_BOUNDARY_SUM, F_BOUNDARY_SUM: F_BOUNDARY_N,
    F_SHADOW_N: F_SHADOW_AGREE, F_SHADOW_AGREE: F_SHADOW_N,
    F_OUTCOMES: F_CORRECT, F_CORRECT: F_OUTCOMES,
}


def window_label(seconds: int) -> str:
    """'5m', '1h', '1d', '90s': the largest unit that divides the length evenly."""
    for unit_s, suffix in ((86400, "d"), (3600, "h"), (60, "m")):
        if seconds % unit_s == 0:
            return f"{seconds // unit_s}{suffix}"
    return f"{seconds}s"


class WindowRing:
    """One window's ring of buckets for one model (all its groups)."""

    __slots__ = ("window_s", "buckets", "width", "starts", "slots")

    def __init__(self, window_s: int, buckets: int) -> None:
        self.window_s = window_s
        self.buckets = buckets
        self.width = window_s / buckets
        self.starts = [-1] * buckets  # bucket index held by each slot (-1: never used)
        self.slots: list[list[float]] = [[] for _ in range(buckets)]

    def index(self, t: float) -> int:
        return int(t // self.width)

    def slot_for(self, t: float, now_index: int) -> list[float] | None:
        """The bucket run to add an event at time `t` to, or None when `t` is outside the
        window at `now_index` (too old, or its slot already holds a newer bucket)."""
        idx = int(t // self.width)
        if idx <= now_index - self.buckets:
            return None
        pos = idx % self.buckets
        held = self.starts[pos]
        if held != idx:
            if held > idx:
                return None
            self.starts[pos] = idx
            self.slots[pos] = []
        return self.slots[pos]

    def sum(self, now: float, size: int) -> list[float]:
        """Per-group sums (a flat run of `size` numbers) over the buckets inside the window."""
        now_index = int(now // self.width)
        oldest = now_index - self.buckets
        total = [0] * size
        for held, run in zip(self.starts, self.slots):
            if oldest < held <= now_index and run:
                total[: len(run)] = map(add, total, run)
        return total

    def repair(self) -> int:
        """Reset every value that is not a plain finite number. Only a bug can put one here
        (the monitor refuses such input), but one NaN would make its window's means NaN and
        the model's snapshot unwritable. A value is reset to 0 together with its PARTNER; a
        finite number of another type (numpy's) becomes a float. Returns how many values
        were repaired (a good partner reset along with a bad value is not counted)."""
        repaired = 0
        for run in self.slots:
            for offset, value in enumerate(run):
                if _is_plain_finite(value):
                    continue
                repaired += 1
                number = _as_finite_float(value)
                if number is not None:
                    run[offset] = number
                    continue
                run[offset] = 0
                field = offset % FIELDS
                if field in PARTNER:
                    partner = offset - field + PARTNER[field]
                    if partner > offset and not _is_plain_finite(run[partner]):
                        repaired += 1  # bad as well: count it before the loop would see it reset
                    run[partner] = 0
        return repaired

    def to_json(self) -> dict:
        used = [(pos, held) for pos, held in enumerate(self.starts) if held >= 0 and self.slots[pos]]
        return {"window_s": self.window_s, "slots": [[pos, held, list(self.slots[pos])] for pos, held in used]}

    @classmethod
    def from_json(cls, data: dict, buckets: int, groups: int) -> WindowRing:
        """The ring `to_json` wrote, for a model with `groups` groups. ValueError for one that
        cannot be this model's: a slot outside the ring or holding a bucket another slot would,
        or a run that is not whole groups of numbers or is longer than the model's groups.
        Non-finite numbers are kept for the caller to repair() and count."""
        ring = cls(int(data["window_s"]), buckets)
        for pos, held, run in data["slots"]:
            if not (type(pos) is int and type(held) is int and 0 <= pos < buckets and held >= 0
                    and held % buckets == pos):
                raise ValueError(f"window {ring.window_s} s: slot {pos!r} cannot hold bucket {held!r}")
            if (not isinstance(run, list) or len(run) % FIELDS or len(run) > groups * FIELDS
                    or not all(type(v) is int or type(v) is float for v in run)):  # NaN is a float
                raise ValueError(f"window {ring.window_s} s, slot {pos}: not {groups} groups × {FIELDS} numbers")
            ring.starts[pos] = held
            ring.slots[pos] = list(run)
        return ring


def grow(run: list[float], group_id: int) -> int:
    """Make `run` long enough for `group_id`'s fields; returns the group's offset."""
    base = group_id * FIELDS
    if len(run) <= base:
        run.extend([0] * (base + FIELDS - len(run)))
    return base


def is_finite(value: float) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def _is_plain_finite(value) -> bool:
    """What the JSON snapshot can hold as is (a bool or a numpy number would need converting)."""
    return (type(value) is int or type(value) is float) and math.isfinite(value)


def _as_finite_float(value) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


@dataclass(frozen=True)
class GroupWindowMetrics:
    """One group's numbers over one window (field names as in serving.proto)."""

    group: str
    predictions: int
    n: int
    accuracy: float | None
    accuracy_ci_low: float | None
    accuracy_ci_high: float | None
    error_rate: float | None
    mean_confidence: float | None
    mean_boundary_proxy: float | None
    reference_accuracy: float | None
    accuracy_drop: float | None  # Δ_g = reference − accuracy
    excess_accuracy_gap: float | None  # ψ_g = Δ_g − overall Δ
    shadow_agreement: float | None
    shadow_n: int
    sufficient_data: bool


@dataclass(frozen=True)
class WindowMetrics:
    """A model's numbers over one window (field names as in serving.proto)."""

    window_seconds: int
    groups: tuple[GroupWindowMetrics, ...]  # in name order
    overall: GroupWindowMetrics  # group == ""
    max_excess_accuracy_gap: float | None
    max_excess_accuracy_gap_group: str  # "" when undefined
    accuracy_parity_gap: float | None

    @property
    def label(self) -> str:
        return window_label(self.window_seconds)

    def group(self, name: str) -> GroupWindowMetrics:
        for g in self.groups:
            if g.group == name:
                return g
        raise KeyError(name)


def window_metrics(
    window_s: int,
    sums: list[float],
    group_names: list[str],
    reference_accuracy: dict[str, float],
    reference_overall_accuracy: float | None,
    min_count: int,
) -> WindowMetrics:
    """Turn one window's per-group sums into metrics. The accuracy, Wilson interval, Δ_g, ψ_g,
    parity gap and max ψ_g come from engine/metrics.py, the formulas job reports use. Without a
    reference overall accuracy, the reference is the n-weighted mean of the references of the
    groups with outcomes in this window. The rest (confidence, boundary proxy, shadow agreement)
    is the monitor's own and stays here."""
    per_group = {name: sums[gid * FIELDS : (gid + 1) * FIELDS] for gid, name in enumerate(group_names)}
    for name in reference_accuracy:  # a referenced group without traffic still shows (as zeros)
        per_group.setdefault(name, [0] * FIELDS)
    total = [0] * FIELDS
    for run in per_group.values():
        total = list(map(add, total, run))

    # Tallies in the groups' id order (the order the overall reference has always been summed
    # in); the groups are shown in name order, and the summary is taken over that order.
    frame = group_metrics({name: _tally(run) for name, run in per_group.items()},
                          Reference(reference_accuracy, reference_overall_accuracy),
                          overall=_tally(total), min_group_size=min_count, gap_intervals=False)
    core = {g.group: g for g in frame.groups}
    names = sorted(per_group)
    summary = summarise([core[name] for name in names], None)
    overall = frame.overall
    return WindowMetrics(
        window_seconds=window_s,
        groups=tuple(_window_group(name, per_group[name], core[name], reference_accuracy.get(name)) for name in names),
        overall=_window_group("", total, overall, overall.reference_accuracy, sufficient=overall.n >= min_count),
        max_excess_accuracy_gap=summary.max_excess_accuracy_gap,
        max_excess_accuracy_gap_group=summary.max_excess_accuracy_gap_group or "",
        accuracy_parity_gap=summary.accuracy_parity_gap,
    )


def _tally(run: list[float]) -> Tally:
    # Counts are guarded so that a non-finite value a bug let into a bucket makes that number
    # unset (or 0) instead of making metrics() raise (int(nan)) or return NaN.
    n = _count(run[F_OUTCOMES])
    return Tally(n, min(_count(run[F_CORRECT]), n))


def _window_group(name: str, run: list[float], core: GroupMetrics | OverallMetrics, reference: float | None,
                  sufficient: bool | None = None) -> GroupWindowMetrics:
    """The core's numbers for one group (or overall) plus the monitor's own means over `run`.
    A group's reference shows even without outcomes (it is configuration, not a measurement)."""
    shadow_n = _count(run[F_SHADOW_N])
    accuracy = core.accuracy
    return GroupWindowMetrics(
        group=name,
        predictions=_count(run[F_PREDICTIONS]),
        n=core.n,
        accuracy=accuracy,
        accuracy_ci_low=core.accuracy_ci_low,
        accuracy_ci_high=core.accuracy_ci_high,
        error_rate=None if accuracy is None else 1.0 - accuracy,
        mean_confidence=_ratio(run[F_CONFIDENCE_SUM], run[F_CONFIDENCE_N]),
        mean_boundary_proxy=_ratio(run[F_BOUNDARY_SUM], run[F_BOUNDARY_N]),
        reference_accuracy=reference,
        accuracy_drop=core.accuracy_drop,
        excess_accuracy_gap=getattr(core, "excess_accuracy_gap", None),
        shadow_agreement=_ratio(min(_count(run[F_SHADOW_AGREE]), shadow_n), shadow_n),
        shadow_n=shadow_n,
        sufficient_data=core.sufficient_data if sufficient is None else sufficient,
    )


def _count(value: float) -> int:
    """A summed count as an int; 0 for one that is not a finite positive number."""
    return int(value) if is_finite(value) and value > 0 else 0


def _ratio(numerator: float, count: float) -> float | None:
    """numerator / count, or None when there is nothing to divide by or either is not finite."""
    if not (is_finite(count) and count > 0 and is_finite(numerator)):
        return None
    return numerator / count
