"""Proto ↔ service types. The only module (with the ingress) that knows the wire format.

Requests become `JobSpecModel`s (zero / unset proto fields take the documented defaults);
stored records and engine report dictionaries become proto messages. Report dictionaries
already use the proto's field names (docs/metrics.md is the schema of both), so they are
parsed with `json_format` after dropping the None values proto3 cannot carry.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from google.protobuf import json_format
from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp
from pydantic import ValidationError

from equiprune.v1 import artifacts_pb2, jobs_pb2, reports_pb2

from .errors import InvalidArgument, client_status
from .specs import (BudgetSpec, DataSpec, DiagnosticsSpec, FinetuneSpec, JobSpecModel, PruningSpec,
                    ResourcesSpec, TrainSpec)
from .store.artifacts import ArtifactRecord
from .store.jobs import JobEventRecord, JobRecord

# ----------------------------------------------------------------------------- enums


def _enum_names(enum, prefix: str) -> dict[int, str]:
    """{number: lower-case short name}, e.g. PRUNING_KIND_N_M → "n_m"; 0 (UNSPECIFIED) left out."""
    return {v.number: v.name[len(prefix):].lower() for v in enum.DESCRIPTOR.values if v.number != 0}


ARTIFACT_KINDS = _enum_names(artifacts_pb2.ArtifactKind, "ARTIFACT_KIND_")
JOB_KINDS = _enum_names(jobs_pb2.JobKind, "JOB_KIND_")
JOB_STATES = _enum_names(jobs_pb2.JobState, "JOB_STATE_")
PRUNING_KINDS = _enum_names(jobs_pb2.PruningKind, "PRUNING_KIND_")
PRUNING_SCOPES = _enum_names(jobs_pb2.PruningScope, "PRUNING_SCOPE_")
PRUNING_SCHEDULES = _enum_names(jobs_pb2.PruningSchedule, "PRUNING_SCHEDULE_")
FINETUNE_METHODS = _enum_names(jobs_pb2.FinetuneMethod, "FINETUNE_METHOD_")
LR_SCHEDULES = _enum_names(jobs_pb2.LrSchedule, "LR_SCHEDULE_")
REPORT_STAGES = _enum_names(reports_pb2.ReportStage, "REPORT_STAGE_")


def _number(names: dict[int, str], name: str) -> int:
    return next(number for number, n in names.items() if n == name)


def enum_name(names: dict[int, str], value: int, field: str, *, default: str | None = None) -> str:
    """The short name of an enum value; UNSPECIFIED gives `default` or is refused."""
    if value == 0:
        if default is None:
            raise InvalidArgument("required; it was left unspecified", field=field)
        return default
    if value not in names:
        raise InvalidArgument(f"unknown value {value}", field=field)
    return names[value]


def artifact_kind(value: int, field: str = "kind") -> str:
    return enum_name(ARTIFACT_KINDS, value, field)


def job_kind(value: int, field: str = "kind") -> str:
    return enum_name(JOB_KINDS, value, field)


def job_state(value: int, field: str = "states") -> str:
    return enum_name(JOB_STATES, value, field)


# ----------------------------------------------------------------------------- requests → specs


def spec_from_proto(pb: jobs_pb2.JobSpec, resolve: Callable[[artifacts_pb2.ArtifactRef, str], str | None]) -> JobSpecModel:
    """Validate a proto JobSpec into a `JobSpecModel`. `resolve(ref, field)` turns an artifact
    reference into an artifact id (importing URIs), or None when the reference is empty."""
    kind = job_kind(pb.kind, "spec.kind")
    values: dict[str, Any] = {
        "kind": kind,
        "model": resolve(pb.model, "spec.model") if pb.HasField("model") else None,
        "dataset": resolve(pb.dataset, "spec.dataset") if pb.HasField("dataset") else None,
        "data": _data(pb.data),
        "resources": _resources(pb.resources),
    }
    if values["dataset"] is None:
        raise InvalidArgument("required: an artifact id or a URI", field="spec.dataset")
    if pb.HasField("pruning"):
        values["pruning"] = _pruning(pb.pruning)
    if pb.HasField("finetune"):
        values["finetune"] = _finetune(pb.finetune)
    if pb.HasField("diagnostics"):
        values["diagnostics"] = _diagnostics(pb.diagnostics)
    if pb.HasField("budget"):
        values["budget"] = _budget(pb.budget)
    if pb.HasField("train"):
        values["train"] = _train(pb.train)
    try:
        return JobSpecModel.model_validate(values)
    except ValidationError as err:
        status = client_status(err)
        raise InvalidArgument(status.message.split(": ", 1)[-1], field=f"spec.{status.field}") from None


def _or(value, default):
    """A proto3 zero means "not given"."""
    return value if value else default


def _optional(message, name: str, default):
    return getattr(message, name) if message.HasField(name) else default


def _data(pb: jobs_pb2.DataOptions) -> DataSpec:
    d = DataSpec()
    return DataSpec(
        group_by=tuple(pb.group_by),
        train_split=_optional(pb, "train_split", None),
        eval_split=_optional(pb, "eval_split", None),
        constraint_split=_optional(pb, "constraint_split", None),
        constraint_fraction=_or(pb.constraint_fraction, d.constraint_fraction),
        min_group_size=_or(pb.min_group_size, d.min_group_size),
        tolerance=_optional(pb, "tolerance", d.tolerance),
    )


def _pruning(pb: jobs_pb2.PruningOptions) -> PruningSpec:
    d = PruningSpec()
    return PruningSpec(
        kind=enum_name(PRUNING_KINDS, pb.kind, "spec.pruning.kind", default=d.kind),
        sparsity=pb.sparsity,
        scope=enum_name(PRUNING_SCOPES, pb.scope, "spec.pruning.scope", default=d.scope),
        schedule=enum_name(PRUNING_SCHEDULES, pb.schedule, "spec.pruning.schedule", default=d.schedule),
        gradual_steps=_or(pb.gradual_steps, d.gradual_steps),
        exclude_names=tuple(pb.exclude_names),
        exclude_types=tuple(pb.exclude_types),
        keep_first_and_last=_optional(pb, "keep_first_and_last", d.keep_first_and_last),
        n=_or(pb.n, d.n),
        m=_or(pb.m, d.m),
        recalibrate_batchnorm=_optional(pb, "recalibrate_batchnorm", d.recalibrate_batchnorm),
    )


def _finetune(pb: jobs_pb2.FinetuneOptions) -> FinetuneSpec:
    d = FinetuneSpec()
    return FinetuneSpec(
        method=enum_name(FINETUNE_METHODS, pb.method, "spec.finetune.method", default=d.method),
        epochs=_or(pb.epochs, d.epochs),
        batch_size=_or(pb.batch_size, d.batch_size),
        lr=_optional(pb, "lr", d.lr),
        momentum=_optional(pb, "momentum", d.momentum),
        weight_decay=_optional(pb, "weight_decay", d.weight_decay),
        dual_lr=_optional(pb, "dual_lr", d.dual_lr),
        replay_size=_or(pb.replay_size, d.replay_size),
        lr_schedule=enum_name(LR_SCHEDULES, pb.lr_schedule, "spec.finetune.lr_schedule", default=d.lr_schedule),
        augment_hflip=pb.augment_hflip,
        seed=pb.seed,
        checkpoint_every_steps=pb.checkpoint_every_steps,
        calibrate_outputs=_optional(pb, "calibrate_outputs", d.calibrate_outputs),
        max_multiplier=_optional(pb, "max_multiplier", d.max_multiplier),
        distill_alpha=_optional(pb, "distill_alpha", d.distill_alpha),
    )


def _diagnostics(pb: jobs_pb2.DiagnosticsOptions) -> DiagnosticsSpec:
    d = DiagnosticsSpec()
    return DiagnosticsSpec(probes=_or(pb.probes, d.probes), power_iterations=_or(pb.power_iterations, d.power_iterations),
                           samples_per_group=_or(pb.samples_per_group, d.samples_per_group), seed=pb.seed)


def _budget(pb: jobs_pb2.BudgetOptions) -> BudgetSpec:
    d = BudgetSpec()
    return BudgetSpec(low=_optional(pb, "low", d.low), high=_optional(pb, "high", d.high),
                      resolution=_optional(pb, "resolution", d.resolution),
                      max_probes=_or(pb.max_probes, d.max_probes), require_confidence=pb.require_confidence)


def _train(pb: jobs_pb2.TrainOptions) -> TrainSpec:
    if not pb.architecture:
        raise InvalidArgument("required: a registered architecture name", field="spec.train.architecture")
    kwargs = json_format.MessageToDict(pb.architecture_kwargs) if pb.HasField("architecture_kwargs") else {}
    return TrainSpec(architecture=pb.architecture, architecture_kwargs=_integral_floats(kwargs),
                     epochs=_or(pb.epochs, 15), lr=_optional(pb, "lr", 0.05), seed=pb.seed)


def _integral_floats(value):
    """google.protobuf.Struct carries every number as a double; architectures want ints."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {k: _integral_floats(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_integral_floats(v) for v in value]
    return value


def _resources(pb: jobs_pb2.Resources) -> ResourcesSpec:
    for name in ("workers", "cpus_per_worker", "gpus_per_worker"):
        if getattr(pb, name) < 0:
            raise InvalidArgument(f"must not be negative, got {getattr(pb, name)}", field=f"spec.resources.{name}")
    return ResourcesSpec(workers=max(pb.workers, 1), cpus_per_worker=_or(pb.cpus_per_worker, 1),
                         gpus_per_worker=pb.gpus_per_worker)


# ----------------------------------------------------------------------------- specs → proto


def spec_to_proto(spec: JobSpecModel) -> jobs_pb2.JobSpec:
    pb = jobs_pb2.JobSpec(kind=_number(JOB_KINDS, spec.kind))
    if spec.model:
        pb.model.artifact_id = spec.model
    pb.dataset.artifact_id = spec.dataset
    d = spec.data
    pb.data.group_by.extend(d.group_by)
    for name in ("train_split", "eval_split", "constraint_split"):
        if getattr(d, name) is not None:
            setattr(pb.data, name, getattr(d, name))
    pb.data.constraint_fraction, pb.data.min_group_size, pb.data.tolerance = d.constraint_fraction, d.min_group_size, d.tolerance
    if spec.pruning is not None:
        p = spec.pruning
        pb.pruning.CopyFrom(jobs_pb2.PruningOptions(
            kind=_number(PRUNING_KINDS, p.kind), sparsity=p.sparsity, scope=_number(PRUNING_SCOPES, p.scope),
            schedule=_number(PRUNING_SCHEDULES, p.schedule), gradual_steps=p.gradual_steps,
            exclude_names=p.exclude_names, exclude_types=p.exclude_types, keep_first_and_last=p.keep_first_and_last,
            n=p.n, m=p.m, recalibrate_batchnorm=p.recalibrate_batchnorm))
    if spec.finetune is not None:
        f = spec.finetune
        pb.finetune.CopyFrom(jobs_pb2.FinetuneOptions(
            method=_number(FINETUNE_METHODS, f.method), epochs=f.epochs, batch_size=f.batch_size, lr=f.lr,
            momentum=f.momentum, weight_decay=f.weight_decay, dual_lr=f.dual_lr, replay_size=f.replay_size,
            lr_schedule=_number(LR_SCHEDULES, f.lr_schedule), augment_hflip=f.augment_hflip, seed=f.seed,
            checkpoint_every_steps=f.checkpoint_every_steps, calibrate_outputs=f.calibrate_outputs,
            max_multiplier=f.max_multiplier, distill_alpha=f.distill_alpha))
    if spec.diagnostics is not None:
        pb.diagnostics.CopyFrom(jobs_pb2.DiagnosticsOptions(**spec.diagnostics.model_dump()))
    if spec.budget is not None:
        pb.budget.CopyFrom(jobs_pb2.BudgetOptions(**spec.budget.model_dump()))
    if spec.train is not None:
        t = spec.train
        pb.train.CopyFrom(jobs_pb2.TrainOptions(architecture=t.architecture, epochs=t.epochs, lr=t.lr, seed=t.seed))
        if t.architecture_kwargs:
            pb.train.architecture_kwargs.update(t.architecture_kwargs)
    pb.resources.CopyFrom(jobs_pb2.Resources(**spec.resources.model_dump()))
    return pb


# ----------------------------------------------------------------------------- records → proto


def timestamp(seconds: float | None) -> Timestamp | None:
    if seconds is None:
        return None
    ts = Timestamp()
    ts.FromNanoseconds(int(seconds * 1e9))
    return ts


def duration_seconds(pb: Duration) -> float:
    return pb.seconds + pb.nanos / 1e9


def artifact_to_proto(record: ArtifactRecord) -> artifacts_pb2.Artifact:
    return artifacts_pb2.Artifact(
        artifact_id=record.artifact_id, kind=_number(ARTIFACT_KINDS, record.kind), display_name=record.display_name,
        size_bytes=record.size_bytes, sha256=record.sha256, create_time=timestamp(record.create_time),
        source=record.source, description=record.description)


def without_none(value):
    """Drop None entries recursively: proto3 has no null for scalars (unset means unknown)."""
    if isinstance(value, dict):
        return {k: without_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, (list, tuple)):
        return [without_none(v) for v in value]
    return value


def parse(message_type, payload: dict):
    return json_format.ParseDict(without_none(payload), message_type(), ignore_unknown_fields=True)


def stage_report(stage: str, split: str, report: dict) -> reports_pb2.StageReport:
    return reports_pb2.StageReport(stage=_number(REPORT_STAGES, stage), split=split,
                                   report=parse(reports_pb2.GroupReport, report))


def progress_to_proto(progress: dict | None) -> jobs_pb2.Progress:
    if not progress:
        return jobs_pb2.Progress()
    payload = dict(progress)
    report = payload.pop("report", None)
    pb = parse(jobs_pb2.Progress, payload)
    if report is not None:
        pb.report.CopyFrom(stage_report(report["stage"], report["split"], report["report"]))
    return pb


def result_to_proto(result: dict, lookup: Callable[[str], ArtifactRecord]) -> jobs_pb2.JobResult:
    payload = dict(result)
    outputs = payload.pop("outputs", [])
    reports = payload.pop("reports", [])
    diagnostics = payload.pop("diagnostics", None)
    sweep = payload.pop("sweep", [])
    pb = parse(jobs_pb2.JobResult, payload)
    for out in outputs:
        pb.outputs.add(role=out["role"], artifact=artifact_to_proto(lookup(out["artifact_id"])))
    for r in reports:
        pb.reports.append(stage_report(r["stage"], r["split"], r["report"]))
    if diagnostics is not None:
        pb.diagnostics.CopyFrom(parse(reports_pb2.DiagnosticsSummary, diagnostics))
    for point in sweep:
        pb.sweep.add(sparsity=point["sparsity"], tolerance_met=point["tolerance_met"],
                     report=parse(reports_pb2.GroupReport, point["report"]))
    return pb


def job_to_proto(record: JobRecord, lookup: Callable[[str], ArtifactRecord], *, with_result: bool = True) -> jobs_pb2.Job:
    pb = jobs_pb2.Job(
        job_id=record.job_id, spec=spec_to_proto(JobSpecModel.model_validate(record.spec)),
        state=_number(JOB_STATES, record.state), done=record.done, request_id=record.request_id or "",
        create_time=timestamp(record.create_time), start_time=timestamp(record.start_time),
        end_time=timestamp(record.end_time), progress=progress_to_proto(record.progress), attempt=record.attempt)
    if record.error:
        pb.error.CopyFrom(jobs_pb2.JobError(**record.error))
    if record.result and with_result:
        pb.result.CopyFrom(result_to_proto(record.result, lookup))
    return pb


def event_to_proto(event: JobEventRecord) -> jobs_pb2.JobEvent:
    return jobs_pb2.JobEvent(sequence=event.sequence, time=timestamp(event.time),
                             state=_number(JOB_STATES, event.state), progress=progress_to_proto(event.progress))
