"""ServingService messages ↔ the serving plane's types."""

from __future__ import annotations

from google.protobuf import json_format

from equiprune.v1 import serving_pb2

from equiprune.service.jobs.wire import timestamp, without_none
from equiprune.service.errors import InvalidArgument
from equiprune.service.serving.plane import (MAX_INSTANCES, MAX_OUTCOMES, DeployRequest, EvaluationRecord, Instance,
                                             Prediction, check_count)


def deploy_request(r: serving_pb2.DeployModelRequest) -> DeployRequest:
    return DeployRequest(
        name=r.name, artifact_id=r.artifact_id, group_by=tuple(r.group_by), shadow_artifact_id=r.shadow_artifact_id,
        tolerance=r.tolerance if r.HasField("tolerance") else None, reference_job_id=r.reference_job_id,
        reference_accuracy=dict(r.reference_accuracy),
        reference_overall_accuracy=r.reference_overall_accuracy if r.HasField("reference_overall_accuracy") else None,
        input_shape=tuple(r.input_shape))


# Each list's size is checked before anything is built from it.


def instances(r: serving_pb2.PredictRequest) -> list[Instance]:
    check_count(len(r.instances), MAX_INSTANCES, "instances")
    return [Instance(i.values, dict(i.groups)) for i in r.instances]


def outcomes(r: serving_pb2.ReportOutcomesRequest) -> list[tuple[str, int]]:
    check_count(len(r.outcomes), MAX_OUTCOMES, "outcomes")
    return [(o.prediction_id, o.label) for o in r.outcomes]


def evaluation_records(r: serving_pb2.RecordEvaluationsRequest) -> list[EvaluationRecord]:
    if not r.model:  # the plane checks it too; first here, as before any record is built
        raise InvalidArgument("required", field="model")
    check_count(len(r.records), MAX_OUTCOMES, "records")
    return [EvaluationRecord(time=e.time.seconds + e.time.nanos / 1e9 if e.HasField("time") else None,
                             groups=dict(e.groups), label=e.label, predicted_class=e.predicted_class,
                             confidence=e.confidence if e.HasField("confidence") else None) for e in r.records]


def prediction_to_proto(p: Prediction) -> serving_pb2.Prediction:
    pb = serving_pb2.Prediction(prediction_id=p.prediction_id, predicted_class=p.predicted_class,
                                probabilities=p.probabilities)
    if p.shadow_class is not None:
        pb.shadow_class = p.shadow_class
    return pb


def served_to_proto(served: dict) -> serving_pb2.ServedModel:
    pb = serving_pb2.ServedModel(
        name=served["name"], artifact_id=served["artifact_id"], shadow_artifact_id=served.get("shadow_artifact_id", ""),
        group_by=served["group_by"], reference_accuracy=served["reference_accuracy"], tolerance=served["tolerance"],
        create_time=timestamp(served["create_time"]), input_shape=served["input_shape"])
    if served.get("reference_overall_accuracy") is not None:
        pb.reference_overall_accuracy = served["reference_overall_accuracy"]
    return pb


def metrics_to_proto(answer: dict) -> serving_pb2.GetModelMetricsResponse:
    metrics = answer["metrics"]
    pb = serving_pb2.GetModelMetricsResponse(min_count=answer["min_count"])
    if answer["served"] is not None:
        pb.model.CopyFrom(served_to_proto(answer["served"]))
    for window in metrics["windows"]:
        pb.windows.append(_parse(serving_pb2.WindowMetrics, window))
    pb.totals.CopyFrom(_parse(serving_pb2.MonitorTotals, metrics["totals"]))
    return pb


def _parse(message_type, payload: dict):
    return json_format.ParseDict(without_none(payload), message_type(), ignore_unknown_fields=True)
