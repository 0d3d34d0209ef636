"""EquipruneClient: the typed SDK over the ArtifactService, JobService and ServingService gRPC API.

    with EquipruneClient("127.0.0.1:9000") as client:
        data = client.import_uri("sample:digits", kind="dataset")
        job = client.create_job(specs.prune_and_finetune_spec(model=model_id, dataset=data.artifact_id,
                                                              group_by=["cohort"], sparsity=0.9))
        for event in client.watch(job.job_id):
            print(event.progress.phase)
        job = client.get_job(job.job_id)
        client.deploy_model("digits", model_id, ["cohort"], reference_job_id=job.job_id)
        predictions = client.predict("digits", [(pixels, {"cohort": "minority"})])

Every unary call has a deadline (`timeout`, overridable per call) and is retried with
exponential backoff and jitter on UNAVAILABLE (and on DEADLINE_EXCEEDED for reads: see retry.py).
Refusals surface as EquipruneError(code, message, field). Streams (`watch`, `download`)
resume from the last sequence or offset seen; they have no overall deadline, since a job or a
large model may legitimately take hours. The serving calls live in serving.py (ServingCalls),
with what their retries may cost: Predict is not idempotent.
"""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path
from typing import Iterable, Iterator

import grpc

from equiprune.v1 import artifacts_pb2, artifacts_pb2_grpc, jobs_pb2, jobs_pb2_grpc, serving_pb2_grpc, tenants_pb2_grpc

from .credentials import find_token, open_channel
from .errors import EquipruneError, SpecError
from .retry import RETRY_ALWAYS, RETRY_READS, ResumeBudget, RetryPolicy, call_with_retry
from .serving import ServingCalls
from .tenants import TenantCalls
from .specs import ARTIFACT_KINDS, JOB_KINDS, JOB_STATES
from .transfers import ProgressCallback, download_file, upload_file

DEFAULT_TARGET = "127.0.0.1:9000"
# Calls that may copy or validate a whole model on the server (FinishUpload, ImportArtifact,
# CreateJob with URI references) get at least this deadline unless the caller sets one.
SLOW_CALL_SECONDS = 600.0
# WaitJob holds a call open at most this long; longer waits loop.
WAIT_SLICE_SECONDS = 60.0
# Downloads stream chunks of up to 4 MiB plus framing: gRPC's default 4 MiB receive limit is
# too small for them.
_MESSAGE_BYTES = 64 * 1024 * 1024
_CHANNEL_OPTIONS = [("grpc.max_receive_message_length", _MESSAGE_BYTES),
                    ("grpc.max_send_message_length", _MESSAGE_BYTES)]


def checked_timeout(timeout: float) -> float:
    """A call deadline in seconds, refused (SpecError) unless > 0."""
    if timeout <= 0:
        raise SpecError("timeout", f"must be > 0 seconds, got {timeout}")
    return timeout


class EquipruneClient(ServingCalls, TenantCalls):
    """A connection to an equiprune server. Use as a context manager, or call close()."""

    def __init__(self, target: str = DEFAULT_TARGET, *, timeout: float = 30.0, retries: int = 5,
                 backoff: float = 0.2, max_backoff: float = 5.0, channel: grpc.Channel | None = None,
                 token: str | None = None, token_file: str | os.PathLike | None = None,
                 tls_ca: str | os.PathLike | None = None) -> None:
        """`token`/`token_file`: who this client is (else found as credentials.py says);
        `tls_ca`: connect over TLS, trusting this CA (PEM file)."""
        self.target = target
        self.timeout = checked_timeout(timeout)
        self.policy = RetryPolicy(retries=retries, backoff=backoff, max_backoff=max_backoff)
        self._owns_channel = channel is None
        self._channel = channel if channel is not None else open_channel(
            target, _CHANNEL_OPTIONS, token=find_token(target, token, token_file), tls_ca=tls_ca)
        self._artifacts = artifacts_pb2_grpc.ArtifactServiceStub(self._channel)
        self._jobs = jobs_pb2_grpc.JobServiceStub(self._channel)
        self._serving = serving_pb2_grpc.ServingServiceStub(self._channel)
        self._tenants = tenants_pb2_grpc.TenantServiceStub(self._channel)
        self._sleep = time.sleep  # between retries; injectable so that tests need not wait

    # ------------------------------------------------------------ life cycle

    def close(self) -> None:
        """Close the channel (only when this client opened it)."""
        if self._owns_channel:
            self._channel.close()

    def __enter__(self) -> "EquipruneClient":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def _unary(self, method, request, *, timeout: float | None = None, read: bool = False):
        """One unary call with a deadline, retried per the policy (see retry.py)."""
        deadline = self.timeout if timeout is None else timeout
        return call_with_retry(lambda: method(request, timeout=deadline), self.policy,
                               retry_codes=RETRY_READS if read else RETRY_ALWAYS, sleep=self._sleep)

    def _slow(self, timeout: float | None) -> float:
        """The deadline of a call that may move or validate a whole model on the server."""
        return timeout if timeout is not None else max(self.timeout, SLOW_CALL_SECONDS)

    def _pages(self, method, request, items: str, timeout: float | None) -> Iterator:
        """Every item of a paginated List call, fetching pages lazily."""
        while True:
            page = self._unary(method, request, timeout=timeout, read=True)
            yield from getattr(page, items)
            if not page.next_page_token:
                return
            request.page_token = page.next_page_token

    # ------------------------------------------------------------ artifacts

    def upload_file(self, path: str | os.PathLike, kind: str | int, display_name: str | None = None,
                    chunk_bytes: int | None = None,
                    on_progress: ProgressCallback | None = None) -> artifacts_pb2.Artifact:
        """Upload a file as an artifact (`kind`: model, dataset or report), resuming after
        interruptions. Chunks are min(chunk_bytes, the server's max_chunk_bytes)."""
        return upload_file(self, path, ARTIFACT_KINDS.value(kind, "kind"), display_name, chunk_bytes, on_progress)

    def import_uri(self, uri: str, kind: str | int, sha256: str = "", display_name: str = "", *,
                   timeout: float | None = None) -> artifacts_pb2.Artifact:
        """Have the server import content from a URI (sha256 required except for `sample:`)."""
        request = artifacts_pb2.ImportArtifactRequest(
            kind=ARTIFACT_KINDS.value(kind, "kind"), source=artifacts_pb2.UriSource(uri=uri, sha256=sha256.lower()),
            display_name=display_name)
        return self._unary(self._artifacts.ImportArtifact, request, timeout=self._slow(timeout)).artifact

    def get_artifact(self, artifact_id: str, *, timeout: float | None = None) -> artifacts_pb2.Artifact:
        request = artifacts_pb2.GetArtifactRequest(artifact_id=artifact_id)
        return self._unary(self._artifacts.GetArtifact, request, timeout=timeout, read=True).artifact

    def list_artifacts(self, kind: str | int | None = None, *, page_size: int = 0,
                       timeout: float | None = None) -> Iterator[artifacts_pb2.Artifact]:
        """Every stored artifact (of `kind`, when given), newest first, fetching pages lazily."""
        request = artifacts_pb2.ListArtifactsRequest(
            kind=ARTIFACT_KINDS.value(kind, "kind") if kind is not None else 0, page_size=page_size)
        return self._pages(self._artifacts.ListArtifacts, request, "artifacts", timeout)

    def download(self, artifact_id: str, path: str | os.PathLike, on_progress: ProgressCallback | None = None, *,
                 chunk_bytes: int = 0) -> artifacts_pb2.Artifact:
        """Download an artifact to `path` (into it, under the artifact's display name, when it
        is a directory), verified (size, sha256) and renamed into place atomically; returns the
        artifact's metadata. A mismatch raises DATA_LOSS."""
        return download_file(self, artifact_id, path, on_progress, chunk_bytes)[0]

    def download_to(self, artifact_id: str, path: str | os.PathLike, on_progress: ProgressCallback | None = None,
                    *, chunk_bytes: int = 0) -> tuple[artifacts_pb2.Artifact, Path]:
        """Like download, also returning the path of the file written."""
        return download_file(self, artifact_id, path, on_progress, chunk_bytes)

    # ------------------------------------------------------------ jobs

    def create_job(self, spec: jobs_pb2.JobSpec, request_id: str | None = None, *,
                   timeout: float | None = None) -> jobs_pb2.Job:
        """Start a job. Without a request_id one is generated, so automatic retries (and the
        caller's own, when it passes the same id) can never start the job twice."""
        request = jobs_pb2.CreateJobRequest(spec=spec, request_id=request_id or f"req-{uuid.uuid4().hex}")
        imports = any(ref.WhichOneof("source") == "uri" for ref in (spec.model, spec.dataset))
        return self._unary(self._jobs.CreateJob, request, timeout=self._slow(timeout) if imports else timeout).job

    def get_job(self, job_id: str, *, timeout: float | None = None) -> jobs_pb2.Job:
        return self._unary(self._jobs.GetJob, jobs_pb2.GetJobRequest(job_id=job_id), timeout=timeout, read=True).job

    def list_jobs(self, states: Iterable[str | int] = (), kind: str | int | None = None, *, page_size: int = 0,
                  timeout: float | None = None) -> Iterator[jobs_pb2.Job]:
        """Every job (in `states`, of `kind`, when given), newest first, fetching pages lazily.
        Listed jobs carry no result: get_job returns it."""
        request = jobs_pb2.ListJobsRequest(
            states=[JOB_STATES.value(state, "states") for state in states],
            kind=JOB_KINDS.value(kind, "kind") if kind is not None else 0, page_size=page_size)
        return self._pages(self._jobs.ListJobs, request, "jobs", timeout)

    def cancel_job(self, job_id: str, *, timeout: float | None = None) -> jobs_pb2.Job:
        """Cancel a job; cancelling a finished job changes nothing."""
        return self._unary(self._jobs.CancelJob, jobs_pb2.CancelJobRequest(job_id=job_id), timeout=timeout).job

    def wait_job(self, job_id: str, timeout: float | None = None) -> jobs_pb2.Job:
        """Wait until the job is done, or `timeout` seconds pass (None: forever). Returns the
        job either way: check `job.done`."""
        give_up = None if timeout is None else time.monotonic() + timeout
        while True:
            remaining = WAIT_SLICE_SECONDS if give_up is None else give_up - time.monotonic()
            if remaining < 0.001:
                # WaitJob reads a zero timeout as "60 s": ask for the state instead.
                return self.get_job(job_id)
            wait = min(WAIT_SLICE_SECONDS, remaining)
            request = jobs_pb2.WaitJobRequest(job_id=job_id)
            request.timeout.FromMilliseconds(max(1, int(wait * 1000)))
            job = self._unary(self._jobs.WaitJob, request, timeout=wait + self.timeout, read=True).job
            if job.done:
                return job

    def watch(self, job_id: str, after_sequence: int = 0) -> Iterator[jobs_pb2.JobEvent]:
        """The job's events after `after_sequence`, until it finishes. An interrupted stream is
        resumed from the last sequence seen; no event is yielded twice."""
        last = after_sequence
        budget = ResumeBudget(self.policy, sleep=self._sleep)
        while True:
            stream = self._jobs.WatchJob(jobs_pb2.WatchJobRequest(job_id=job_id, after_sequence=last))
            before = last
            try:
                for reply in stream:
                    if reply.event.sequence > last:
                        last = reply.event.sequence
                        budget.progressed()
                        yield reply.event
                    if reply.done:
                        return
            except grpc.RpcError as error:
                budget.failed(error)
                continue
            finally:
                stream.cancel()
            # The stream ended without its `done` event (a proxy restart, say).
            if self.get_job(job_id).done and last == before:
                return
            if last == before:
                budget.failed(_EndedEarly())


class _EndedEarly(grpc.RpcError):
    """Stands for a watch stream that closed cleanly before the job finished."""

    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.UNAVAILABLE

    def details(self) -> str:
        return "the watch stream ended before the job finished"


__all__ = ["DEFAULT_TARGET", "EquipruneClient", "EquipruneError"]
