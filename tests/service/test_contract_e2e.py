"""The language-neutral contract, over real gRPC against the real Serve application
(docs/contract.md): structured error details on unary and streaming failures, the standard
health service, server reflection v1 and v1alpha with the .proto comments, and a Node.js
client (tests/foreign/node) that drives a whole job without the Python SDK.

One module, one server: the Node run reuses the server the other checks started.
"""

from __future__ import annotations

import json
import shutil
import os
import subprocess
from pathlib import Path

import grpc
import pytest
from google.protobuf import descriptor_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2
from grpc_status import rpc_status

from equiprune.client.errors import EquipruneError, FieldViolation
from equiprune.client.sdk import EquipruneClient
from equiprune.v1 import artifacts_pb2, artifacts_pb2_grpc, jobs_pb2, jobs_pb2_grpc

ROOT = Path(__file__).resolve().parents[2]
NODE_DIR = ROOT / "tests" / "foreign" / "node"
SERVICE_COMMENT = "Compression jobs as long-running operations."

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def channel(server):
    with server.channel() as ch:
        yield ch


def _details(error: grpc.RpcError) -> dict[str, object]:
    """The unpacked google.rpc.Status details of a failed call, by message name."""
    status = rpc_status.from_call(error)  # raises when code or message disagree with the call's
    assert status is not None, "no grpc-status-details-bin trailer"
    out = {}
    for any_ in status.details:
        for cls in (error_details_pb2.BadRequest, error_details_pb2.ErrorInfo, error_details_pb2.ResourceInfo,
                    error_details_pb2.PreconditionFailure):
            if any_.Is(cls.DESCRIPTOR):
                out[cls.DESCRIPTOR.name] = message = cls()
                any_.Unpack(message)
    return out


def test_a_refused_unary_call_carries_a_bad_request(channel):
    with pytest.raises(grpc.RpcError) as caught:
        jobs_pb2_grpc.JobServiceStub(channel).GetJob(jobs_pb2.GetJobRequest(job_id="nope"), timeout=30)
    error = caught.value
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and error.details().startswith("job_id: ")
    details = _details(error)
    [violation] = details["BadRequest"].field_violations
    assert violation.field == "job_id" and violation.description.startswith("'nope' is not a job id")
    assert details["ErrorInfo"].reason == "INVALID_ARGUMENT" and details["ErrorInfo"].domain == "equiprune.v1"


def test_a_refused_stream_carries_it_too(channel):
    """Serve drops a failed stream's trailing metadata; rpc/proxy_status.py restores it."""
    stub = artifacts_pb2_grpc.ArtifactServiceStub(channel)
    with pytest.raises(grpc.RpcError) as caught:
        list(stub.DownloadArtifact(artifacts_pb2.DownloadArtifactRequest(artifact_id="x", chunk_bytes=1), timeout=30))
    error = caught.value
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "\u2063" not in error.details() and error.details().startswith("chunk_bytes: must be")
    [violation] = _details(error)["BadRequest"].field_violations
    assert violation.field == "chunk_bytes"


def test_the_sdk_exposes_the_field_violations(server):
    with EquipruneClient(server.target, timeout=30) as client, pytest.raises(EquipruneError) as caught:
        client.get_job("nope")
    error = caught.value
    assert error.field == "job_id" and error.reason == "INVALID_ARGUMENT"
    assert error.field_violations == (FieldViolation("job_id", error.problem),)


def test_health_check_and_watch(channel):
    health = health_pb2_grpc.HealthStub(channel)
    for service in ("", "equiprune.v1.ArtifactService", "equiprune.v1.JobService", "equiprune.v1.ServingService"):
        answer = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=30)
        assert answer.status == health_pb2.HealthCheckResponse.SERVING, service
    with pytest.raises(grpc.RpcError) as caught:
        health.Check(health_pb2.HealthCheckRequest(service="no.such.Service"), timeout=30)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    watch = health.Watch(health_pb2.HealthCheckRequest(service="equiprune.v1.JobService"), timeout=30)
    assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
    watch.cancel()


@pytest.mark.parametrize("version", ["v1", "v1alpha"])
def test_reflection_serves_the_documented_descriptors(channel, version):
    # v1 and v1alpha share every message and field number: v1alpha's classes speak both.
    info = channel.stream_stream(f"/grpc.reflection.{version}.ServerReflection/ServerReflectionInfo",
                                 request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
                                 response_deserializer=reflection_pb2.ServerReflectionResponse.FromString)
    requests = [reflection_pb2.ServerReflectionRequest(list_services=""),
                reflection_pb2.ServerReflectionRequest(file_containing_symbol="equiprune.v1.JobService")]
    listed, found = list(info(iter(requests), timeout=30))
    names = {s.name for s in listed.list_services_response.service}
    assert {"equiprune.v1.JobService", "grpc.health.v1.Health", f"grpc.reflection.{version}.ServerReflection"} <= names
    files = [descriptor_pb2.FileDescriptorProto.FromString(raw)
             for raw in found.file_descriptor_response.file_descriptor_proto]
    jobs_file = next(f for f in files if f.name == "equiprune/v1/jobs.proto")
    assert {"google/protobuf/duration.proto", "equiprune/v1/artifacts.proto"} <= {f.name for f in files}
    comments = [loc.leading_comments for loc in jobs_file.source_code_info.location]
    assert any(SERVICE_COMMENT in c for c in comments)


def _node_missing() -> str | None:
    if shutil.which("node") is None:
        return "node is not installed"
    if not (NODE_DIR / "node_modules" / "@grpc" / "grpc-js").is_dir():
        return "tests/foreign/node/node_modules is absent: run `npm ci --prefix tests/foreign/node`"
    return None


@pytest.fixture(scope="module")
def fallback_model(server, tmp_path_factory):
    """An untrained model of the same architecture: lets the Node run evaluate even when its
    own training fails, so one failure does not hide the rest."""
    from equiprune.engine.models.io import save_safetensors
    from equiprune.engine.models.registry import ArchitectureSpec, build_model

    spec = ArchitectureSpec("small_cnn", {"num_classes": 10, "in_channels": 1, "input_size": 8})
    path = tmp_path_factory.mktemp("fallback") / "untrained.safetensors"
    save_safetensors(build_model(spec).eval(), spec, path)
    with EquipruneClient(server.target, timeout=60) as client:
        return client.upload_file(path, "model").artifact_id


@pytest.mark.skipif(_node_missing() is not None, reason=_node_missing() or "")
def test_a_node_client_drives_a_whole_job(server, fallback_model):
    google_protos = Path(status_pb2.__file__).parents[2]  # site-packages: google/rpc/*.proto
    run = subprocess.run(["node", str(NODE_DIR / "drive_job.js"), "--target", server.target,
                          "--proto-root", str(ROOT / "proto"), "--google-protos", str(google_protos),
                          "--fallback-model", fallback_model],
                         capture_output=True, text=True, timeout=900, check=False,
                         env={**os.environ, "EQUIPRUNE_TOKEN": server.admin_token})
    assert run.returncode == 0, run.stderr
    summary = json.loads(run.stdout.strip().splitlines()[-1])

    assert summary["dataset"]["artifact_id"].startswith("art-")
    assert summary["evaluate"]["state"] == "JOB_STATE_SUCCEEDED", summary["evaluate"]
    assert summary["evaluate"]["groups"] and summary["evaluate"]["overall_accuracy"] is not None
    assert summary["health"] == "SERVING"
    bad = summary["bad_request"]
    assert bad["code"] == "INVALID_ARGUMENT"
    assert bad["status"]["field_violations"][0]["field"] == "job_id", bad
    unauthenticated = summary["no_token"]
    assert unauthenticated["code"] == "UNAUTHENTICATED" and "Bearer" in unauthenticated["details"], unauthenticated

    # Training through Node, kwargs as JSON text, and an old client's object refused loudly.
    train = summary["train"]
    assert train.get("state") == "JOB_STATE_SUCCEEDED" and train.get("model"), train
    assert json.loads(train["echoed_kwargs"]) == train["sent_kwargs"]
    assert not summary.get("used_fallback_model")
    refused = summary["object_kwargs"]
    assert refused["code"] == "INVALID_ARGUMENT", refused
    assert refused["status"]["field_violations"][0]["field"] == "spec.train.architecture_kwargs", refused
