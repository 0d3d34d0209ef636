"""The gRPC ingress: a Serve deployment whose methods are the RPCs of ArtifactService,
JobService, ServingService (and grpc.health.v1, from `HealthMixin`).

Thin on purpose, as KServe's servicer over its data plane: each method translates the
request (`*/wire.py`), calls a protocol-neutral plane (`artifacts/`, `jobs/`, `serving/`) and
translates the answer back. Every exception leaves through `_status`, the one place that
sets a gRPC status (rpc/status.py), so no stack trace ever reaches a client. Blocking plane
calls run in threads: the replica's event loop keeps serving other calls.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable

from google.protobuf import descriptor_pb2
from google.protobuf.unknown_fields import UnknownFieldSet
from ray import serve
from ray.exceptions import RayTaskError
from ray.serve.handle import DeploymentHandle

from equiprune.v1 import artifacts_pb2, jobs_pb2, serving_pb2

from equiprune.service import factory
from equiprune.service.artifacts import wire as artifacts_wire
from equiprune.service.errors import InvalidArgument, client_status
from equiprune.service.rpc.servicers import UndecodableRequest
from equiprune.service.jobs import wire as jobs_wire
from equiprune.service.serving import wire as serving_wire
from equiprune.service.rpc import status as rpc_status
from equiprune.service.rpc.health import HealthMixin


def _status(exc: BaseException, context) -> None:
    """Set the call's status from an exception (unwrapping errors raised in another replica)."""
    if isinstance(exc, RayTaskError) and isinstance(getattr(exc, "cause", None), BaseException):
        exc = exc.cause
    rpc_status.apply(context, client_status(exc))


def _decoded(request):
    """The request, unless Serve's proxy could not decode its bytes (rpc/servicers.py) or it
    carries a field this server does not know."""
    if isinstance(request, UndecodableRequest):
        raise InvalidArgument(f"the bytes received are not a valid {request.message_type} message "
                              f"({request.problem})", field="request")
    refuse_unknown_fields(request)
    return request


def refuse_unknown_fields(message, path: str = "") -> None:
    """Nothing a client sends is dropped silently. protobuf keeps a field it does not know
    aside and every reader ignores it: a newer client's field, or an old one's
    (`TrainOptions.architecture_kwargs` was a Struct in field 2 before it became JSON text in
    field 6) would be lost without a word. Refused instead, naming where it was. Costs about
    1.4 ms on the largest Predict (1,024 instances of 3,072 values)."""
    unknown = sorted({f.field_number for f in UnknownFieldSet(message)})
    if unknown:
        described = descriptor_pb2.DescriptorProto()
        message.DESCRIPTOR.CopyToProto(described)
        reserved = any(r.start <= unknown[0] < r.end for r in described.reserved_range)
        why = ("a field number this API no longer uses (reserved: its meaning moved, see the .proto)" if reserved
               else "not part of this API version")
        raise InvalidArgument(f"field number {unknown[0]} of {message.DESCRIPTOR.name} is {why}",
                              field=path or "request")
    for fd, value in message.ListFields():
        if fd.message_type is None or fd.message_type.GetOptions().map_entry:
            continue
        if fd.is_repeated:
            for i, item in enumerate(value):
                refuse_unknown_fields(item, f"{path}.{fd.name}[{i}]".lstrip("."))
        else:
            refuse_unknown_fields(value, f"{path}.{fd.name}".lstrip("."))


def unary(response_type) -> Callable:
    def decorate(method):
        @functools.wraps(method)
        async def call(self, request, grpc_context):
            try:
                return await method(self, _decoded(request), grpc_context)
            except Exception as exc:  # noqa: BLE001 - mapped, never leaked
                _status(exc, grpc_context)
                return response_type()
        return call
    return decorate


class _StreamFailed(Exception):
    """Ends a failed server stream. Serve applies a stream's status only when the generator
    raises after setting it (then it keeps the code and details set on the context)."""


def streaming(method):
    @functools.wraps(method)
    async def call(self, request, grpc_context):
        try:
            async for response in method(self, _decoded(request), grpc_context):
                yield response
        except Exception as exc:  # noqa: BLE001 - mapped, never leaked
            _status(exc, grpc_context)
            raise _StreamFailed() from None
    return call


class Calls:
    """A Serve deployment handle as an object with async methods: `await calls.get(x)`."""

    def __init__(self, handle: DeploymentHandle) -> None:
        self._handle = handle

    def __getattr__(self, name: str):
        method = getattr(self._handle, name)

        async def call(*args, **kwargs):
            return await method.remote(*args, **kwargs)
        return call


class ModelCalls:
    """The model server: one multiplexed model per artifact id."""

    def __init__(self, handle: DeploymentHandle) -> None:
        self._handle = handle

    async def predict(self, artifact_id: str, inputs: list, shape: list[int]):
        return await self._handle.options(multiplexed_model_id=artifact_id).predict.remote(inputs, shape)


def _in_thread(function, *args):
    return asyncio.to_thread(function, *args)


@serve.deployment(name="Ingress", max_ongoing_requests=1000, ray_actor_options={"num_cpus": 0})
class Ingress(HealthMixin):
    def __init__(self, manager: DeploymentHandle, settings: dict, model_server: DeploymentHandle,
                 monitor: DeploymentHandle) -> None:
        self.artifacts, self.jobs, self.serving = factory.planes(
            settings, manager=Calls(manager), monitor=Calls(monitor), models=ModelCalls(model_server))
        # Resume the jobs a previous run left unfinished now, not at the first request.
        self._resumed = manager.ready.remote()

    def _artifact(self, artifact_id: str) -> artifacts_pb2.Artifact:
        return artifacts_wire.artifact_to_proto(self.artifacts.get(artifact_id))

    def _job(self, record, *, with_result: bool = True) -> jobs_pb2.Job:
        return jobs_wire.job_to_proto(record, self._artifact, with_result=with_result)

    # ================================================================== ArtifactService

    @unary(artifacts_pb2.StartUploadResponse)
    async def StartUpload(self, request, grpc_context):
        upload = await _in_thread(self.artifacts.start_upload, artifacts_wire.kind(request.kind), request.display_name,
                                  request.size_bytes, request.sha256)
        return artifacts_pb2.StartUploadResponse(upload_id=upload.upload_id,
                                                 max_chunk_bytes=self.artifacts.store.max_chunk_bytes)

    @unary(artifacts_pb2.PutUploadChunkResponse)
    async def PutUploadChunk(self, request, grpc_context):
        committed = await _in_thread(self.artifacts.put_chunk, request.upload_id, request.offset, request.data)
        return artifacts_pb2.PutUploadChunkResponse(committed_bytes=committed)

    @unary(artifacts_pb2.GetUploadResponse)
    async def GetUpload(self, request, grpc_context):
        upload = await _in_thread(self.artifacts.get_upload, request.upload_id)
        return artifacts_pb2.GetUploadResponse(upload=artifacts_wire.upload_to_proto(upload))

    @unary(artifacts_pb2.FinishUploadResponse)
    async def FinishUpload(self, request, grpc_context):
        record = await _in_thread(self.artifacts.finish_upload, request.upload_id)
        return artifacts_pb2.FinishUploadResponse(artifact=artifacts_wire.artifact_to_proto(record))

    @unary(artifacts_pb2.ImportArtifactResponse)
    async def ImportArtifact(self, request, grpc_context):
        source = jobs_wire.ArtifactSource(uri=request.source.uri, sha256=request.source.sha256)
        record = await _in_thread(self.artifacts.import_artifact, artifacts_wire.kind(request.kind), source,
                                  request.display_name)
        return artifacts_pb2.ImportArtifactResponse(artifact=artifacts_wire.artifact_to_proto(record))

    @unary(artifacts_pb2.GetArtifactResponse)
    async def GetArtifact(self, request, grpc_context):
        return artifacts_pb2.GetArtifactResponse(artifact=await _in_thread(self._artifact, request.artifact_id))

    @unary(artifacts_pb2.ListArtifactsResponse)
    async def ListArtifacts(self, request, grpc_context):
        records, token = await _in_thread(self.artifacts.list, artifacts_wire.optional_kind(request.kind),
                                          request.page_size, request.page_token)
        return artifacts_pb2.ListArtifactsResponse(artifacts=[artifacts_wire.artifact_to_proto(r) for r in records],
                                                   next_page_token=token)

    @streaming
    async def DownloadArtifact(self, request, grpc_context):
        record, chunks = await _in_thread(self.artifacts.download, request.artifact_id, request.offset,
                                          request.chunk_bytes)
        offset = request.offset
        while (data := await _in_thread(next, chunks, None)) is not None:
            yield artifacts_pb2.DownloadArtifactResponse(offset=offset, data=data, size_bytes=record.size_bytes,
                                                         sha256=record.sha256)
            offset += len(data)

    # ================================================================== JobService

    @unary(jobs_pb2.CreateJobResponse)
    async def CreateJob(self, request, grpc_context):
        def spec():
            if not request.HasField("spec"):
                raise InvalidArgument("required", field="spec")
            return jobs_wire.spec_from_proto(request.spec, self.artifacts.resolve)
        record = await self.jobs.create(spec, request.request_id)
        return jobs_pb2.CreateJobResponse(job=await _in_thread(self._job, record))

    @unary(jobs_pb2.GetJobResponse)
    async def GetJob(self, request, grpc_context):
        return jobs_pb2.GetJobResponse(job=await _in_thread(self._job, await self.jobs.get(request.job_id)))

    @unary(jobs_pb2.ListJobsResponse)
    async def ListJobs(self, request, grpc_context):
        states = tuple(jobs_wire.enum_value(jobs_pb2.JobState.DESCRIPTOR, s, "states") for s in request.states)
        kind = jobs_wire.enum_value(jobs_pb2.JobKind.DESCRIPTOR, request.kind, "kind") if request.kind else None
        records, token = await self.jobs.list(states, kind, request.page_size, request.page_token)
        jobs = await _in_thread(lambda: [self._job(r, with_result=False) for r in records])
        return jobs_pb2.ListJobsResponse(jobs=jobs, next_page_token=token)

    @unary(jobs_pb2.CancelJobResponse)
    async def CancelJob(self, request, grpc_context):
        return jobs_pb2.CancelJobResponse(job=await _in_thread(self._job, await self.jobs.cancel(request.job_id)))

    @unary(jobs_pb2.WaitJobResponse)
    async def WaitJob(self, request, grpc_context):
        timeout = request.timeout.seconds + request.timeout.nanos / 1e9 if request.HasField("timeout") else None
        record = await self.jobs.wait(request.job_id, timeout)
        return jobs_pb2.WaitJobResponse(job=await _in_thread(self._job, record))

    @streaming
    async def WatchJob(self, request, grpc_context):
        async for event, last in self.jobs.watch(request.job_id, request.after_sequence):
            yield jobs_pb2.WatchJobResponse(event=jobs_wire.event_to_proto(event), done=last)

    # ================================================================== ServingService

    @unary(serving_pb2.DeployModelResponse)
    async def DeployModel(self, request, grpc_context):
        served = await self.serving.deploy(serving_wire.deploy_request(request))
        return serving_pb2.DeployModelResponse(model=serving_wire.served_to_proto(served))

    @unary(serving_pb2.UndeployModelResponse)
    async def UndeployModel(self, request, grpc_context):
        await self.serving.undeploy(request.name)
        return serving_pb2.UndeployModelResponse()

    @unary(serving_pb2.ListServedModelsResponse)
    async def ListServedModels(self, request, grpc_context):
        models = await self.serving.list_served()
        return serving_pb2.ListServedModelsResponse(models=[serving_wire.served_to_proto(m) for m in models])

    @unary(serving_pb2.PredictResponse)
    async def Predict(self, request, grpc_context):
        predictions = await self.serving.predict(request.model, serving_wire.instances(request))
        return serving_pb2.PredictResponse(predictions=[serving_wire.prediction_to_proto(p) for p in predictions])

    @unary(serving_pb2.ReportOutcomesResponse)
    async def ReportOutcomes(self, request, grpc_context):
        return serving_pb2.ReportOutcomesResponse(**await self.serving.report_outcomes(serving_wire.outcomes(request)))

    @unary(serving_pb2.RecordEvaluationsResponse)
    async def RecordEvaluations(self, request, grpc_context):
        counts = await self.serving.record_evaluations(request.model, serving_wire.evaluation_records(request))
        return serving_pb2.RecordEvaluationsResponse(**counts)

    @unary(serving_pb2.GetModelMetricsResponse)
    async def GetModelMetrics(self, request, grpc_context):
        return serving_wire.metrics_to_proto(await self.serving.metrics(request.model))
