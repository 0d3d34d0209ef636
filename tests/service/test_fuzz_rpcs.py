"""Property-based fuzzing of every RPC of every service against a real running server.

For each of the 21 RPCs, hypothesis sends (a) messages built from the request's descriptor
with hostile values in every field, (b) a valid request with a few fields replaced by such
values (so the fuzz reaches the code behind the first lookup), and (c) raw bytes that are not
a message at all. Properties: no client mistake is ever answered INTERNAL or UNKNOWN (or
UNIMPLEMENTED, DATA_LOSS); jobs a fuzzed request happened to create are cancelled at once;
afterwards the server still answers, and the artifacts and the job that existed before are
byte-for-byte what they were.

Fast profile (default suite): FUZZ_EXAMPLES structured requests per RPC plus raw-byte ones,
derandomised. Slow profile (`-m slow`): many more, random seeds. With EQUIPRUNE_FUZZ_COUNTS
set to a path, the counts by RPC and status code are written there (bench/fuzz_counts.py
turns them into docs/bench/fuzz.md).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import Counter

import grpc
import pytest
from google.protobuf import json_format
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from equiprune.client import specs
from equiprune.client.sdk import EquipruneClient
from equiprune.engine.dataset import save_dataset
from equiprune.engine.demo_data import digits_group_dataset
from equiprune.engine.models import ArchitectureSpec, build_model, save_safetensors
from equiprune.v1 import artifacts_pb2, artifacts_pb2_grpc, jobs_pb2, jobs_pb2_grpc, serving_pb2, serving_pb2_grpc

from .fuzz_messages import message

FUZZ_EXAMPLES = int(os.environ.get("EQUIPRUNE_FUZZ_EXAMPLES", "10"))
SLOW_EXAMPLES = int(os.environ.get("EQUIPRUNE_FUZZ_SLOW_EXAMPLES", "120"))
FORBIDDEN = {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN, grpc.StatusCode.UNIMPLEMENTED,
             grpc.StatusCode.DATA_LOSS}
LONG_POLLS = {"WaitJob", "WatchJob"}
SERVICES = {"ArtifactService": artifacts_pb2, "JobService": jobs_pb2, "ServingService": serving_pb2}
CALL_TIMEOUT_S = 60
SERVED = "fuzz-served"
COUNTS: Counter = Counter()


def _rpcs() -> list[tuple[str, str, object, bool]]:
    """(service, method, request descriptor, server-streaming) for every RPC of the contract."""
    found = []
    for service_name, module in SERVICES.items():
        service = module.DESCRIPTOR.services_by_name[service_name]
        for method in service.methods:
            found.append((service_name, method.name, method.input_type, method.server_streaming))
    return found


RPCS = _rpcs()


def test_the_fuzz_covers_every_rpc() -> None:
    assert len(RPCS) == 21


@pytest.fixture(scope="module")
def seeded(server, tmp_path_factory):
    """Real things to aim at: a model, a dataset, a finished job, an open upload, a served model
    and a prediction — and a snapshot of them to compare with afterwards."""
    folder = tmp_path_factory.mktemp("fuzz")
    save_dataset(digits_group_dataset(), folder / "digits.npz")
    spec = ArchitectureSpec("small_cnn", {"num_classes": 10, "in_channels": 1, "input_size": 8, "channels": [4, 8]})
    save_safetensors(build_model(spec).eval(), spec, folder / "model.safetensors")
    with EquipruneClient(server.target, timeout=CALL_TIMEOUT_S) as client:
        dataset = client.upload_file(folder / "digits.npz", "dataset").artifact_id
        model = client.upload_file(folder / "model.safetensors", "model").artifact_id
        job = client.create_job(specs.evaluate_spec(model=model, dataset=dataset, group_by="cohort"))
        job = client.wait_job(job.job_id, timeout=300)
        assert job.state == jobs_pb2.JOB_STATE_SUCCEEDED, job
        stubs = _Stubs(server)
        upload = stubs.artifacts.StartUpload(artifacts_pb2.StartUploadRequest(
            kind=artifacts_pb2.ARTIFACT_KIND_DATASET, size_bytes=1000, sha256="0" * 64, display_name="open"),
            timeout=CALL_TIMEOUT_S).upload_id
        serving = stubs.serving
        serving.DeployModel(serving_pb2.DeployModelRequest(
            name=SERVED, artifact_id=model, group_by=["cohort"], reference_job_id=job.job_id), timeout=CALL_TIMEOUT_S)
        prediction = serving.Predict(_instance_request(SERVED), timeout=CALL_TIMEOUT_S).predictions[0].prediction_id
        state = {"dataset": dataset, "model": model, "job": job.job_id, "upload": upload, "prediction": prediction}
        state["snapshot"] = _snapshot(stubs, state)
        stubs.close()
    yield state
    if os.environ.get("EQUIPRUNE_FUZZ_COUNTS"):
        with open(os.environ["EQUIPRUNE_FUZZ_COUNTS"], "w") as out:
            json.dump({f"{rpc} {code}": n for (rpc, code), n in sorted(COUNTS.items())}, out, indent=1)


def _instance_request(model: str, values: list[float] | None = None) -> serving_pb2.PredictRequest:
    request = serving_pb2.PredictRequest(model=model)
    instance = request.instances.add(values=values or [0.5] * 64)
    instance.groups["cohort"] = "minority"
    return request


class _Stubs:
    def __init__(self, server) -> None:
        self._channel = server.channel()
        self.artifacts = artifacts_pb2_grpc.ArtifactServiceStub(self._channel)
        self.jobs = jobs_pb2_grpc.JobServiceStub(self._channel)
        self.serving = serving_pb2_grpc.ServingServiceStub(self._channel)

    def close(self) -> None:
        self._channel.close()


def _snapshot(stubs: _Stubs, state: dict) -> dict:
    artifacts = stubs.artifacts
    snapshot = {}
    for key in ("dataset", "model"):
        record = artifacts.GetArtifact(artifacts_pb2.GetArtifactRequest(artifact_id=state[key]), timeout=CALL_TIMEOUT_S)
        content = b"".join(r.data for r in artifacts.DownloadArtifact(
            artifacts_pb2.DownloadArtifactRequest(artifact_id=state[key]), timeout=CALL_TIMEOUT_S))
        snapshot[key] = (json_format.MessageToJson(record), hashlib.sha256(content).hexdigest())
    job = stubs.jobs.GetJob(jobs_pb2.GetJobRequest(job_id=state["job"]), timeout=CALL_TIMEOUT_S)
    snapshot["job"] = json_format.MessageToJson(job)
    return snapshot


def _baseline(method: str, s: dict):
    """A valid request of each RPC, aimed at the seeded things."""
    groups = {"cohort": "minority"}
    dataset_ref = artifacts_pb2.ArtifactRef(artifact_id=s["dataset"])
    model_ref = artifacts_pb2.ArtifactRef(artifact_id=s["model"])
    return {
        "StartUpload": artifacts_pb2.StartUploadRequest(kind=artifacts_pb2.ARTIFACT_KIND_DATASET, size_bytes=10,
                                                        sha256="0" * 64, display_name="fuzz"),
        "PutUploadChunk": artifacts_pb2.PutUploadChunkRequest(upload_id=s["upload"], offset=0, data=b"x"),
        "GetUpload": artifacts_pb2.GetUploadRequest(upload_id=s["upload"]),
        "FinishUpload": artifacts_pb2.FinishUploadRequest(upload_id=s["upload"]),
        "ImportArtifact": artifacts_pb2.ImportArtifactRequest(kind=artifacts_pb2.ARTIFACT_KIND_DATASET,
                                                              source=artifacts_pb2.UriSource(uri="sample:digits")),
        "GetArtifact": artifacts_pb2.GetArtifactRequest(artifact_id=s["dataset"]),
        "ListArtifacts": artifacts_pb2.ListArtifactsRequest(page_size=5),
        "DownloadArtifact": artifacts_pb2.DownloadArtifactRequest(artifact_id=s["dataset"], chunk_bytes=2**20),
        "CreateJob": jobs_pb2.CreateJobRequest(spec=jobs_pb2.JobSpec(
            kind=jobs_pb2.JOB_KIND_EVALUATE, model=model_ref, dataset=dataset_ref,
            data=jobs_pb2.DataOptions(group_by=["cohort"]))),
        "GetJob": jobs_pb2.GetJobRequest(job_id=s["job"]),
        "ListJobs": jobs_pb2.ListJobsRequest(page_size=5),
        "CancelJob": jobs_pb2.CancelJobRequest(job_id=s["job"]),
        "WaitJob": jobs_pb2.WaitJobRequest(job_id=s["job"]),
        "WatchJob": jobs_pb2.WatchJobRequest(job_id=s["job"]),
        "DeployModel": serving_pb2.DeployModelRequest(name="fuzz-other", artifact_id=s["model"], group_by=["cohort"],
                                                      reference_accuracy={"minority": 0.5}, input_shape=[1, 8, 8]),
        "UndeployModel": serving_pb2.UndeployModelRequest(name="fuzz-other"),
        "ListServedModels": serving_pb2.ListServedModelsRequest(),
        "Predict": _instance_request(SERVED),
        "ReportOutcomes": serving_pb2.ReportOutcomesRequest(
            outcomes=[serving_pb2.Outcome(prediction_id=s["prediction"], label=1)]),
        "RecordEvaluations": serving_pb2.RecordEvaluationsRequest(
            model=SERVED, records=[serving_pb2.EvaluationRecord(groups=groups, label=1, predicted_class=1)]),
        "GetModelMetrics": serving_pb2.GetModelMetricsRequest(model=SERVED),
    }[method]


def _seeds(method: str, s: dict) -> list[str]:
    seeds = [s["dataset"], s["model"], s["job"], s["upload"], s["prediction"], "cohort", "minority", "majority"]
    # The one served model stays deployed: undeploying it would be an accepted request, not a fault.
    return seeds if method == "UndeployModel" else seeds + [SERVED]


def _requests(method: str, descriptor, state: dict) -> st.SearchStrategy:
    seeds = _seeds(method, state)
    baseline = _baseline(method, state)

    def mutated(changes):
        request = type(baseline)()
        request.CopyFrom(baseline)
        request.MergeFrom(changes)
        return request

    return st.one_of(message(descriptor, seeds), message(descriptor, seeds).map(mutated))


def _call(channel: grpc.Channel, service: str, method: str, streaming: bool, payload: bytes) -> grpc.StatusCode:
    path = f"/equiprune.v1.{service}/{method}"
    try:
        if streaming:
            for _ in channel.unary_stream(path)(payload, timeout=CALL_TIMEOUT_S):
                pass
        else:
            channel.unary_unary(path)(payload, timeout=CALL_TIMEOUT_S)
        return grpc.StatusCode.OK
    except grpc.RpcError as err:
        return err.code()


def _check_and_clean_up(channel, service: str, method: str, code: grpc.StatusCode, request_bytes: bytes) -> None:
    COUNTS[(method, code.name)] += 1
    assert code not in FORBIDDEN, f"{method} answered {code.name} to {request_bytes[:300]!r}"
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        assert method in LONG_POLLS, f"{method} did not answer within {CALL_TIMEOUT_S} s"
    if method == "CreateJob" and code == grpc.StatusCode.OK:
        _cancel_created_jobs(channel)


def _cancel_created_jobs(channel) -> None:
    """A fuzzed request may be a valid job: stop it at once, it is not what is under test."""
    jobs = channel.unary_unary("/equiprune.v1.JobService/ListJobs", request_serializer=lambda m: m.SerializeToString(),
                               response_deserializer=jobs_pb2.ListJobsResponse.FromString)
    listing = jobs(jobs_pb2.ListJobsRequest(states=[jobs_pb2.JOB_STATE_QUEUED, jobs_pb2.JOB_STATE_RUNNING],
                                            page_size=100), timeout=CALL_TIMEOUT_S)
    cancel = channel.unary_unary("/equiprune.v1.JobService/CancelJob", request_serializer=lambda m: m.SerializeToString(),
                                 response_deserializer=jobs_pb2.CancelJobResponse.FromString)
    for job in listing.jobs:
        cancel(jobs_pb2.CancelJobRequest(job_id=job.job_id), timeout=CALL_TIMEOUT_S)


def _fuzz(server, seeded, service, method, descriptor, streaming, data) -> None:
    request = data.draw(_requests(method, descriptor, seeded), label="request")
    payload = request.SerializeToString()
    with server.channel() as channel:
        _check_and_clean_up(channel, service, method, _call(channel, service, method, streaming, payload), payload)


def _fuzz_raw(server, service, method, streaming, payload: bytes) -> None:
    with server.channel() as channel:
        _check_and_clean_up(channel, service, method, _call(channel, service, method, streaming, payload), payload)


_FAST = settings(max_examples=FUZZ_EXAMPLES, deadline=None, derandomize=True, database=None,
                 suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                        HealthCheck.data_too_large])
_SLOW = settings(max_examples=SLOW_EXAMPLES, deadline=None, database=None,
                 suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                        HealthCheck.data_too_large])
_IDS = [f"{method}" for _, method, _, _ in RPCS]
# Bytes that are not a valid message of any request type (a truncated varint, a bad wire type).
_UNDECODABLE = [b"\x08", b"\x0a\xff", b"\x07", b"\xff" * 11]


@pytest.mark.parametrize(("service", "method", "descriptor", "streaming"), RPCS, ids=_IDS)
@_FAST
@given(data=st.data())
def test_fuzz_fast(server, seeded, service, method, descriptor, streaming, data) -> None:
    _fuzz(server, seeded, service, method, descriptor, streaming, data)


@pytest.mark.parametrize(("service", "method", "descriptor", "streaming"), RPCS, ids=_IDS)
def test_undecodable_bytes_are_invalid_argument(server, seeded, service, method, descriptor, streaming) -> None:
    with server.channel() as channel:
        for payload in _UNDECODABLE:
            code = _call(channel, service, method, streaming, payload)
            COUNTS[(method, code.name)] += 1
            assert code == grpc.StatusCode.INVALID_ARGUMENT, f"{method}: {payload!r} answered {code.name}"


@pytest.mark.slow
@pytest.mark.parametrize(("service", "method", "descriptor", "streaming"), RPCS, ids=_IDS)
@_SLOW
@given(data=st.data())
def test_fuzz_long(server, seeded, service, method, descriptor, streaming, data) -> None:
    _fuzz(server, seeded, service, method, descriptor, streaming, data)


@pytest.mark.slow
@pytest.mark.parametrize(("service", "method", "descriptor", "streaming"), RPCS, ids=_IDS)
@_SLOW
@given(payload=st.binary(max_size=256))
def test_fuzz_raw_bytes_long(server, seeded, service, method, descriptor, streaming, payload) -> None:
    _fuzz_raw(server, service, method, streaming, payload)


def test_zz_the_server_is_healthy_and_nothing_seeded_changed(server, seeded) -> None:
    # Named to run last in this module (pytest keeps definition order; the prefix says why).
    stubs = _Stubs(server)
    try:
        assert _snapshot(stubs, seeded) == seeded["snapshot"]
        assert len(stubs.serving.Predict(_instance_request(SERVED), timeout=CALL_TIMEOUT_S).predictions) == 1
        metrics = stubs.serving.GetModelMetrics(serving_pb2.GetModelMetricsRequest(model=SERVED), timeout=CALL_TIMEOUT_S)
        assert metrics.totals.predictions >= 2
        stubs.jobs.ListJobs(jobs_pb2.ListJobsRequest(page_size=1), timeout=CALL_TIMEOUT_S)
    finally:
        stubs.close()
    scrape = _scrape(server.metrics_port)
    assert "NaN" not in scrape and "Inf" not in scrape


def _scrape(port: int) -> str:
    from urllib.request import urlopen

    with urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as response:
        return response.read().decode()
