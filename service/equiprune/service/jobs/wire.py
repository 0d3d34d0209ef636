"""The job spec on the wire: one generic conversion between the proto `JobSpec` (the wire
form) and the engine's `JobSpec` (the typed form, which owns every default and range).

The rule, applied field by field through the descriptors: a proto field and the engine
field of the same name carry the same value. Left unset — a proto3 zero, UNSPECIFIED, or an
`optional` field not present — means the engine's default. Enum values travel as their
short lower-case names (`PRUNING_KIND_N_M` ↔ "n_m"). tests/service/test_job_wire.py checks
that every proto field has its engine field and that both directions are inverse.
"""

from __future__ import annotations

import dataclasses
import json
import typing
from collections.abc import Callable

from google.protobuf.descriptor import FieldDescriptor

from equiprune.engine.errors import EngineError, InvalidConfigError
from equiprune.engine.jobs import JobSpec
from equiprune.engine.jobs.spec import json_object
from equiprune.v1 import artifacts_pb2, jobs_pb2, reports_pb2

from equiprune.service.errors import InvalidArgument

# Engine config types of each proto section, found by the engine JobSpec's field types.
_SECTIONS = ("data", "pruning", "finetune", "diagnostics", "budget", "train", "resources")
# Fields whose wire form is text: JSON objects, so no client library can drop them silently.
_JSON_FIELDS = {("equiprune.v1.TrainOptions", "architecture_kwargs")}


@dataclasses.dataclass(frozen=True)
class ArtifactSource:
    """An artifact reference as a request gave it: a stored id, or a URI with its sha256."""

    artifact_id: str = ""
    uri: str = ""
    sha256: str = ""


Resolve = Callable[[ArtifactSource, str], "str | None"]  # None: an empty reference


def enum_names(enum_descriptor) -> dict[int, str]:
    """{number: short name} without UNSPECIFIED: JobKind → {1: "train", …}."""
    prefix = enum_descriptor.values_by_number[0].name[: -len("UNSPECIFIED")]
    return {v.number: v.name[len(prefix):].lower() for v in enum_descriptor.values if v.number != 0}


def enum_number(enum_descriptor, name: str) -> int:
    return next(number for number, short in enum_names(enum_descriptor).items() if short == name)


def spec_from_proto(pb: jobs_pb2.JobSpec, resolve: Resolve) -> JobSpec:
    """The engine JobSpec a request describes; `resolve(source, field)` gives an artifact id
    (importing a URI). Every refusal names the request's field (`spec.pruning.sparsity`)."""
    if pb.kind == 0:
        raise InvalidArgument("required; it was left unspecified", field="spec.kind")
    values: dict = {}
    for name in ("model", "dataset"):
        if pb.HasField(name):
            artifact_id = resolve(_source(getattr(pb, name)), f"spec.{name}")
            if artifact_id is not None:
                values[name] = artifact_id
    if "dataset" not in values:
        raise InvalidArgument("required: an artifact id or a URI", field="spec.dataset")
    try:
        values["kind"] = _enum(pb.DESCRIPTOR.fields_by_name["kind"], pb.kind, "kind")
        for name in _SECTIONS:
            if pb.HasField(name) or name in ("data", "resources"):
                values[name] = message_to_config(getattr(pb, name), _section_type(name), name)
        return JobSpec(**values)
    except EngineError as err:
        raise InvalidArgument(err.problem, field=f"spec.{err.field}") from None


def spec_to_proto(spec: JobSpec | dict) -> jobs_pb2.JobSpec:
    """The proto of an engine JobSpec, or of a stored one (`JobSpec.to_dict()`), read as it was
    stored: a job already accepted is shown even if a later version would refuse its spec."""
    stored = spec if isinstance(spec, dict) else spec.to_dict()
    pb = jobs_pb2.JobSpec(kind=enum_number(jobs_pb2.JobKind.DESCRIPTOR, stored["kind"]))
    pb.dataset.artifact_id = stored["dataset"]
    if stored.get("model"):
        pb.model.artifact_id = stored["model"]
    for name in _SECTIONS:
        if stored.get(name) is not None:
            getattr(pb, name).CopyFrom(config_to_message(stored[name], getattr(pb, name).__class__))
    return pb


def message_to_config(message, config_type, path: str):
    """A proto options message as the engine config of the same field names; unset fields keep
    the config's defaults, and the config validates the result. Refusals (engine errors) name
    `path.field`."""
    kwargs = {}
    for fd in message.DESCRIPTOR.fields:
        value = getattr(message, fd.name)
        field = f"{path}.{fd.name}"
        if fd.is_repeated:
            if len(value):
                kwargs[fd.name] = tuple(value)
        elif fd.enum_type is not None:
            if value != 0:
                kwargs[fd.name] = _enum(fd, value, field)
        elif fd.has_presence:
            if message.HasField(fd.name):
                kwargs[fd.name] = value
        elif value:  # a proto3 zero is "not given"
            kwargs[fd.name] = json_object(value, field) if _is_json(fd) else value
    return config_type(**kwargs)


def config_to_message(config: dict, message_type):
    """The inverse, from a config's `to_dict` form: every proto field from the field of the same
    name (fields only the engine has, such as `distill_temperature`, stay in the stored spec)."""
    message = message_type()
    for fd in message.DESCRIPTOR.fields:
        value = config.get(fd.name)
        if value is None:
            continue
        if fd.is_repeated:
            getattr(message, fd.name).extend(value)
        elif fd.enum_type is not None:
            setattr(message, fd.name, enum_number(fd.enum_type, value))
        elif _is_json(fd):
            if value:
                setattr(message, fd.name, json.dumps(value, sort_keys=True))
        else:
            setattr(message, fd.name, value)
    return message


def _section_type(name: str):
    """The engine config class of JobSpec's section `name` (`pruning` → PruningConfig)."""
    hint = typing.get_type_hints(JobSpec)[name]
    return next(a for a in typing.get_args(hint) or (hint,) if a is not type(None))


def _is_json(fd: FieldDescriptor) -> bool:
    return (fd.containing_type.full_name, fd.name) in _JSON_FIELDS


def _enum(fd: FieldDescriptor, value: int, field: str) -> str:
    name = enum_names(fd.enum_type).get(value)
    if name is None:
        raise InvalidConfigError(field, f"unknown value {value}")
    return name


def _source(ref: artifacts_pb2.ArtifactRef) -> ArtifactSource:
    which = ref.WhichOneof("source")
    if which == "artifact_id":
        return ArtifactSource(artifact_id=ref.artifact_id)
    if which == "uri":
        return ArtifactSource(uri=ref.uri.uri, sha256=ref.uri.sha256)
    return ArtifactSource()


# ----------------------------------------------------------------------------- records → proto
# Results and progress are stored as the engine wrote them (`JobOutcome.to_dict()`,
# `JobEvent.to_dict()`), already in the proto's field names: parsed, not re-keyed.

JOB_KINDS = enum_names(jobs_pb2.JobKind.DESCRIPTOR)
JOB_STATES = enum_names(jobs_pb2.JobState.DESCRIPTOR)


def without_none(value):
    """Drop None entries recursively: proto3 has no null for scalars (unset means unknown)."""
    if isinstance(value, dict):
        return {k: without_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, (list, tuple)):
        return [without_none(v) for v in value]
    return value


def _parse(message_type, payload: dict):
    from google.protobuf import json_format

    return json_format.ParseDict(without_none(payload), message_type(), ignore_unknown_fields=True)


def _stage_report(entry: dict) -> reports_pb2.StageReport:
    return reports_pb2.StageReport(stage=enum_number(reports_pb2.ReportStage.DESCRIPTOR, entry["stage"]),
                                   split=entry["split"], report=_parse(reports_pb2.GroupReport, entry["report"]))


def progress_to_proto(progress: dict | None) -> jobs_pb2.Progress:
    if not progress:
        return jobs_pb2.Progress()
    payload = dict(progress)
    report = payload.pop("report", None)
    pb = _parse(jobs_pb2.Progress, payload)
    if report is not None:
        pb.report.CopyFrom(_stage_report(report))
    return pb


def result_to_proto(result: dict, artifact: Callable[[str], artifacts_pb2.Artifact]) -> jobs_pb2.JobResult:
    """A stored result; `artifact(id)` gives each output's Artifact message."""
    payload = dict(result)
    outputs, reports = payload.pop("outputs", []), payload.pop("reports", [])
    diagnostics, sweep = payload.pop("diagnostics", None), payload.pop("sweep", [])
    pb = _parse(jobs_pb2.JobResult, payload)
    for out in outputs:
        pb.outputs.add(role=out["role"], artifact=artifact(out["artifact_id"]))
    pb.reports.extend(_stage_report(r) for r in reports)
    if diagnostics is not None:
        pb.diagnostics.CopyFrom(_parse(reports_pb2.DiagnosticsSummary, diagnostics))
    for point in sweep:
        pb.sweep.add(sparsity=point["sparsity"], tolerance_met=point["tolerance_met"],
                     report=_parse(reports_pb2.GroupReport, point["report"]))
    return pb


def job_to_proto(record, artifact: Callable[[str], artifacts_pb2.Artifact], *, with_result: bool = True) -> jobs_pb2.Job:
    pb = jobs_pb2.Job(
        job_id=record.job_id, spec=spec_to_proto(record.spec),
        state=enum_number(jobs_pb2.JobState.DESCRIPTOR, record.state), done=record.done,
        request_id=record.request_id or "", create_time=timestamp(record.create_time),
        start_time=timestamp(record.start_time), end_time=timestamp(record.end_time),
        progress=progress_to_proto(record.progress), attempt=record.attempt)
    if record.error:
        pb.error.CopyFrom(jobs_pb2.JobError(**record.error))
    if record.result and with_result:
        pb.result.CopyFrom(result_to_proto(record.result, artifact))
    return pb


def event_to_proto(event) -> jobs_pb2.JobEvent:
    return jobs_pb2.JobEvent(sequence=event.sequence, time=timestamp(event.time),
                             state=enum_number(jobs_pb2.JobState.DESCRIPTOR, event.state),
                             progress=progress_to_proto(event.progress))


def timestamp(seconds: float | None):
    from google.protobuf.timestamp_pb2 import Timestamp

    if seconds is None:
        return None
    ts = Timestamp()
    ts.FromNanoseconds(int(seconds * 1e9))
    return ts


def enum_value(enum_descriptor, number: int, field: str) -> str:
    """A request's enum value as its short name; UNSPECIFIED or an unknown number is refused."""
    name = enum_names(enum_descriptor).get(number)
    if name is None:
        raise InvalidArgument("required; it was left unspecified" if number == 0 else f"unknown value {number}",
                              field=field)
    return name
