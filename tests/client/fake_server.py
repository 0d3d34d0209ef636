"""An in-process fake of the equiprune gRPC server, for testing the client without torch or Ray.

It implements ArtifactService, JobService and ServingService (see FakeServingService) of
proto/equiprune/v1 in memory, with enough of the real behaviour for the SDK: chunked uploads
with offset checks, idempotent FinishUpload, streamed downloads, `sample:` imports, jobs that
"run" on a thread by emitting a few scripted events and finish with per-group reports (and a
sweep, for budget searches), CreateJob idempotency by request_id, WaitJob and a resumable
WatchJob, and served models with predictions, outcomes and window metrics. FinishUpload
answers a repeat for a finished session unless `server.artifacts.idempotent_finish` is False
(the real store's behaviour: the session is gone).

Faults are injected through `server.faults`:

    server.faults.fail("PutUploadChunk", times=2)                      # UNAVAILABLE twice, then normal
    server.faults.fail("CreateJob", times=1, after=True)               # do the work, then lose the reply
    server.faults.break_stream("DownloadArtifact", after_messages=3)   # abort one stream midway

A job whose `group_by` names the attribute `missing` fails like a real job with a bad attribute.
`server.jobs.gate.clear()` holds every job in RUNNING until `gate.set()`.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import threading
import time
from collections import defaultdict
from concurrent import futures
from dataclasses import asdict, dataclass, field

import grpc
from google.protobuf import json_format, timestamp_pb2

from equiprune.engine.metrics import Reference, Tally, group_metrics, wilson_interval  # noqa: F401 (tests import it)

from equiprune.v1 import (artifacts_pb2, artifacts_pb2_grpc, jobs_pb2, jobs_pb2_grpc,
                          reports_pb2, serving_pb2, serving_pb2_grpc)

SAMPLE_DIGITS = b"fake digits dataset\n" * 64
GROUPS = {"young": (200, 0.95, 0.97), "old": (180, 0.90, 0.96), "rare": (8, 0.75, 0.875)}
"""Fake per-group (n, accuracy after fine-tuning, dense accuracy) of every scripted report."""


# ------------------------------------------------------------------ fault injection

@dataclass
class _Fault:
    code: grpc.StatusCode
    message: str
    after: bool = False
    after_messages: int | None = None


@dataclass
class Faults:
    """Scripted failures per RPC method name, consumed in order; every request is recorded."""

    _pending: dict = field(default_factory=lambda: defaultdict(list))
    requests: dict = field(default_factory=lambda: defaultdict(list))
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def fail(self, method: str, times: int = 1, code: grpc.StatusCode = grpc.StatusCode.UNAVAILABLE,
             message: str = "injected failure", after: bool = False) -> None:
        """The next `times` calls of `method` fail with `code` (after doing their work when `after`)."""
        with self._lock:
            self._pending[method].extend(_Fault(code, message, after) for _ in range(times))

    def break_stream(self, method: str, after_messages: int, times: int = 1,
                     code: grpc.StatusCode = grpc.StatusCode.UNAVAILABLE) -> None:
        """The next `times` streams of `method` abort after sending `after_messages` messages."""
        with self._lock:
            self._pending[method].extend(_Fault(code, "injected stream break", after_messages=after_messages)
                                         for _ in range(times))

    def enter(self, method: str, request, context) -> _Fault | None:
        """Record the call; abort now for a plain fault, or return a deferred one."""
        with self._lock:
            self.requests[method].append(_copy(request))
            fault = self._pending[method].pop(0) if self._pending[method] else None
        if fault and not fault.after and fault.after_messages is None:
            context.abort(fault.code, fault.message)
        return fault

    def count(self, method: str) -> int:
        with self._lock:
            return len(self.requests[method])


def _copy(message):
    clone = type(message)()
    clone.CopyFrom(message)
    return clone


def _now() -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.GetCurrentTime()
    return stamp


# ------------------------------------------------------------------ artifacts

class FakeArtifactService(artifacts_pb2_grpc.ArtifactServiceServicer):
    def __init__(self, faults: Faults, max_chunk_bytes: int) -> None:
        self.faults = faults
        self.max_chunk_bytes = max_chunk_bytes
        self.blobs: dict[str, bytes] = {}
        self.artifacts: dict[str, artifacts_pb2.Artifact] = {}
        self._uploads: dict[str, dict] = {}
        self._finished: dict[str, str] = {}
        # The real store closes a finished session; True answers a repeated FinishUpload anyway.
        self.idempotent_finish = True
        self._lock = threading.Lock()
        self._counter = 0

    def store(self, kind: int, data: bytes, display_name: str, source: str) -> artifacts_pb2.Artifact:
        with self._lock:
            self._counter += 1
            artifact_id = f"art-{self._counter:08x}"
            artifact = artifacts_pb2.Artifact(
                artifact_id=artifact_id, kind=kind, display_name=display_name, size_bytes=len(data),
                sha256=hashlib.sha256(data).hexdigest(), create_time=_now(), source=source)
            self.artifacts[artifact_id] = artifact
            self.blobs[artifact_id] = data
            return artifact

    def StartUpload(self, request, context):
        self.faults.enter("StartUpload", request, context)
        if request.kind == artifacts_pb2.ARTIFACT_KIND_UNSPECIFIED:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "kind: required")
        if request.size_bytes <= 0:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "size_bytes: must be > 0")
        if len(request.sha256) != 64 or set(request.sha256) - set("0123456789abcdef"):
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "sha256: must be 64 lower-case hex digits")
        with self._lock:
            self._counter += 1
            upload_id = f"upl-{self._counter:08x}"
            self._uploads[upload_id] = {"request": _copy(request), "data": bytearray()}
        return artifacts_pb2.StartUploadResponse(upload_id=upload_id, max_chunk_bytes=self.max_chunk_bytes)

    def PutUploadChunk(self, request, context):
        fault = self.faults.enter("PutUploadChunk", request, context)
        upload = self._open_upload(request.upload_id, context)
        with self._lock:
            data, size = upload["data"], upload["request"].size_bytes
            end = request.offset + len(request.data)
            if not request.data:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, "data: must not be empty")
            if len(request.data) > self.max_chunk_bytes:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"data: more than {self.max_chunk_bytes} bytes")
            if end > size:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"data: ends at {end}, beyond size_bytes {size}")
            if request.offset == len(data):
                data.extend(request.data)
            elif not (end <= len(data) and data[request.offset:end] == request.data):
                context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                              f"offset: expected {len(data)}, got {request.offset}")
            committed = len(data)
        if fault and fault.after:
            context.abort(fault.code, fault.message)
        return artifacts_pb2.PutUploadChunkResponse(committed_bytes=committed)

    def GetUpload(self, request, context):
        self.faults.enter("GetUpload", request, context)
        upload = self._open_upload(request.upload_id, context)
        announced = upload["request"]
        return artifacts_pb2.GetUploadResponse(upload=artifacts_pb2.Upload(
            upload_id=request.upload_id, kind=announced.kind, size_bytes=announced.size_bytes,
            committed_bytes=len(upload["data"]), sha256=announced.sha256))

    def FinishUpload(self, request, context):
        fault = self.faults.enter("FinishUpload", request, context)
        if self.idempotent_finish and request.upload_id in self._finished:  # idempotent: a retry gets the same artifact
            return artifacts_pb2.FinishUploadResponse(artifact=self.artifacts[self._finished[request.upload_id]])
        upload = self._open_upload(request.upload_id, context)
        announced, data = upload["request"], bytes(upload["data"])
        if len(data) != announced.size_bytes:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                          f"upload_id: {len(data)} of {announced.size_bytes} bytes committed")
        if hashlib.sha256(data).hexdigest() != announced.sha256:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "sha256: the content does not have the announced digest")
        artifact = self.store(announced.kind, data, announced.display_name, "upload")
        with self._lock:
            self._finished[request.upload_id] = artifact.artifact_id
            del self._uploads[request.upload_id]
        if fault and fault.after:
            context.abort(fault.code, fault.message)
        return artifacts_pb2.FinishUploadResponse(artifact=artifact)

    def ImportArtifact(self, request, context):
        self.faults.enter("ImportArtifact", request, context)
        return artifacts_pb2.ImportArtifactResponse(artifact=self.import_source(request.kind, request.source, context,
                                                                                 "source", request.display_name))

    def import_source(self, kind, source, context, field_name, display_name=""):
        if kind == artifacts_pb2.ARTIFACT_KIND_UNSPECIFIED:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "kind: required")
        if source.uri != "sample:digits":
            if not source.sha256:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"{field_name}.sha256: required for {source.uri}")
            context.abort(grpc.StatusCode.NOT_FOUND, f"{field_name}.uri: nothing at {source.uri}")
        return self.store(kind, SAMPLE_DIGITS, display_name or "digits", source.uri)

    def GetArtifact(self, request, context):
        self.faults.enter("GetArtifact", request, context)
        return artifacts_pb2.GetArtifactResponse(artifact=self.lookup(request.artifact_id, context, "artifact_id"))

    def lookup(self, artifact_id, context, field_name) -> artifacts_pb2.Artifact:
        if artifact_id not in self.artifacts:
            context.abort(grpc.StatusCode.NOT_FOUND, f"{field_name}: no artifact {artifact_id!r}")
        return self.artifacts[artifact_id]

    def ListArtifacts(self, request, context):
        self.faults.enter("ListArtifacts", request, context)
        with self._lock:
            chosen = [a for a in reversed(list(self.artifacts.values())) if request.kind in (0, a.kind)]
        page, token = _page(chosen, request.page_size or 100, request.page_token, context)
        return artifacts_pb2.ListArtifactsResponse(artifacts=page, next_page_token=token)

    def DownloadArtifact(self, request, context):
        fault = self.faults.enter("DownloadArtifact", request, context)
        artifact = self.lookup(request.artifact_id, context, "artifact_id")
        data = self.blobs[request.artifact_id]
        if not 0 <= request.offset <= len(data):
            context.abort(grpc.StatusCode.OUT_OF_RANGE, f"offset: must be in [0, {len(data)}]")
        chunk = request.chunk_bytes or (1 << 20)
        for sent, start in enumerate(range(request.offset, len(data), chunk)):
            if fault and fault.after_messages is not None and sent == fault.after_messages:
                context.abort(fault.code, fault.message)
            yield artifacts_pb2.DownloadArtifactResponse(offset=start, data=data[start:start + chunk],
                                                         size_bytes=len(data), sha256=artifact.sha256)

    def _open_upload(self, upload_id, context) -> dict:
        upload = self._uploads.get(upload_id)
        if upload is None:
            context.abort(grpc.StatusCode.NOT_FOUND, f"upload_id: no open upload {upload_id!r}")
        return upload


def _page(items: list, size: int, token: str, context) -> tuple[list, str]:
    try:
        start = int(token or 0)
    except ValueError:
        context.abort(grpc.StatusCode.INVALID_ARGUMENT, "page_token: not a token this server issued")
    end = start + size
    return items[start:end], (str(end) if end < len(items) else "")


# ------------------------------------------------------------------ scripted reports

def group_report(fraction: float, tolerance: float = 0.02, min_group_size: int = 10,
                 reference: bool = True) -> reports_pb2.GroupReport:
    """A report whose accuracies lie `fraction` of the way from dense to the GROUPS figures,
    measured by the metrics core (engine/metrics.py) as a real job's paired report is: the
    model loses only samples the dense model got right (and gains only ones it got wrong).
    Without `reference` (a dense stage, as in a real job) there is nothing to compare with."""
    rows = {g: (n, ref + fraction * (acc - ref), ref) for g, (n, acc, ref) in GROUPS.items()}
    total = sum(n for n, _, _ in rows.values())
    compared = Reference(
        accuracy={g: ref for g, (_, _, ref) in rows.items()},
        loss={g: 1 - ref for g, (_, _, ref) in rows.items()},
        overall_loss=sum(n * (1 - ref) for n, _, ref in rows.values()) / total,
        discordant={g: (max(0.0, n * (ref - acc)), max(0.0, n * (acc - ref))) for g, (n, acc, ref) in rows.items()})
    frame = group_metrics({g: Tally(n, n * acc, n * (1 - acc)) for g, (n, acc, _) in rows.items()},
                          compared if reference else None, tolerance=tolerance, min_group_size=min_group_size)
    return _message(reports_pb2.GroupReport, asdict(frame))


def _message(message_type, payload: dict):
    """A proto from a core dataclass's asdict(), unset where the core has None (as the real
    server's convert.parse does)."""
    def strip(value):
        if isinstance(value, dict):
            return {k: strip(v) for k, v in value.items() if v is not None}
        return [strip(v) for v in value] if isinstance(value, (list, tuple)) else value
    return json_format.ParseDict(strip(payload), message_type(), ignore_unknown_fields=True)


def _stage(stage: int, split: str, fraction: float) -> reports_pb2.StageReport:
    report = group_report(fraction, reference=stage != reports_pb2.REPORT_STAGE_DENSE)
    return reports_pb2.StageReport(stage=stage, split=split, report=report)


# Each kind's phases and the stages it reports, as fractions of the way to the GROUPS figures.
_PHASES = {
    jobs_pb2.JOB_KIND_TRAIN: ["load", "train", "write_outputs"],
    jobs_pb2.JOB_KIND_EVALUATE: ["load", "evaluate_dense", "write_outputs"],
    jobs_pb2.JOB_KIND_DIAGNOSE: ["load", "diagnose", "write_outputs"],
    jobs_pb2.JOB_KIND_PRUNE: ["load", "evaluate_dense", "prune", "write_outputs"],
    jobs_pb2.JOB_KIND_FINETUNE: ["load", "finetune", "write_outputs"],
    jobs_pb2.JOB_KIND_PRUNE_AND_FINETUNE: ["load", "evaluate_dense", "prune", "finetune", "write_outputs"],
    jobs_pb2.JOB_KIND_BUDGET_SEARCH: ["load", "evaluate_dense", "budget_probe", "write_outputs"],
}
_STAGES = {
    jobs_pb2.JOB_KIND_TRAIN: [(reports_pb2.REPORT_STAGE_DENSE, 0.0)],
    jobs_pb2.JOB_KIND_EVALUATE: [(reports_pb2.REPORT_STAGE_DENSE, 0.0)],
    jobs_pb2.JOB_KIND_PRUNE: [(reports_pb2.REPORT_STAGE_DENSE, 0.0), (reports_pb2.REPORT_STAGE_PRUNED, 3.0)],
    jobs_pb2.JOB_KIND_FINETUNE: [(reports_pb2.REPORT_STAGE_FINETUNED, 1.0)],
    jobs_pb2.JOB_KIND_PRUNE_AND_FINETUNE: [(reports_pb2.REPORT_STAGE_DENSE, 0.0), (reports_pb2.REPORT_STAGE_PRUNED, 3.0),
                                           (reports_pb2.REPORT_STAGE_FINETUNED, 1.0)],
    jobs_pb2.JOB_KIND_BUDGET_SEARCH: [(reports_pb2.REPORT_STAGE_DENSE, 0.0)],
}
SWEEP = [(0.5, 0.2), (0.725, 0.5), (0.8375, 1.0), (0.95, 3.0)]
"""Budget search probes: (sparsity, fraction of the way to the GROUPS figures)."""


# ------------------------------------------------------------------ jobs

@dataclass
class _JobRecord:
    job: jobs_pb2.Job
    events: list = field(default_factory=list)


class FakeJobService(jobs_pb2_grpc.JobServiceServicer):
    def __init__(self, faults: Faults, artifacts: FakeArtifactService, step_delay: float) -> None:
        self.faults = faults
        self.artifacts = artifacts
        self.step_delay = step_delay
        self.gate = threading.Event()
        self.gate.set()
        self._jobs: dict[str, _JobRecord] = {}
        self._by_request: dict[str, tuple[bytes, str]] = {}
        self._changed = threading.Condition()
        self._counter = 0
        self._stopping = threading.Event()

    def stop(self) -> None:
        self._stopping.set()
        self.gate.set()
        with self._changed:
            self._changed.notify_all()

    # -------------------------------------------------------------- RPCs

    def CreateJob(self, request, context):
        fault = self.faults.enter("CreateJob", request, context)
        spec = self._resolved(request.spec, context)
        with self._changed:
            known = self._by_request.get(request.request_id) if request.request_id else None
            if known and known[0] != request.spec.SerializeToString(deterministic=True):
                context.abort(grpc.StatusCode.ALREADY_EXISTS, "request_id: already used for another spec")
            if known:
                job = self._jobs[known[1]].job
            else:
                job = self._new_job(spec, request)
        if fault and fault.after:
            context.abort(fault.code, fault.message)
        return jobs_pb2.CreateJobResponse(job=job)

    def GetJob(self, request, context):
        self.faults.enter("GetJob", request, context)
        with self._changed:
            return jobs_pb2.GetJobResponse(job=_copy(self._record(request.job_id, context).job))

    def ListJobs(self, request, context):
        self.faults.enter("ListJobs", request, context)
        with self._changed:
            chosen = []
            for record in reversed(list(self._jobs.values())):
                if (request.states and record.job.state not in request.states) or \
                        request.kind not in (0, record.job.spec.kind):
                    continue
                listed = _copy(record.job)
                listed.ClearField("result")
                chosen.append(listed)
        page, token = _page(chosen, request.page_size or 50, request.page_token, context)
        return jobs_pb2.ListJobsResponse(jobs=page, next_page_token=token)

    def CancelJob(self, request, context):
        self.faults.enter("CancelJob", request, context)
        with self._changed:
            record = self._record(request.job_id, context)
            if not record.job.done:
                record.job.error.CopyFrom(jobs_pb2.JobError(code="CANCELLED", message="cancelled by CancelJob"))
                self._append(record, jobs_pb2.JOB_STATE_CANCELLED, jobs_pb2.Progress(phase="done"))
            return jobs_pb2.CancelJobResponse(job=_copy(record.job))

    def WaitJob(self, request, context):
        self.faults.enter("WaitJob", request, context)
        wait = request.timeout.ToTimedelta().total_seconds() or 60.0
        with self._changed:
            record = self._record(request.job_id, context)
            self._changed.wait_for(lambda: record.job.done or self._stopping.is_set(), timeout=wait)
            return jobs_pb2.WaitJobResponse(job=_copy(record.job))

    def WatchJob(self, request, context):
        fault = self.faults.enter("WatchJob", request, context)
        sent = 0
        cursor = request.after_sequence
        with self._changed:
            record = self._record(request.job_id, context)
        while context.is_active() and not self._stopping.is_set():
            with self._changed:
                self._changed.wait_for(lambda: len(record.events) > cursor or self._stopping.is_set(), timeout=0.05)
                pending = record.events[cursor:]
                finished = record.job.done
                total = len(record.events)
            for event in pending:
                if fault and fault.after_messages is not None and sent == fault.after_messages:
                    context.abort(fault.code, fault.message)
                cursor = event.sequence
                sent += 1
                yield jobs_pb2.WatchJobResponse(event=event, done=finished and event.sequence == total)
            if finished and cursor >= total:
                return

    # -------------------------------------------------------------- the scripted run

    def _resolved(self, spec: jobs_pb2.JobSpec, context) -> jobs_pb2.JobSpec:
        """Validate like the server does, and replace URI references by artifact ids."""
        if spec.kind == jobs_pb2.JOB_KIND_UNSPECIFIED:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "spec.kind: required")
        if spec.kind != jobs_pb2.JOB_KIND_TRAIN and not spec.data.group_by:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "spec.data.group_by: required: at least one attribute")
        resolved = _copy(spec)
        roles = [("dataset", artifacts_pb2.ARTIFACT_KIND_DATASET)]
        if spec.kind != jobs_pb2.JOB_KIND_TRAIN:
            roles.append(("model", artifacts_pb2.ARTIFACT_KIND_MODEL))
        for role, kind in roles:
            ref = getattr(resolved, role)
            which = ref.WhichOneof("source")
            if which is None:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"spec.{role}: required")
            if which == "uri":
                artifact = self.artifacts.import_source(kind, ref.uri, context, f"spec.{role}.uri")
                ref.artifact_id = artifact.artifact_id
            else:
                self.artifacts.lookup(ref.artifact_id, context, f"spec.{role}.artifact_id")
        return resolved

    def _new_job(self, spec: jobs_pb2.JobSpec, request) -> jobs_pb2.Job:
        self._counter += 1
        job_id = f"job-{self._counter:08x}"
        job = jobs_pb2.Job(job_id=job_id, spec=spec, request_id=request.request_id, create_time=_now(), attempt=1)
        record = _JobRecord(job)
        self._jobs[job_id] = record
        if request.request_id:
            self._by_request[request.request_id] = (request.spec.SerializeToString(deterministic=True), job_id)
        self._append(record, jobs_pb2.JOB_STATE_QUEUED, jobs_pb2.Progress(phase="queued"))
        threading.Thread(target=self._run, args=(record,), daemon=True).start()
        return _copy(job)

    def _append(self, record: _JobRecord, state: int, progress: jobs_pb2.Progress) -> None:
        """Record an event (caller holds the condition) and wake waiters."""
        record.job.state = state
        record.job.progress.CopyFrom(progress)
        record.job.done = state in (jobs_pb2.JOB_STATE_SUCCEEDED, jobs_pb2.JOB_STATE_FAILED,
                                    jobs_pb2.JOB_STATE_CANCELLED)
        if state == jobs_pb2.JOB_STATE_RUNNING and not record.job.HasField("start_time"):
            record.job.start_time.CopyFrom(_now())
        if record.job.done:
            record.job.end_time.CopyFrom(_now())
        record.events.append(jobs_pb2.JobEvent(sequence=len(record.events) + 1, time=_now(), state=state,
                                               progress=progress))
        self._changed.notify_all()

    def _emit(self, record: _JobRecord, state: int, progress: jobs_pb2.Progress) -> bool:
        """Append an event unless the job was cancelled meanwhile; False when it was."""
        if self._stopping.wait(self.step_delay):
            return False
        with self._changed:
            if record.job.done:
                return False
            self._append(record, state, progress)
            return True

    def _run(self, record: _JobRecord) -> None:
        spec = record.job.spec
        for phase in _PHASES[spec.kind]:
            for progress in _phase_progress(phase, spec):
                if not self._emit(record, jobs_pb2.JOB_STATE_RUNNING, progress):
                    return
            if phase == "load" and "missing" in spec.data.group_by:
                with self._changed:
                    record.job.error.CopyFrom(jobs_pb2.JobError(
                        code="INVALID_ARGUMENT", field="spec.data.group_by",
                        message="spec.data.group_by: the dataset has no attribute 'missing'"))
                self._emit(record, jobs_pb2.JOB_STATE_FAILED, jobs_pb2.Progress(phase="done"))
                return
        self.gate.wait()
        result = self._result(record.job)
        with self._changed:
            if record.job.done:
                return
            record.job.result.CopyFrom(result)
        self._emit(record, jobs_pb2.JOB_STATE_SUCCEEDED, jobs_pb2.Progress(phase="done"))

    def _result(self, job: jobs_pb2.Job) -> jobs_pb2.JobResult:
        spec = job.spec
        result = jobs_pb2.JobResult(parameters_before=1000, parameters_after=1000)
        for stage, fraction in _STAGES.get(spec.kind, []):
            for split in ("train", "test"):
                result.reports.append(_stage(stage, split, fraction))
        if spec.kind == jobs_pb2.JOB_KIND_BUDGET_SEARCH:
            for sparsity, fraction in SWEEP:
                report = group_report(fraction, tolerance=spec.data.tolerance if spec.data.HasField("tolerance") else 0.02)
                result.sweep.add(sparsity=sparsity, tolerance_met=report.summary.tolerance_met, report=report)
            result.best_sparsity = max(p.sparsity for p in result.sweep if p.tolerance_met)
        if spec.kind == jobs_pb2.JOB_KIND_DIAGNOSE:
            for name, (n, _, ref) in GROUPS.items():
                result.diagnostics.groups.add(group=name, n=n, loss=1 - ref, gradient_norm=0.5, hessian_trace=12.0,
                                              hessian_trace_stderr=0.5, hessian_top_eigenvalue=3.0,
                                              mean_uncertainty=0.1, mean_margin=0.8, mean_logit_margin=4.0)
        if spec.HasField("pruning") and spec.kind != jobs_pb2.JOB_KIND_BUDGET_SEARCH:
            result.measured_sparsity = spec.pruning.sparsity if spec.pruning.HasField("sparsity") else 0.9  # the engine default
        if spec.kind in (jobs_pb2.JOB_KIND_TRAIN, jobs_pb2.JOB_KIND_PRUNE, jobs_pb2.JOB_KIND_FINETUNE,
                         jobs_pb2.JOB_KIND_PRUNE_AND_FINETUNE):
            model = self.artifacts.store(artifacts_pb2.ARTIFACT_KIND_MODEL, f"weights of {job.job_id}".encode() * 100,
                                         "model.safetensors", f"job:{job.job_id}")
            result.outputs.add(role="model", artifact=model)
        report_bytes = json.dumps({"job": job.job_id, "kind": spec.kind}).encode()
        report = self.artifacts.store(artifacts_pb2.ARTIFACT_KIND_REPORT, report_bytes, "report.json",
                                      f"job:{job.job_id}")
        result.outputs.add(role="report", artifact=report)
        result.notes.append("fake server: scripted numbers")
        return result

    def _record(self, job_id: str, context) -> _JobRecord:
        if job_id not in self._jobs:
            context.abort(grpc.StatusCode.NOT_FOUND, f"job_id: no job {job_id!r}")
        return self._jobs[job_id]


def _phase_progress(phase: str, spec: jobs_pb2.JobSpec) -> list[jobs_pb2.Progress]:
    """The scripted progress events of one phase."""
    if phase in ("train", "finetune"):
        epochs = 2
        steps = 4
        return [jobs_pb2.Progress(phase=phase, step=step, total_steps=steps, epoch=(step - 1) * epochs // steps,
                                  epochs=epochs, metrics={"loss": 1.0 / step},
                                  group_multipliers={"old": 0.1 * step} if phase == "finetune" else {})
                for step in range(1, steps + 1)]
    if phase == "prune":
        # Like the real service: one report per stage and split, before and after recalibration.
        return [jobs_pb2.Progress(phase="prune", metrics={"sparsity": spec.pruning.sparsity})] + [
            jobs_pb2.Progress(phase="prune", report=_stage(stage, split, fraction), message="pruned")
            for stage, fraction in ((reports_pb2.REPORT_STAGE_PRUNED_WITHOUT_RECALIBRATION, 4.0),
                                    (reports_pb2.REPORT_STAGE_PRUNED, 3.0))
            for split in ("train", "test")]
    if phase == "budget_probe":
        return [jobs_pb2.Progress(phase=phase, step=i + 1, total_steps=len(SWEEP), metrics={"sparsity": s})
                for i, (s, _) in enumerate(SWEEP)]
    return [jobs_pb2.Progress(phase=phase)]


# ------------------------------------------------------------------ serving

SERVED_NAME = re.compile(r"^[a-z][a-z0-9-]{0,62}$")
NUM_CLASSES = 10
WINDOWS = (300, 3600, 86400)
"""The fake monitor's windows in seconds (5m, 1h, 1d), shortest first."""
DEFAULT_INPUT_SHAPE = (1, 8, 8)
"""The sample shape of every fake job's dataset (digits)."""


@dataclass
class _Row:
    """One thing the monitor counts: a prediction (joined to its outcome later) or a direct record."""

    model: str
    group: str
    time: float
    predicted: int
    confidence: float | None
    boundary: float | None = None
    shadow: int | None = None
    label: int | None = None


class FakeServingService(serving_pb2_grpc.ServingServiceServicer):
    """ServingService in memory, with the real monitor's bookkeeping.

    The "model" is the softmax of an instance's first ten values (class = the largest); with a
    shadow, the shadow agrees unless the first value is negative. Outcomes are joined once: a
    repeat counts as `duplicate`, an id never issued as `unknown`, a label outside the ten
    classes as `invalid`, and one for a prediction older than the longest window as `late`
    (`server.serving.rows` can be aged by hand). Metrics cover WINDOWS with Wilson intervals;
    groups need `min_count` outcomes to be judged. `clock` is injectable.
    """

    def __init__(self, faults: Faults, artifacts: FakeArtifactService, jobs: "FakeJobService") -> None:
        self.faults = faults
        self.artifacts = artifacts
        self.jobs = jobs
        self.min_count = 5
        self.clock = time.time
        self.models: dict[str, serving_pb2.ServedModel] = {}
        self.history: dict[str, serving_pb2.ServedModel] = {}  # every name ever served, for metrics
        self.predictions: dict[str, _Row] = {}
        self.rows: list[_Row] = []
        self.totals: dict[str, serving_pb2.MonitorTotals] = defaultdict(serving_pb2.MonitorTotals)
        self._lock = threading.Lock()
        self._counter = 0

    # -------------------------------------------------------------- deployments

    def DeployModel(self, request, context):
        fault = self.faults.enter("DeployModel", request, context)
        if not SERVED_NAME.match(request.name):
            context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                          "name: 1-63 characters of a-z, 0-9 and -, starting with a letter")
        self._model_artifact(request.artifact_id, "artifact_id", context)
        if request.shadow_artifact_id:
            self._model_artifact(request.shadow_artifact_id, "shadow_artifact_id", context)
        if not request.group_by:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "group_by: name at least one group attribute")
        tolerance = request.tolerance if request.HasField("tolerance") else 0.01
        if not 0 <= tolerance < 1:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"tolerance: must be in [0, 1), got {tolerance}")
        if request.reference_job_id and request.reference_accuracy:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                          "reference_accuracy: give reference_job_id or reference_accuracy, not both")
        served = serving_pb2.ServedModel(name=request.name, artifact_id=request.artifact_id,
                                         shadow_artifact_id=request.shadow_artifact_id, group_by=request.group_by,
                                         tolerance=tolerance, create_time=_now(), input_shape=request.input_shape)
        if request.reference_job_id:
            self._job_reference(served, request.reference_job_id, context)
        elif request.reference_accuracy:
            served.reference_accuracy.update(request.reference_accuracy)
            if request.HasField("reference_overall_accuracy"):
                served.reference_overall_accuracy = request.reference_overall_accuracy
        else:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                          "reference_job_id: give reference_job_id (a job with a dense report) or reference_accuracy")
        if not served.input_shape:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                          "input_shape: required without a reference job: the shape of one instance")
        with self._lock:
            self.models[served.name] = served
            self.history[served.name] = served
        if fault and fault.after:
            context.abort(fault.code, fault.message)
        return serving_pb2.DeployModelResponse(model=served)

    def _model_artifact(self, artifact_id: str, field_name: str, context) -> None:
        artifact = self.artifacts.lookup(artifact_id, context, field_name)
        if artifact.kind != artifacts_pb2.ARTIFACT_KIND_MODEL:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, f"{field_name}: artifact {artifact_id} is not a model")

    def _job_reference(self, served: serving_pb2.ServedModel, job_id: str, context) -> None:
        """The dense report of a finished job (test split) becomes the reference."""
        record = self.jobs._jobs.get(job_id)
        if record is None:
            context.abort(grpc.StatusCode.NOT_FOUND, f"reference_job_id: no job {job_id!r}")
        dense = [r for r in record.job.result.reports
                 if r.stage == reports_pb2.REPORT_STAGE_DENSE and r.split == "test"]
        if record.job.state != jobs_pb2.JOB_STATE_SUCCEEDED or not dense:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                          f"reference_job_id: job {job_id} has no dense report (state {record.job.state})")
        report = dense[0].report
        served.reference_accuracy.update({g.group: g.accuracy for g in report.groups})
        served.reference_overall_accuracy = report.overall.accuracy
        if not served.input_shape:
            served.input_shape.extend(DEFAULT_INPUT_SHAPE)

    def UndeployModel(self, request, context):
        fault = self.faults.enter("UndeployModel", request, context)
        with self._lock:
            if self.models.pop(request.name, None) is None:
                context.abort(grpc.StatusCode.NOT_FOUND, f"name: no served model named {request.name!r}")
        if fault and fault.after:
            context.abort(fault.code, fault.message)
        return serving_pb2.UndeployModelResponse()

    def ListServedModels(self, request, context):
        self.faults.enter("ListServedModels", request, context)
        with self._lock:
            return serving_pb2.ListServedModelsResponse(models=[self.models[n] for n in sorted(self.models)])

    # -------------------------------------------------------------- traffic

    def Predict(self, request, context):
        fault = self.faults.enter("Predict", request, context)
        served = self._served(request.model, context)
        if not 1 <= len(request.instances) <= 1024:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                          f"instances: send 1 to 1024 instances, got {len(request.instances)}")
        size = math.prod(served.input_shape)
        for i, instance in enumerate(request.instances):
            if len(instance.values) != size:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                              f"instances[{i}].values: expected {size} values, got {len(instance.values)}")
            self._group(served, instance.groups, f"instances[{i}]", context)
        reply = serving_pb2.PredictResponse()
        with self._lock:
            for instance in request.instances:
                scores = (list(instance.values[:NUM_CLASSES]) + [0.0] * NUM_CLASSES)[:NUM_CLASSES]
                top = max(scores)
                weights = [math.exp(v - top) for v in scores]
                probabilities = [w / sum(weights) for w in weights]
                predicted = probabilities.index(max(probabilities))
                self._counter += 1
                prediction = reply.predictions.add(prediction_id=f"pred-{self._counter:08x}", predicted_class=predicted,
                                                   probabilities=probabilities)
                shadow = None
                if served.shadow_artifact_id:
                    shadow = predicted if instance.values[0] >= 0 else (predicted + 1) % NUM_CLASSES
                    prediction.shadow_class = shadow
                row = _Row(served.name, self._group(served, instance.groups, "", context), self.clock(), predicted,
                           max(probabilities), 1 - sum(p * p for p in probabilities), shadow)
                self.predictions[prediction.prediction_id] = row
                self.rows.append(row)
                self.totals[served.name].predictions += 1
        if fault and fault.after:
            context.abort(fault.code, fault.message)
        return reply

    def ReportOutcomes(self, request, context):
        fault = self.faults.enter("ReportOutcomes", request, context)
        if not 1 <= len(request.outcomes) <= 100_000:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                          f"outcomes: send 1 to 100000 outcomes, got {len(request.outcomes)}")
        for i, outcome in enumerate(request.outcomes):
            if not outcome.prediction_id:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"outcomes[{i}].prediction_id: required")
        reply = serving_pb2.ReportOutcomesResponse()
        oldest = self.clock() - max(WINDOWS)
        with self._lock:
            for outcome in request.outcomes:
                row = self.predictions.get(outcome.prediction_id)
                if row is None:
                    reply.unknown += 1
                    continue
                totals = self.totals[row.model]
                if not 0 <= outcome.label < NUM_CLASSES:
                    reply.invalid += 1
                    totals.outcomes_invalid += 1
                elif row.label is not None:
                    reply.duplicate += 1
                    totals.outcomes_duplicate += 1
                else:
                    row.label = outcome.label
                    if row.time < oldest:
                        reply.late += 1
                        totals.outcomes_late += 1
                    else:
                        reply.joined += 1
                        totals.outcomes_joined += 1
        if fault and fault.after:
            context.abort(fault.code, fault.message)
        return reply

    def RecordEvaluations(self, request, context):
        fault = self.faults.enter("RecordEvaluations", request, context)
        served = self._served(request.model, context)
        if not 1 <= len(request.records) <= 100_000:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                          f"records: send 1 to 100000 records, got {len(request.records)}")
        now = self.clock()
        rows = []
        for i, record in enumerate(request.records):
            for name in ("label", "predicted_class"):
                if not 0 <= getattr(record, name) < NUM_CLASSES:
                    context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"records[{i}].{name}: outside the model's classes")
            if record.HasField("confidence") and not 0 <= record.confidence <= 1:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"records[{i}].confidence: must be in [0, 1]")
            when = record.time.ToMicroseconds() / 1e6 if record.HasField("time") else now
            rows.append(_Row(served.name, self._group(served, record.groups, f"records[{i}]", context), when,
                             record.predicted_class, record.confidence if record.HasField("confidence") else None,
                             label=record.label))
        reply = serving_pb2.RecordEvaluationsResponse()
        with self._lock:
            for row in rows:
                if row.time < now - max(WINDOWS):
                    reply.late += 1
                else:
                    reply.recorded += 1
                    self.rows.append(row)
            self.totals[served.name].evaluation_records += len(rows)
        if fault and fault.after:
            context.abort(fault.code, fault.message)
        return reply

    def _served(self, name: str, context) -> serving_pb2.ServedModel:
        served = self.models.get(name)
        if served is None:
            context.abort(grpc.StatusCode.NOT_FOUND, f"model: no served model named {name!r}")
        return served

    @staticmethod
    def _group(served: serving_pb2.ServedModel, groups, where: str, context) -> str:
        """The monitored group: the values of the group_by attributes joined by `&`."""
        for attribute in served.group_by:
            if not groups.get(attribute):
                context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                              f"{where}.groups.{attribute}: the model is monitored by {attribute!r}; give its value")
        return "&".join(groups[a] for a in served.group_by)

    # -------------------------------------------------------------- monitor

    def GetModelMetrics(self, request, context):
        self.faults.enter("GetModelMetrics", request, context)
        with self._lock:
            served = self.history.get(request.model)
            if served is None:
                context.abort(grpc.StatusCode.NOT_FOUND,
                              f"model: no served model named {request.model!r} (now or before)")
            reply = serving_pb2.GetModelMetricsResponse(min_count=self.min_count, totals=self.totals[request.model])
            if request.model in self.models:
                reply.model.CopyFrom(served)
            now = self.clock()
            for seconds in WINDOWS:
                rows = [r for r in self.rows if r.model == request.model and r.time >= now - seconds]
                reply.windows.append(self._window(served, seconds, rows))
        return reply

    def _window(self, served, seconds: int, rows: list[_Row]) -> serving_pb2.WindowMetrics:
        """One window through the metrics core, as the real monitor does: every group the model
        has seen or has a reference for, in name order; the overall row's group is ""."""
        names = sorted({r.group for r in self.rows if r.model == served.name} | set(served.reference_accuracy))
        by_group = {name: [r for r in rows if r.group == name] for name in names}
        reference = Reference(dict(served.reference_accuracy), served.reference_overall_accuracy
                              if served.HasField("reference_overall_accuracy") else None)
        frame = group_metrics({name: _tally(by_group[name]) for name in names}, reference, overall=_tally(rows),
                              min_group_size=self.min_count, gap_intervals=False)
        window = serving_pb2.WindowMetrics(window_seconds=seconds)
        for core in frame.groups:
            window.groups.append(_window_group(core, by_group[core.group], served.reference_accuracy.get(core.group)))
        overall = frame.overall
        window.overall.CopyFrom(_window_group(overall, rows, overall.reference_accuracy))
        window.overall.sufficient_data = overall.n >= self.min_count
        if frame.summary.max_excess_accuracy_gap is not None:
            window.max_excess_accuracy_gap = frame.summary.max_excess_accuracy_gap
            window.max_excess_accuracy_gap_group = frame.summary.max_excess_accuracy_gap_group
        if frame.summary.accuracy_parity_gap is not None:
            window.accuracy_parity_gap = frame.summary.accuracy_parity_gap
        return window


def _tally(rows: list[_Row]) -> Tally:
    labelled = [r for r in rows if r.label is not None]
    return Tally(len(labelled), sum(r.label == r.predicted for r in labelled))


def _window_group(core, rows: list[_Row], reference: float | None) -> serving_pb2.GroupWindowMetrics:
    """The core's numbers for a group (or overall) plus the monitor's own means over its rows."""
    metrics = serving_pb2.GroupWindowMetrics(group=getattr(core, "group", ""), predictions=len(rows), n=core.n,
                                             sufficient_data=getattr(core, "sufficient_data", False))
    for name in ("accuracy", "accuracy_ci_low", "accuracy_ci_high", "accuracy_drop", "excess_accuracy_gap"):
        if getattr(core, name, None) is not None:
            setattr(metrics, name, getattr(core, name))
    if core.accuracy is not None:
        metrics.error_rate = 1 - core.accuracy
    if reference is not None:
        metrics.reference_accuracy = reference
    confidences = [r.confidence for r in rows if r.confidence is not None]
    if confidences:
        metrics.mean_confidence = sum(confidences) / len(confidences)
    boundaries = [r.boundary for r in rows if r.boundary is not None]
    if boundaries:
        metrics.mean_boundary_proxy = sum(boundaries) / len(boundaries)
    shadowed = [r for r in rows if r.shadow is not None]
    metrics.shadow_n = len(shadowed)
    if shadowed:
        metrics.shadow_agreement = sum(r.shadow == r.predicted for r in shadowed) / len(shadowed)
    return metrics


# ------------------------------------------------------------------ the server

class FakeServer:
    """The fake services on 127.0.0.1:<free port>. A context manager: starts and stops."""

    def __init__(self, *, max_chunk_bytes: int = 64 * 1024, step_delay: float = 0.005) -> None:
        self.faults = Faults()
        self.artifacts = FakeArtifactService(self.faults, max_chunk_bytes)
        self.jobs = FakeJobService(self.faults, self.artifacts, step_delay)
        self.serving = FakeServingService(self.faults, self.artifacts, self.jobs)
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
        artifacts_pb2_grpc.add_ArtifactServiceServicer_to_server(self.artifacts, self._server)
        jobs_pb2_grpc.add_JobServiceServicer_to_server(self.jobs, self._server)
        serving_pb2_grpc.add_ServingServiceServicer_to_server(self.serving, self._server)
        self.port = self._server.add_insecure_port("127.0.0.1:0")
        self.target = f"127.0.0.1:{self.port}"

    def __enter__(self) -> "FakeServer":
        self._server.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.jobs.stop()
        self._server.stop(grace=None).wait()
