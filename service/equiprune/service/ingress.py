"""The gRPC ingress: a Serve deployment whose methods are the RPCs of ArtifactService and
JobService. Thin on purpose: it turns requests into service types (convert.py), asks the
artifact store or the job manager, and turns answers back into responses. Every exception
leaves through `_status`, the one place that sets a gRPC status, so no stack trace ever
reaches a client. Blocking work (file I/O, content validation) runs in threads: the
replica's event loop keeps serving other calls, and it never waits on training.
"""

from __future__ import annotations

import asyncio
import functools
import re
import shutil
import time
from collections.abc import Callable

import grpc
from ray import serve
from ray.exceptions import RayTaskError
from ray.serve.handle import DeploymentHandle

from equiprune.v1 import artifacts_pb2, jobs_pb2, serving_pb2

from . import convert
from .grpc_servicers import UndecodableRequest
from .errors import InvalidArgument, ServiceError, client_status, naming
from .samples import is_sample, write_sample
from .settings import ServerSettings
from .specs import JobSpecModel, check_sections, engine_configs
from .sandbox import sandbox_from_settings
from .store import artifact_store
from .store.artifacts import sha256_of_file
from .validation import SandboxValidator, artifact_of_kind, check_job_fit, described_list
from . import serving_convert
from .rpc import status as rpc_status
from .rpc.health import HealthMixin

JOB_ID = re.compile(r"^job-[0-9a-f]{16}$")
REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
DEFAULT_WAIT_S, MAX_WAIT_S = 60.0, 600.0
WATCH_POLL_S = 15.0
SERVED_CACHE_S = 2.0
MAX_DOWNLOAD_CHUNK = 4 * 1024 * 1024 - 64 * 1024  # stay below gRPC's default 4 MiB message limit
# Smaller chunks would let one request make the server send a message per byte (the fuzzing
# found a 1-byte chunk size streaming a 0.5 MB dataset for over a minute).
MIN_DOWNLOAD_CHUNK = 64 * 1024


def _status(exc: BaseException, context) -> None:
    """Set the call's status from an exception (unwrapping errors raised in another replica)."""
    if isinstance(exc, RayTaskError) and isinstance(getattr(exc, "cause", None), BaseException):
        exc = exc.cause
    # Code, readable details and the google.rpc.Status trailer (rpc/status.py).
    rpc_status.apply(context, client_status(exc))


def _decoded(request):
    """The request, unless Serve's proxy could not decode its bytes (grpc_servicers)."""
    if isinstance(request, UndecodableRequest):
        raise InvalidArgument(f"the bytes received are not a valid {request.message_type} message "
                              f"({request.problem})", field="request")
    return request


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


def _require_job_id(job_id: str) -> str:
    return _require_job_id_as(job_id, "job_id")


def _require_job_id_as(job_id: str, field: str) -> str:
    if not JOB_ID.match(job_id):
        raise InvalidArgument(f"{job_id!r} is not a job id (job- followed by 16 hex digits)", field=field)
    return job_id


@serve.deployment(name="Ingress", max_ongoing_requests=1000, ray_actor_options={"num_cpus": 0})
class Ingress(HealthMixin):
    def __init__(self, manager: DeploymentHandle, settings: dict, model_server: DeploymentHandle,
                 monitor: DeploymentHandle) -> None:
        self.settings = ServerSettings.model_validate(settings)
        self.manager = manager
        self.model_server = model_server
        self.monitor = monitor
        self._served_cache: dict[str, tuple[float, dict]] = {}
        s = self.settings
        self.artifacts = artifact_store(s)
        self.sandbox = sandbox_from_settings(s)
        # Every upload and import is validated in a sandboxed worker, never in this process.
        self.validate = SandboxValidator(self.sandbox, s.sandbox_validation_timeout_s)
        (s.data_dir / "samples").mkdir(parents=True, exist_ok=True)
        # Resume the jobs a previous run left unfinished now, not at the first request.
        self._resumed = manager.ready.remote()

    # ================================================================== ArtifactService

    @unary(artifacts_pb2.StartUploadResponse)
    async def StartUpload(self, request, grpc_context):
        upload = await asyncio.to_thread(self.artifacts.start_upload, convert.artifact_kind(request.kind),
                                         request.display_name, request.size_bytes, request.sha256)
        return artifacts_pb2.StartUploadResponse(upload_id=upload.upload_id,
                                                 max_chunk_bytes=self.settings.max_chunk_bytes)

    @unary(artifacts_pb2.PutUploadChunkResponse)
    async def PutUploadChunk(self, request, grpc_context):
        committed = await asyncio.to_thread(self.artifacts.put_chunk, request.upload_id, request.offset, request.data)
        return artifacts_pb2.PutUploadChunkResponse(committed_bytes=committed)

    @unary(artifacts_pb2.GetUploadResponse)
    async def GetUpload(self, request, grpc_context):
        u = await asyncio.to_thread(self.artifacts.get_upload, request.upload_id)
        return artifacts_pb2.GetUploadResponse(upload=artifacts_pb2.Upload(
            upload_id=u.upload_id, kind=convert._number(convert.ARTIFACT_KINDS, u.kind), size_bytes=u.size_bytes,
            committed_bytes=u.committed_bytes, sha256=u.sha256))

    @unary(artifacts_pb2.FinishUploadResponse)
    async def FinishUpload(self, request, grpc_context):
        record = await asyncio.to_thread(self.artifacts.finish_upload, request.upload_id, self.validate)
        return artifacts_pb2.FinishUploadResponse(artifact=convert.artifact_to_proto(record))

    @unary(artifacts_pb2.ImportArtifactResponse)
    async def ImportArtifact(self, request, grpc_context):
        kind = convert.artifact_kind(request.kind)
        if not request.HasField("source") or not request.source.uri:
            raise InvalidArgument("required: the URI to import", field="source.uri")
        record = await asyncio.to_thread(self._import, kind, request.source, request.display_name, "source")
        return artifacts_pb2.ImportArtifactResponse(artifact=convert.artifact_to_proto(record))

    def _import(self, kind: str, source: artifacts_pb2.UriSource, display_name: str, field: str):
        """Import a URI (or write a built-in sample), reusing an identical stored artifact so a
        retried request resolves to the same id."""
        if is_sample(source.uri):
            if kind != "dataset":
                raise InvalidArgument("sample: URIs name datasets; use kind DATASET", field=f"{field}.uri")
            path = write_sample(source.uri, str(self.settings.data_dir / "samples"))
            try:
                existing = self.artifacts.find(kind, sha256_of_file(str(path)))
                return existing or self.artifacts.put_file(str(path), kind, display_name or path.name,
                                                           source=source.uri,
                                                           description=self.validate(str(path), kind))
            finally:
                shutil.rmtree(path.parent, ignore_errors=True)
        try:
            if not source.sha256:
                raise InvalidArgument("required for imports: the content's sha256", field="source.sha256")
            # The policy first: a URI the server may not read is refused even when the content
            # is already stored.
            self.artifacts.imports.check(source.uri)
            existing = self.artifacts.find(kind, source.sha256.lower())
            if existing is not None:
                return existing
            return self.artifacts.import_uri(kind, source.uri, source.sha256, display_name, validate=self.validate)
        except ServiceError as err:
            # The store names `source.*`; in a job spec the same fields are `spec.dataset.uri.*`.
            if field != "source" and err.field and err.field.startswith("source."):
                raise type(err)(err.message, field=field + err.field[len("source"):]) from None
            raise

    @unary(artifacts_pb2.GetArtifactResponse)
    async def GetArtifact(self, request, grpc_context):
        record = await asyncio.to_thread(self.artifacts.get, request.artifact_id)
        return artifacts_pb2.GetArtifactResponse(artifact=convert.artifact_to_proto(record))

    @unary(artifacts_pb2.ListArtifactsResponse)
    async def ListArtifacts(self, request, grpc_context):
        kind = convert.ARTIFACT_KINDS.get(request.kind) if request.kind else None
        if request.kind and kind is None:
            raise InvalidArgument(f"unknown value {request.kind}", field="kind")
        records, token = await asyncio.to_thread(self.artifacts.list, kind, _page_size(request.page_size, 100),
                                                 request.page_token)
        return artifacts_pb2.ListArtifactsResponse(artifacts=[convert.artifact_to_proto(r) for r in records],
                                                   next_page_token=token)

    @streaming
    async def DownloadArtifact(self, request, grpc_context):
        if request.chunk_bytes != 0 and not MIN_DOWNLOAD_CHUNK <= request.chunk_bytes <= MAX_DOWNLOAD_CHUNK:
            raise InvalidArgument(f"must be 0 (1 MiB) or in [{MIN_DOWNLOAD_CHUNK}, {MAX_DOWNLOAD_CHUNK}]",
                                  field="chunk_bytes")
        record = await asyncio.to_thread(self.artifacts.get, request.artifact_id)
        chunks = self.artifacts.read_chunks(record.artifact_id, request.offset, request.chunk_bytes or 1024 * 1024)
        offset = request.offset
        while (data := await asyncio.to_thread(next, chunks, None)) is not None:
            yield artifacts_pb2.DownloadArtifactResponse(offset=offset, data=data, size_bytes=record.size_bytes,
                                                         sha256=record.sha256)
            offset += len(data)

    # ================================================================== JobService

    @unary(jobs_pb2.CreateJobResponse)
    async def CreateJob(self, request, grpc_context):
        if request.request_id and not REQUEST_ID.match(request.request_id):
            raise InvalidArgument("at most 128 characters of A-Z a-z 0-9 . _ : -", field="request_id")
        if not request.HasField("spec"):
            raise InvalidArgument("required", field="spec")
        spec = await asyncio.to_thread(self._validated_spec, request.spec)
        record = await self.manager.create.remote(spec.kind, spec.to_json(), request.request_id or None)
        return jobs_pb2.CreateJobResponse(job=self._job(record))

    def _validated_spec(self, pb: jobs_pb2.JobSpec) -> JobSpecModel:
        spec = convert.spec_from_proto(pb, self._resolve)
        check_sections(spec)
        dataset = artifact_of_kind(self.artifacts, spec.dataset, "dataset", "spec.dataset")
        model = artifact_of_kind(self.artifacts, spec.model, "model", "spec.model") if spec.model is not None else None
        attributes = described_list(dataset.description, "attributes")
        for name in spec.data.group_by:
            if name not in attributes:
                raise InvalidArgument(f"the dataset has no attribute {name!r}; its attributes: {', '.join(attributes)}",
                                      field="spec.data.group_by")
        engine_configs(spec, described_list(dataset.description, "splits"))
        check_job_fit(spec, model.description if model is not None else None, dataset.description,
                      self.sandbox.config.engine_model_limits())
        return spec

    def _resolve(self, ref, field: str) -> str | None:
        which = ref.WhichOneof("source")
        if which is None:
            return None
        if which == "artifact_id":
            with naming(f"{field}.artifact_id"):
                return self.artifacts.get(ref.artifact_id).artifact_id
        kind = "model" if field == "spec.model" else "dataset"
        return self._import(kind, ref.uri, "", f"{field}.uri").artifact_id

    @unary(jobs_pb2.GetJobResponse)
    async def GetJob(self, request, grpc_context):
        record = await self.manager.get.remote(_require_job_id(request.job_id))
        return jobs_pb2.GetJobResponse(job=self._job(record))

    @unary(jobs_pb2.ListJobsResponse)
    async def ListJobs(self, request, grpc_context):
        states = tuple(convert.job_state(s, "states") for s in request.states)
        kind = convert.job_kind(request.kind) if request.kind else None
        records, token = await self.manager.list.remote(states, kind, _page_size(request.page_size, 50),
                                                        request.page_token)
        return jobs_pb2.ListJobsResponse(jobs=[self._job(r, with_result=False) for r in records],
                                         next_page_token=token)

    @unary(jobs_pb2.CancelJobResponse)
    async def CancelJob(self, request, grpc_context):
        record = await self.manager.cancel.remote(_require_job_id(request.job_id))
        return jobs_pb2.CancelJobResponse(job=self._job(record))

    @unary(jobs_pb2.WaitJobResponse)
    async def WaitJob(self, request, grpc_context):
        timeout = convert.duration_seconds(request.timeout) if request.HasField("timeout") else 0.0
        if timeout < 0 or timeout > MAX_WAIT_S:
            raise InvalidArgument(f"must be between 0 and {MAX_WAIT_S:.0f} s", field="timeout")
        record = await self.manager.wait.remote(_require_job_id(request.job_id), timeout or DEFAULT_WAIT_S)
        return jobs_pb2.WaitJobResponse(job=self._job(record))

    @streaming
    async def WatchJob(self, request, grpc_context):
        job_id = _require_job_id(request.job_id)
        if request.after_sequence < 0:
            raise InvalidArgument("must not be negative", field="after_sequence")
        after = request.after_sequence
        while True:
            events, done = await self.manager.events.remote(job_id, after, WATCH_POLL_S)
            for i, event in enumerate(events):
                last = done and i == len(events) - 1
                yield jobs_pb2.WatchJobResponse(event=convert.event_to_proto(event), done=last)
                after = event.sequence
            if done:
                return

    # ================================================================== ServingService

    @unary(serving_pb2.DeployModelResponse)
    async def DeployModel(self, request, grpc_context):
        served = await asyncio.to_thread(serving_convert.check_deploy_request, request, self.artifacts)
        if request.reference_job_id:
            with naming("reference_job_id"):
                job = await self.manager.get.remote(_require_job_id_as(request.reference_job_id, "reference_job_id"))
            served = serving_convert.with_job_reference(served, job, self.artifacts)
        served = serving_convert.complete(served)
        served = await asyncio.to_thread(self._probed, served)
        self._served_cache.pop(served["name"], None)
        return serving_pb2.DeployModelResponse(model=serving_convert.served_to_proto(await self.monitor.deploy.remote(served)))

    def _probed(self, served: dict) -> dict:
        """Run the model (and its shadow) on one zero instance of the declared shape, in the
        sandbox: a shape the model cannot take is refused now, not at the first Predict."""
        widths = {}
        for key in ("artifact_id", "shadow_artifact_id"):
            if served.get(key):
                try:
                    # With the serving limits: a model that deploys must also fit where it will run.
                    widths[key] = self.sandbox.run("probe", {"input_shape": served["input_shape"]},
                                                   {"model": self.artifacts.local_path(served[key])},
                                                   purpose="serving",
                                                   timeout_s=self.settings.sandbox_validation_timeout_s).get("outputs")
                except ServiceError as refusal:
                    # A shape the model cannot take names input_shape; a model that will not load, the model.
                    if refusal.field == "input_shape" or refusal.code == "INTERNAL":
                        raise
                    raise type(refusal)(refusal.message, field=key) from None
        return serving_convert.with_output_width(served, widths)

    @unary(serving_pb2.UndeployModelResponse)
    async def UndeployModel(self, request, grpc_context):
        await self.monitor.undeploy.remote(request.name)
        self._served_cache.pop(request.name, None)
        return serving_pb2.UndeployModelResponse()

    @unary(serving_pb2.ListServedModelsResponse)
    async def ListServedModels(self, request, grpc_context):
        models = await self.monitor.list_served.remote()
        return serving_pb2.ListServedModelsResponse(models=[serving_convert.served_to_proto(m) for m in models])

    async def _served(self, name: str) -> dict:
        """The served model, cached for SERVED_CACHE_S: a Predict then costs two hops, not three.
        A deploy or undeploy through another ingress replica shows here within that time."""
        now = time.monotonic()
        cached = self._served_cache.get(name)
        if cached is not None and cached[0] > now:
            return cached[1]
        served = await self.monitor.served.remote(name)
        self._served_cache[name] = (now + SERVED_CACHE_S, served)
        return served

    @unary(serving_pb2.PredictResponse)
    async def Predict(self, request, grpc_context):
        served = await self._served(request.model)
        inputs, groups = serving_convert.check_instances(request, served)
        calls = [self._probabilities(served["artifact_id"], inputs, served["input_shape"])]
        if served.get("shadow_artifact_id"):
            calls.append(self._probabilities(served["shadow_artifact_id"], inputs, served["input_shape"]))
        outputs = await asyncio.gather(*calls)
        predictions = serving_convert.predictions(request.model, outputs[0], outputs[1] if len(outputs) > 1 else None)
        await self.monitor.record_predictions.remote(request.model, serving_convert.prediction_items(
            predictions, groups, outputs[0]))
        return serving_pb2.PredictResponse(predictions=predictions)

    async def _probabilities(self, artifact_id: str, inputs: list, shape: list[int]):
        return await self.model_server.options(multiplexed_model_id=artifact_id).predict.remote(inputs, shape)

    @unary(serving_pb2.ReportOutcomesResponse)
    async def ReportOutcomes(self, request, grpc_context):
        items = serving_convert.check_outcomes(request)
        counts = await self.monitor.record_outcomes.remote(items)
        return serving_pb2.ReportOutcomesResponse(**counts)

    @unary(serving_pb2.RecordEvaluationsResponse)
    async def RecordEvaluations(self, request, grpc_context):
        records = serving_convert.check_evaluations(request)
        counts = await self.monitor.record_evaluations.remote(request.model, records)
        return serving_pb2.RecordEvaluationsResponse(**counts)

    @unary(serving_pb2.GetModelMetricsResponse)
    async def GetModelMetrics(self, request, grpc_context):
        if not request.model:
            raise InvalidArgument("required", field="model")
        answer = await self.monitor.metrics.remote(request.model)
        return serving_convert.metrics_to_proto(answer)

    def _job(self, record, *, with_result: bool = True) -> jobs_pb2.Job:
        return convert.job_to_proto(record, self.artifacts.get, with_result=with_result)


def _page_size(value: int, default: int) -> int:
    if value < 0 or value > 1000:
        raise InvalidArgument(f"must be between 0 and 1000, got {value}", field="page_size")
    return value or default
