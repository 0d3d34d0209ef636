"""What the monitor refuses, and the errors it refuses with.

One request must never poison the monitor for everybody (issue #8): a NaN summed into a bucket
makes every mean of that window NaN for as long as the bucket lives, and a snapshot holding a
NaN cannot be written as strict JSON. So nothing but finite numbers and in-range class indexes
enters. Each batch is checked whole here before the monitor counts any of it, and a refusal
names the request's field at fault (`instances[3].probabilities`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from numbers import Integral, Real

from equiprune.engine.dataset import INTERSECTION_SEPARATOR
from equiprune.service.errors import InvalidArgument, NotFound, ResourceExhausted

from equiprune.service.serving.monitor.windows import is_finite

MAX_GROUP_VALUE_CHARS = 200
# A softmax computed in float32 can leave [0, 1] by a few ulps; a value further out is a broken
# model output (an overflow), not rounding. Accepted values are clamped into [0, 1].
PROBABILITY_SLACK = 1e-6


class MonitorInputError(InvalidArgument, ValueError):
    """Bad input to the monitor; `field` names the part of the request at fault.
    An InvalidArgument, so errors.client_status maps it to INVALID_ARGUMENT as is."""


class MonitorGroupLimitError(ResourceExhausted, ValueError):
    """A model already monitors `max_groups_per_model` groups and a new one arrived."""


class UnknownModelError(NotFound, LookupError):
    """No model of that name was ever registered (or it is not registered now, for writes)."""


def is_class_index(value) -> bool:
    """A non-negative integer (numpy's included; a bool or a float such as 1.0 is not one)."""
    return (type(value) is int or (isinstance(value, Integral) and not isinstance(value, bool))) and value >= 0


def is_finite_real(value) -> bool:
    """A finite real number (numpy's included, bool excluded)."""
    return isinstance(value, Real) and not isinstance(value, bool) and math.isfinite(value)


def check_predictions(
    items: Iterable[tuple[str, float, Mapping[str, str], int, Sequence[float], int | None]],
    group_by: tuple[str, ...],
    num_classes: int | None,
    is_recorded: Callable[[str], bool],
    now: float,
) -> list[tuple]:
    """Rows (prediction_id, time, group key, class, confidence, boundary proxy, shadow class)
    of a batch of predictions, or MonitorInputError for the first bad item. Times later than
    `now` are taken as now; classes become plain ints (the snapshot is JSON)."""
    rows, seen = [], set()
    for i, (prediction_id, t, groups, cls, probabilities, shadow) in enumerate(items):
        if not isinstance(prediction_id, str) or not prediction_id:
            raise MonitorInputError("must be a non-empty string", field=f"predictions[{i}].prediction_id")
        if prediction_id in seen or is_recorded(prediction_id):
            raise MonitorInputError(f"{prediction_id!r} was already recorded", field=f"predictions[{i}].prediction_id")
        seen.add(prediction_id)
        if not is_finite(t):
            raise MonitorInputError(f"must be a finite time, got {t!r}", field=f"predictions[{i}].time_s")
        boundary = _boundary_proxy(probabilities, f"instances[{i}].probabilities")
        width = len(probabilities)
        if not is_class_index(cls) or cls >= width or (num_classes is not None and cls >= num_classes):
            raise MonitorInputError(f"{cls!r} is not a class of the {width} probabilities",
                                    field=f"predictions[{i}].predicted_class")
        if shadow is not None and (not is_class_index(shadow) or shadow >= width):
            raise MonitorInputError(f"{shadow!r} is not a class of the {width} probabilities",
                                    field=f"predictions[{i}].shadow_class")
        key = group_key(group_by, groups, f"instances[{i}].groups")
        confidence = float(probabilities[cls])
        if not 0.0 <= confidence <= 1.0:  # within the slack: clamp (comparisons, not calls: hot path)
            confidence = 1.0 if confidence > 1.0 else 0.0
        rows.append((prediction_id, min(t, now), key, int(cls), confidence, boundary,
                     None if shadow is None else int(shadow)))
    return rows


def check_evaluations(
    records: Iterable[tuple[float | None, Mapping[str, str], int, int, float | None]],
    group_by: tuple[str, ...],
    num_classes: int | None,
    now: float,
) -> list[tuple]:
    """Rows (time, group key, label, predicted class, confidence or None) of a batch of
    evaluation records, or MonitorInputError for the first bad one. A time of None is now."""
    rows = []
    for i, (t, groups, label, cls, confidence) in enumerate(records):
        if t is None:
            t = now
        elif not is_finite(t):
            raise MonitorInputError(f"must be a finite time, got {t!r}", field=f"records[{i}].time")
        for field_name, value in (("label", label), ("predicted_class", cls)):
            if not is_class_index(value) or (num_classes is not None and value >= num_classes):
                limit = f" (the model has {num_classes} classes)" if num_classes is not None else ""
                raise MonitorInputError(f"{value!r} is not a class{limit}", field=f"records[{i}].{field_name}")
        if confidence is not None and (not is_finite_real(confidence) or not 0.0 <= confidence <= 1.0):
            raise MonitorInputError(f"must be a number in [0, 1], got {confidence!r}",
                                    field=f"records[{i}].confidence")
        key = group_key(group_by, groups, f"records[{i}].groups")
        rows.append((min(t, now), key, int(label), int(cls), None if confidence is None else float(confidence)))
    return rows


def group_key(group_by: tuple[str, ...], groups: Mapping[str, str], field_prefix: str) -> tuple[str, ...]:
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


def group_name(group_by: tuple[str, ...], groups: Mapping[str, str], field_prefix: str) -> str:
    return INTERSECTION_SEPARATOR.join(group_key(group_by, groups, field_prefix))


def _boundary_proxy(probabilities: Sequence[float], field: str) -> float:
    """1 − Σp² (at most 1; clamped at 0) of a probability vector; refuses one that is empty, holds
    something that is not a number, or a value that is not finite or outside [0, 1]."""
    try:
        # math.hypot is √Σp² in one C call, several times faster than summing the squares in
        # Python, and a NaN or an infinity anywhere makes it non-finite.
        norm = math.hypot(*probabilities)
        valid = math.isfinite(norm) and _within_unit_range(probabilities)
    except (TypeError, ValueError):  # not numbers (or complex ones), or empty: min() of nothing
        raise MonitorInputError("must be a non-empty list of numbers", field=field) from None
    if not valid:
        index, value = next((j, p) for j, p in enumerate(probabilities)
                            if not (is_finite_real(p) and -PROBABILITY_SLACK <= p <= 1.0 + PROBABILITY_SLACK))
        raise MonitorInputError(f"probability {index} is {value!r}; each must be a finite number in [0, 1]",
                                field=field)
    boundary = 1.0 - norm * norm
    return boundary if boundary >= 0.0 else 0.0  # only the slack can take it below 0


def _within_unit_range(probabilities: Sequence[float]) -> bool:
    """Every value (all finite) within [0, 1] up to the slack. Recording runs on every Predict:
    a softmax output, with no negative value and a sum of 1, is proven in range by one min()
    and the fast float sum(); only another vector pays for a max() as well."""
    lowest = min(probabilities)
    if lowest >= 0.0 and sum(probabilities) <= 1.0 + PROBABILITY_SLACK:
        return True  # none negative and the sum at most 1: none above 1 either
    return lowest >= -PROBABILITY_SLACK and max(probabilities) <= 1.0 + PROBABILITY_SLACK
