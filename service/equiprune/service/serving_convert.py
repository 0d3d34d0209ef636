"""ServingService requests ↔ plain dictionaries the model server and the monitor use.

Validation of every serving request lives here (the ingress stays a list of calls), with
errors naming the request's field. A served model is a JSON-able dict so the monitor can
persist its registry as it is.
"""

from __future__ import annotations

import math
import re
import time

from equiprune.v1 import serving_pb2

from .convert import parse, timestamp
from .errors import FailedPrecondition, InvalidArgument
from .monitor.state import make_prediction_id
from .store.artifacts import ArtifactStore
from .validation import artifact_of_kind

NAME = re.compile(r"^[a-z][a-z0-9-]{0,62}$")
MAX_INSTANCES = 1024
MAX_OUTCOMES = 100_000
MAX_PREDICTION_ID = 128  # ids are "<model ≤ 63>.<24 hex>"
MAX_INPUT_DIMS = 8
MAX_INSTANCE_VALUES = 2**22  # 16 MiB of float32 per instance; a Predict message is at most 32 MiB
FLOAT32_MAX = 3.4028234663852886e38
MAX_SERVED_CLASSES = 10_000  # a reply is rows × classes float32s: bounded per frame (serving.py)
DEFAULT_TOLERANCE = 0.01


# ----------------------------------------------------------------------------- deploy


def check_deploy_request(request: serving_pb2.DeployModelRequest, artifacts: ArtifactStore) -> dict:
    if not NAME.match(request.name):
        raise InvalidArgument("1-63 characters of a-z, 0-9 and -, starting with a letter", field="name")
    artifact_of_kind(artifacts, request.artifact_id, "model", "artifact_id")
    if request.shadow_artifact_id:
        artifact_of_kind(artifacts, request.shadow_artifact_id, "model", "shadow_artifact_id")
    if not request.group_by:
        raise InvalidArgument("name at least one group attribute", field="group_by")
    tolerance = request.tolerance if request.HasField("tolerance") else DEFAULT_TOLERANCE
    if not 0 <= tolerance < 1:
        raise InvalidArgument(f"must be in [0, 1), got {tolerance}", field="tolerance")
    if request.reference_job_id and request.reference_accuracy:
        raise InvalidArgument("give reference_job_id or reference_accuracy, not both", field="reference_accuracy")
    for group, accuracy in request.reference_accuracy.items():
        _check_fraction(accuracy, f"reference_accuracy[{group}]")
    if request.HasField("reference_overall_accuracy"):
        _check_fraction(request.reference_overall_accuracy, "reference_overall_accuracy")
    if any(d < 1 for d in request.input_shape):
        raise InvalidArgument("every dimension must be at least 1", field="input_shape")
    if len(request.input_shape) > MAX_INPUT_DIMS or math.prod(request.input_shape) > MAX_INSTANCE_VALUES:
        raise InvalidArgument(f"at most {MAX_INPUT_DIMS} dimensions and {MAX_INSTANCE_VALUES} values per instance",
                              field="input_shape")
    return {
        "name": request.name, "artifact_id": request.artifact_id, "shadow_artifact_id": request.shadow_artifact_id,
        "group_by": list(request.group_by), "reference_accuracy": dict(request.reference_accuracy),
        "reference_overall_accuracy": (request.reference_overall_accuracy
                                       if request.HasField("reference_overall_accuracy") else None),
        "tolerance": tolerance, "input_shape": list(request.input_shape), "num_classes": None,
        "create_time": time.time(),
    }


def with_job_reference(served: dict, job, artifacts: ArtifactStore) -> dict:
    """The reference from a finished job's dense report (evaluation split, else training)."""
    if job.state != "succeeded" or not job.result:
        raise FailedPrecondition(f"job {job.job_id} is {job.state}; a reference needs a succeeded job",
                                 field="reference_job_id")
    job_groups = list(job.spec["data"]["group_by"])
    if job_groups != served["group_by"]:
        raise FailedPrecondition(f"the reference job grouped by {job_groups}, not {served['group_by']}",
                                 field="group_by")
    dense = [r for r in job.result.get("reports", []) if r["stage"] == "dense"]
    if not dense:
        raise FailedPrecondition(f"job {job.job_id} has no dense report", field="reference_job_id")
    chosen = next((r for r in dense if r["split"] not in ("", "train")), dense[0])["report"]
    dataset = artifacts.get(job.spec["dataset"]).description
    return {
        **served,
        "reference_accuracy": {g["group"]: g["accuracy"] for g in chosen["groups"] if g.get("accuracy") is not None},
        "reference_overall_accuracy": chosen["overall"]["accuracy"],
        "reference_job_id": job.job_id,
        "input_shape": served["input_shape"] or [int(d) for d in dataset.get("sample_shape", "").split("x") if d],
        "num_classes": int(dataset["classes"]) if dataset.get("classes") else None,
    }


def complete(served: dict) -> dict:
    if not served["reference_accuracy"]:
        raise InvalidArgument("give reference_job_id (a job with a dense report) or reference_accuracy",
                              field="reference_job_id")
    if not served["input_shape"]:
        raise InvalidArgument("required without a reference job: the shape of one instance", field="input_shape")
    return served


def with_output_width(served: dict, widths: dict[str, int]) -> dict:
    """The served model with its output width (its classes) as measured in the sandbox; a
    shadow must have as many, and the reference dataset's classes must fit."""
    for key, value in widths.items():
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_SERVED_CLASSES:
            raise FailedPrecondition(f"the model has {value} outputs; a served model may have 1 to "
                                     f"{MAX_SERVED_CLASSES}", field=key)
    width = widths["artifact_id"]
    if "shadow_artifact_id" in widths and widths["shadow_artifact_id"] != width:
        raise FailedPrecondition(f"the shadow model has {widths['shadow_artifact_id']} outputs, the model {width}",
                                 field="shadow_artifact_id")
    if served.get("num_classes") is not None and served["num_classes"] > width:
        raise FailedPrecondition(f"the model has {width} outputs but its reference data has {served['num_classes']} "
                                 "classes", field="artifact_id")
    return {**served, "num_classes": served.get("num_classes") or width}


def served_to_proto(served: dict) -> serving_pb2.ServedModel:
    pb = serving_pb2.ServedModel(
        name=served["name"], artifact_id=served["artifact_id"], shadow_artifact_id=served.get("shadow_artifact_id", ""),
        group_by=served["group_by"], reference_accuracy=served["reference_accuracy"], tolerance=served["tolerance"],
        create_time=timestamp(served["create_time"]), input_shape=served["input_shape"])
    if served.get("reference_overall_accuracy") is not None:
        pb.reference_overall_accuracy = served["reference_overall_accuracy"]
    return pb


def _check_fraction(value: float, field: str) -> None:
    if not (math.isfinite(value) and 0 <= value <= 1):
        raise InvalidArgument(f"must be a fraction in [0, 1], got {value}", field=field)


# ----------------------------------------------------------------------------- traffic


def check_instances(request: serving_pb2.PredictRequest, served: dict) -> tuple[list[list[float]], list[dict]]:
    if not 1 <= len(request.instances) <= MAX_INSTANCES:
        raise InvalidArgument(f"send 1 to {MAX_INSTANCES} instances, got {len(request.instances)}", field="instances")
    size = math.prod(served["input_shape"])
    inputs, groups = [], []
    for i, instance in enumerate(request.instances):
        if len(instance.values) != size:
            raise InvalidArgument(f"expected {size} values (shape {served['input_shape']}), got {len(instance.values)}",
                                  field=f"instances[{i}].values")
        if not all(math.isfinite(v) and -FLOAT32_MAX <= v <= FLOAT32_MAX for v in instance.values):
            raise InvalidArgument("values must be finite float32 numbers (|v| ≤ 3.4e38)", field=f"instances[{i}].values")
        for attribute in served["group_by"]:
            if not instance.groups.get(attribute):
                raise InvalidArgument(f"the model is monitored by {attribute!r}; give its value",
                                      field=f"instances[{i}].groups.{attribute}")
        inputs.append(list(instance.values))
        groups.append(dict(instance.groups))
    return inputs, groups


def predictions(model: str, probabilities: list[list[float]],
                shadow: list[list[float]] | None) -> list[serving_pb2.Prediction]:
    out = []
    for i, probs in enumerate(probabilities):
        p = serving_pb2.Prediction(prediction_id=make_prediction_id(model), predicted_class=_argmax(probs),
                                   probabilities=probs)
        if shadow is not None:
            p.shadow_class = _argmax(shadow[i])
        out.append(p)
    return out


def prediction_items(predicted: list[serving_pb2.Prediction], groups: list[dict], probabilities) -> list[tuple]:
    now = time.time()
    return [(p.prediction_id, now, g, p.predicted_class, probs, p.shadow_class if p.HasField("shadow_class") else None)
            for p, g, probs in zip(predicted, groups, probabilities)]


def check_outcomes(request: serving_pb2.ReportOutcomesRequest) -> list[tuple[str, int]]:
    if not 1 <= len(request.outcomes) <= MAX_OUTCOMES:
        raise InvalidArgument(f"send 1 to {MAX_OUTCOMES} outcomes, got {len(request.outcomes)}", field="outcomes")
    items = []
    for i, outcome in enumerate(request.outcomes):
        if not outcome.prediction_id or len(outcome.prediction_id) > MAX_PREDICTION_ID:
            raise InvalidArgument(f"required, at most {MAX_PREDICTION_ID} characters",
                                  field=f"outcomes[{i}].prediction_id")
        items.append((outcome.prediction_id, outcome.label))
    return items


def check_evaluations(request: serving_pb2.RecordEvaluationsRequest) -> list[tuple]:
    if not request.model:
        raise InvalidArgument("required", field="model")
    if not 1 <= len(request.records) <= MAX_OUTCOMES:
        raise InvalidArgument(f"send 1 to {MAX_OUTCOMES} records, got {len(request.records)}", field="records")
    now = time.time()
    records = []
    for i, r in enumerate(request.records):
        if r.HasField("confidence") and not 0 <= r.confidence <= 1:
            raise InvalidArgument(f"must be in [0, 1], got {r.confidence}", field=f"records[{i}].confidence")
        when = r.time.seconds + r.time.nanos / 1e9 if r.HasField("time") else now
        records.append((when, dict(r.groups), r.label, r.predicted_class,
                        r.confidence if r.HasField("confidence") else None))
    return records


def _argmax(values: list[float]) -> int:
    return max(range(len(values)), key=values.__getitem__)


# ----------------------------------------------------------------------------- metrics


def metrics_to_proto(answer: dict) -> serving_pb2.GetModelMetricsResponse:
    metrics = answer["metrics"]
    pb = serving_pb2.GetModelMetricsResponse(min_count=answer["min_count"])
    if answer["served"] is not None:
        pb.model.CopyFrom(served_to_proto(answer["served"]))
    for window in metrics["windows"]:
        pb.windows.append(parse(serving_pb2.WindowMetrics, window))
    pb.totals.CopyFrom(parse(serving_pb2.MonitorTotals, metrics["totals"]))
    return pb
