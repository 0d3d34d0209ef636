"""Serving calls of the SDK: deploy models, predict with them, report outcomes, read the monitor.

    with EquipruneClient("127.0.0.1:9000") as client:
        client.deploy_model("digits", model_id, ["cohort"], reference_job_id=job_id)
        predictions = client.predict("digits", [(pixels, {"cohort": "minority"}) for pixels in rows])
        counts = client.report_outcomes((p.prediction_id, label) for p, label in zip(predictions, labels))
        metrics = client.get_model_metrics("digits")

EquipruneClient inherits these methods (ServingCalls); they use its channel, deadline and
retry policy. Large inputs are split: Predict takes at most 1024 instances per call,
ReportOutcomes and RecordEvaluations at most 100,000 items (10,000 per call by default).

What is retried, and what a retry may cost (see retry.py for the general rule):

* Reads (ListServedModels, GetModelMetrics): on UNAVAILABLE and DEADLINE_EXCEEDED.
* DeployModel: on UNAVAILABLE. Deploying a name again replaces it with the same thing.
* UndeployModel: on UNAVAILABLE. When a retry finds the name already gone (NOT_FOUND), an
  earlier attempt undeployed it and only its reply was lost: that counts as success.
* ReportOutcomes: on UNAVAILABLE. Safe: the server joins an outcome to its prediction once and
  counts a repeat as `duplicate`. The price: when the first attempt was applied and only its
  reply was lost, the counts returned are the retry's, so that batch shows as duplicates.
* Predict and RecordEvaluations: on UNAVAILABLE only, never on DEADLINE_EXCEEDED (the call may
  be running on a replica). UNAVAILABLE normally means the request never reached a replica,
  but a proxy that fails after forwarding it answers the same: then the repeat is recorded a
  second time (a Predict twice under two prediction ids, an evaluation record counted twice).
  Callers who need at most once build their client with `retries=0` and decide themselves.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import datetime, timezone
from itertools import islice
from typing import Any, TypeVar

import grpc

from equiprune.v1 import serving_pb2

from .errors import EquipruneError, SpecError
from .retry import RETRY_ALWAYS, call_with_retry

MAX_INSTANCES_PER_CALL = 1024
MAX_ITEMS_PER_CALL = 100_000
DEFAULT_ITEMS_PER_CALL = 10_000
OUTCOME_COUNTS = ("joined", "unknown", "duplicate", "late", "invalid")
EVALUATION_COUNTS = ("recorded", "late")
# The server's rule for served names.
SERVED_NAME = re.compile(r"^[a-z][a-z0-9-]{0,62}$")

T = TypeVar("T")


class ServingCalls:
    """The ServingService methods of EquipruneClient.

    Relies on the client's `_serving` stub, `_unary` (one call with deadline and retries),
    `_slow` (the deadline of a heavy call), `policy`, `timeout` and `_sleep`.
    """

    # ------------------------------------------------------------ deployments

    def deploy_model(self, name: str, artifact_id: str, group_by: Sequence[str], *, shadow_artifact_id: str = "",
                     reference_job_id: str = "", reference_accuracy: Mapping[str, float] | None = None,
                     reference_overall_accuracy: float | None = None, tolerance: float | None = None,
                     input_shape: Sequence[int] | None = None,
                     timeout: float | None = None) -> serving_pb2.ServedModel:
        """Serve a model artifact under `name` (replacing what was served there), monitored by
        the `group_by` attributes against a reference: the dense report of `reference_job_id`,
        or `reference_accuracy` per group (with `reference_overall_accuracy`). `tolerance` is
        ε (server default 0.01); `input_shape` the shape of one instance (default: the
        reference job's dataset). `group_by` may be one attribute name. Loading the model can
        take a while: the deadline is long (at least SLOW_CALL_SECONDS)."""
        request = deploy_request(name, artifact_id, group_by, shadow_artifact_id=shadow_artifact_id,
                                 reference_job_id=reference_job_id, reference_accuracy=reference_accuracy,
                                 reference_overall_accuracy=reference_overall_accuracy, tolerance=tolerance,
                                 input_shape=input_shape)
        return self._unary(self._serving.DeployModel, request, timeout=self._slow(timeout)).model

    def undeploy_model(self, name: str, *, timeout: float | None = None) -> None:
        """Stop serving `name`; its monitor history stays readable (get_model_metrics)."""
        _require(name, "name")
        request = serving_pb2.UndeployModelRequest(name=name)
        deadline = self.timeout if timeout is None else timeout
        attempts = 0

        def call():
            nonlocal attempts
            attempts += 1
            return self._serving.UndeployModel(request, timeout=deadline)

        try:
            call_with_retry(call, self.policy, retry_codes=RETRY_ALWAYS, sleep=self._sleep)
        except EquipruneError as err:
            # A retry that finds nothing to undeploy follows an attempt that did it.
            if not (err.code == grpc.StatusCode.NOT_FOUND and attempts > 1):
                raise

    def list_served_models(self, *, timeout: float | None = None) -> list[serving_pb2.ServedModel]:
        """Every deployed model, by name."""
        reply = self._unary(self._serving.ListServedModels, serving_pb2.ListServedModelsRequest(),
                            timeout=timeout, read=True)
        return list(reply.models)

    # ------------------------------------------------------------ traffic

    def predict(self, model: str, instances: Iterable[Any], *, batch_size: int = MAX_INSTANCES_PER_CALL,
                timeout: float | None = None) -> list[serving_pb2.Prediction]:
        """Classify instances with a served model: one Prediction per instance, in order.

        An instance is a pair (values, groups) — the input flattened in C order and its group
        attribute values, e.g. ([0.0, 0.5, …], {"cohort": "minority"}) — a mapping with the
        keys `values` and `groups`, or a serving_pb2.Instance. More than `batch_size` (at most
        1024) instances are sent in several calls; a failure part-way raises, and the
        predictions of the calls before it stay recorded on the server.
        """
        _require(model, "model")
        _check_batch_size(batch_size, MAX_INSTANCES_PER_CALL)
        predictions: list[serving_pb2.Prediction] = []
        for batch in batches((to_instance(item, f"instances[{i}].") for i, item in enumerate(instances)),
                              batch_size):
            request = serving_pb2.PredictRequest(model=model, instances=batch)
            reply = self._unary(self._serving.Predict, request, timeout=timeout)
            if len(reply.predictions) != len(batch):
                raise EquipruneError(grpc.StatusCode.INTERNAL, f"Predict answered {len(reply.predictions)} "
                                                               f"predictions for {len(batch)} instances")
            predictions.extend(reply.predictions)
        return predictions

    def report_outcomes(self, outcomes: Iterable[Any], batch_size: int = DEFAULT_ITEMS_PER_CALL, *,
                        timeout: float | None = None) -> dict[str, int]:
        """Report true labels of earlier predictions: pairs (prediction_id, label), mappings
        with those keys, or serving_pb2.Outcome messages, read lazily and sent `batch_size` at
        a time. Returns the server's counts summed over the batches: joined, unknown,
        duplicate, late, invalid. Sending an outcome again is safe (it counts as duplicate)."""
        _check_batch_size(batch_size, MAX_ITEMS_PER_CALL)
        counts = dict.fromkeys(OUTCOME_COUNTS, 0)
        for batch in batches((to_outcome(item, f"outcomes[{i}].") for i, item in enumerate(outcomes)), batch_size):
            reply = self._unary(self._serving.ReportOutcomes, serving_pb2.ReportOutcomesRequest(outcomes=batch),
                                timeout=timeout)
            _add(counts, reply)
        return counts

    def record_evaluations(self, model: str, records: Iterable[Any], batch_size: int = DEFAULT_ITEMS_PER_CALL, *,
                           timeout: float | None = None) -> dict[str, int]:
        """Add labelled records (no Predict before them) to a served model's monitor: mappings
        with `label`, `predicted_class`, `groups`, optional `confidence` and `time` (a datetime,
        unix seconds or an ISO 8601 string; naive means UTC), or serving_pb2.EvaluationRecord
        messages. Returns the counts summed over the batches: recorded, late."""
        _require(model, "model")
        _check_batch_size(batch_size, MAX_ITEMS_PER_CALL)
        counts = dict.fromkeys(EVALUATION_COUNTS, 0)
        for batch in batches((to_evaluation_record(item, f"records[{i}].") for i, item in enumerate(records)),
                              batch_size):
            request = serving_pb2.RecordEvaluationsRequest(model=model, records=batch)
            _add(counts, self._unary(self._serving.RecordEvaluations, request, timeout=timeout))
        return counts

    # ------------------------------------------------------------ monitor

    def get_model_metrics(self, model: str, *, timeout: float | None = None) -> serving_pb2.GetModelMetricsResponse:
        """A served model's per-group metrics over every window, and its lifetime totals
        (also for a model no longer deployed)."""
        _require(model, "model")
        return self._unary(self._serving.GetModelMetrics, serving_pb2.GetModelMetricsRequest(model=model),
                           timeout=timeout, read=True)


# ---------------------------------------------------------------- requests

def deploy_request(name: str, artifact_id: str, group_by: Sequence[str], *, shadow_artifact_id: str = "",
                   reference_job_id: str = "", reference_accuracy: Mapping[str, float] | None = None,
                   reference_overall_accuracy: float | None = None, tolerance: float | None = None,
                   input_shape: Sequence[int] | None = None) -> serving_pb2.DeployModelRequest:
    """The DeployModelRequest, refused here (SpecError) when the server surely would refuse it."""
    if not SERVED_NAME.match(name or ""):
        raise SpecError("name", f"1-63 characters of a-z, 0-9 and -, starting with a letter; got {name!r}")
    _require(artifact_id, "artifact_id")
    if isinstance(group_by, str):
        group_by = [group_by]
    if not group_by or not all(isinstance(g, str) and g for g in group_by):
        raise SpecError("group_by", "name at least one group attribute")
    if reference_job_id and reference_accuracy:
        raise SpecError("reference_accuracy", "give reference_job_id or reference_accuracy, not both")
    if reference_job_id and reference_overall_accuracy is not None:
        raise SpecError("reference_overall_accuracy", "goes with reference_accuracy, not reference_job_id")
    request = serving_pb2.DeployModelRequest(name=name, artifact_id=artifact_id, shadow_artifact_id=shadow_artifact_id,
                                             group_by=list(group_by), reference_job_id=reference_job_id)
    for group, accuracy in (reference_accuracy or {}).items():
        request.reference_accuracy[group] = _fraction(accuracy, f"reference_accuracy[{group}]")
    if reference_overall_accuracy is not None:
        request.reference_overall_accuracy = _fraction(reference_overall_accuracy, "reference_overall_accuracy")
    if tolerance is not None:
        if not (isinstance(tolerance, (int, float)) and 0 <= tolerance < 1):
            raise SpecError("tolerance", f"must be in [0, 1), got {tolerance!r}")
        request.tolerance = tolerance
    if input_shape:
        if not all(isinstance(d, int) and not isinstance(d, bool) and d >= 1 for d in input_shape):
            raise SpecError("input_shape", f"every dimension must be an integer ≥ 1, got {list(input_shape)}")
        request.input_shape.extend(input_shape)
    return request


def to_instance(item: Any, where: str = "") -> serving_pb2.Instance:
    """An Instance from (values, groups), {"values": …, "groups": …} or an Instance. `where`
    prefixes the field names of errors (e.g. `instances[3].`)."""
    if isinstance(item, serving_pb2.Instance):
        return item
    if isinstance(item, Mapping):
        if "values" not in item:
            raise SpecError(f"{where}values", "required")
        values, groups = item["values"], item.get("groups") or {}
    elif isinstance(item, (tuple, list)) and len(item) == 2:
        values, groups = item[0], item[1] or {}
    else:
        raise SpecError(where.rstrip(". :") or "instance",
                        "must be a pair (values, groups), a mapping with values and groups, or an Instance")
    return serving_pb2.Instance(values=finite_numbers(values, f"{where}values"),
                                groups=string_map(groups, f"{where}groups"))


def to_outcome(item: Any, where: str = "") -> serving_pb2.Outcome:
    """An Outcome from (prediction_id, label), {"prediction_id": …, "label": …} or an Outcome."""
    if isinstance(item, serving_pb2.Outcome):
        return item
    if isinstance(item, Mapping):
        prediction_id, label = item.get("prediction_id"), item.get("label")
    elif isinstance(item, (tuple, list)) and len(item) == 2:
        prediction_id, label = item
    else:
        raise SpecError(where.rstrip(". :") or "outcome",
                        "must be a pair (prediction_id, label), a mapping with those keys, or an Outcome")
    if not isinstance(prediction_id, str) or not prediction_id:
        raise SpecError(f"{where}prediction_id", "required: the id Predict returned")
    return serving_pb2.Outcome(prediction_id=prediction_id, label=class_index(label, f"{where}label"))


def to_evaluation_record(item: Any, where: str = "") -> serving_pb2.EvaluationRecord:
    """An EvaluationRecord from a mapping (label, predicted_class, groups, confidence?, time?)."""
    if isinstance(item, serving_pb2.EvaluationRecord):
        return item
    if not isinstance(item, Mapping):
        raise SpecError(where.rstrip(". :") or "record",
                        "must be a mapping with label, predicted_class and groups, or an EvaluationRecord")
    record = serving_pb2.EvaluationRecord(label=class_index(item.get("label"), f"{where}label"),
                                          predicted_class=class_index(item.get("predicted_class"),
                                                                      f"{where}predicted_class"),
                                          groups=string_map(item.get("groups") or {}, f"{where}groups"))
    if item.get("confidence") is not None:
        record.confidence = _fraction(item["confidence"], f"{where}confidence")
    if item.get("time") is not None:
        record.time.FromDatetime(to_datetime(item["time"], f"{where}time"))
    return record


# ---------------------------------------------------------------- value checks

def finite_numbers(values: Any, field: str) -> list[float]:
    """`values` as a list of finite floats (numbers only: no strings, no booleans)."""
    if isinstance(values, (str, bytes, Mapping)) or not isinstance(values, Iterable):
        raise SpecError(field, "must be a list of numbers")
    numbers = []
    for i, value in enumerate(values):
        if isinstance(value, (str, bytes, bool)) or value is None:
            raise SpecError(field, f"item {i} is {value!r}, not a number")
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise SpecError(field, f"item {i} is {value!r}, not a number") from None
        if not math.isfinite(number):
            raise SpecError(field, f"item {i} is {number}; values must be finite")
        numbers.append(number)
    if not numbers:
        raise SpecError(field, "must not be empty")
    return numbers


def string_map(groups: Any, field: str) -> dict[str, str]:
    """Group attribute values as strings (integers are written out: {"age_band": 3} → "3")."""
    if not isinstance(groups, Mapping):
        raise SpecError(field, "must map attribute names to values, e.g. {\"cohort\": \"minority\"}")
    out = {}
    for key, value in groups.items():
        if not isinstance(key, str) or not key:
            raise SpecError(field, f"attribute names must be non-empty strings, got {key!r}")
        if isinstance(value, int) and not isinstance(value, bool):
            value = str(value)
        if not isinstance(value, str) or not value:
            raise SpecError(f"{field}.{key}", f"must be a non-empty string, got {value!r}")
        out[key] = value
    return out


def class_index(value: Any, field: str) -> int:
    """A class index: an integer ≥ 0 (3.0 from JSON counts as 3)."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if value is None:
        raise SpecError(field, "required")
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise SpecError(field, f"must be a class index (an integer ≥ 0), got {value!r}")
    return value


def to_datetime(value: Any, field: str) -> datetime:
    """A timezone-aware datetime from a datetime (naive: UTC), unix seconds or ISO 8601 text."""
    if isinstance(value, datetime):
        moment = value
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        try:
            moment = datetime.fromtimestamp(value, tz=timezone.utc)
        except (OverflowError, OSError, ValueError):
            raise SpecError(field, f"{value!r} is not a time in unix seconds") from None
    elif isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value)
        except ValueError:
            raise SpecError(field, f"{value!r} is not an ISO 8601 time (e.g. 2026-03-01T12:00:00Z)") from None
    else:
        raise SpecError(field, f"must be a time (ISO 8601 text or unix seconds), got {value!r}")
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=timezone.utc)


def _fraction(value: Any, field: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        raise SpecError(field, f"must be a fraction in [0, 1], got {value!r}")
    return float(value)


def _require(value: str, field: str) -> None:
    if not isinstance(value, str) or not value:
        raise SpecError(field, "required")


def _check_batch_size(size: int, most: int) -> None:
    if isinstance(size, bool) or not isinstance(size, int) or not 1 <= size <= most:
        raise SpecError("batch_size", f"must be in [1, {most}], got {size!r}")


def batches(items: Iterable[T], size: int) -> Iterator[list[T]]:
    """Lists of up to `size` items, read lazily (a generator of millions never sits in memory)."""
    iterator = iter(items)
    while batch := list(islice(iterator, size)):
        yield batch


def _add(counts: dict[str, int], reply) -> None:
    for name in counts:
        counts[name] += getattr(reply, name)
