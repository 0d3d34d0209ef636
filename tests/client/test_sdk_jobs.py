"""The SDK's unary calls, retries, errors, and job following (wait, watch)."""

from __future__ import annotations

import time

import grpc
import pytest

from equiprune.client import specs
from equiprune.client.errors import EquipruneError
from equiprune.client.sdk import EquipruneClient
from equiprune.v1 import jobs_pb2


def _spec(**overrides):
    args = dict(model="art-00000000", dataset="sample:digits", group_by=["cohort"], sparsity=0.9, epochs=2)
    args.update(overrides)
    return specs.prune_and_finetune_spec(**args)


@pytest.fixture
def model_id(server):
    return server.artifacts.store(1, b"weights", "dense.safetensors", "upload").artifact_id


def test_unavailable_is_retried_then_succeeds(server, client):
    server.faults.fail("ImportArtifact", times=client.policy.retries)
    artifact = client.import_uri("sample:digits", "dataset")
    assert artifact.artifact_id.startswith("art-")
    assert server.faults.count("ImportArtifact") == client.policy.retries + 1


def test_retry_gives_up_after_retries_with_unavailable(server, client):
    server.faults.fail("GetArtifact", times=client.policy.retries + 1, message="replica restarting")
    with pytest.raises(EquipruneError) as caught:
        client.get_artifact("art-1")
    assert caught.value.code == grpc.StatusCode.UNAVAILABLE
    assert caught.value.message == "replica restarting"
    assert server.faults.count("GetArtifact") == client.policy.retries + 1


def test_non_retryable_error_surfaces_at_once_with_its_field(server, client, model_id):
    with pytest.raises(EquipruneError) as caught:
        spec = _spec(model=model_id)
        del spec.data.group_by[:]  # what the builders refuse, sent anyway
        client.create_job(spec)
    error = caught.value
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert error.field == "spec.data.group_by"
    assert error.problem == "required: at least one attribute"
    assert server.faults.count("CreateJob") == 1


def test_deadline_exceeded_is_retried_for_reads_but_not_for_writes(server, client, model_id):
    server.faults.fail("GetArtifact", times=1, code=grpc.StatusCode.DEADLINE_EXCEEDED)
    assert client.get_artifact(model_id).artifact_id == model_id
    server.faults.fail("ImportArtifact", times=1, code=grpc.StatusCode.DEADLINE_EXCEEDED)
    with pytest.raises(EquipruneError) as caught:
        client.import_uri("sample:digits", "dataset")
    assert caught.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert server.faults.count("ImportArtifact") == 1


def test_create_job_retries_reuse_the_request_id(server, client, model_id):
    # The first attempt never arrives; the second creates the job but its reply is lost.
    server.faults.fail("CreateJob", times=1)
    server.faults.fail("CreateJob", times=1, after=True)
    job = client.create_job(_spec(model=model_id))
    sent = [r.request_id for r in server.faults.requests["CreateJob"]]
    assert len(sent) == 3 and len(set(sent)) == 1 and sent[0]
    assert job.request_id == sent[0]
    assert [j.job_id for j in client.list_jobs()] == [job.job_id]  # started once


def test_create_job_keeps_a_given_request_id(server, client, model_id):
    first = client.create_job(_spec(model=model_id), request_id="nightly-42")
    again = client.create_job(_spec(model=model_id), request_id="nightly-42")
    assert first.job_id == again.job_id
    with pytest.raises(EquipruneError) as caught:
        client.create_job(_spec(model=model_id, sparsity=0.5), request_id="nightly-42")
    assert caught.value.code == grpc.StatusCode.ALREADY_EXISTS and caught.value.field == "request_id"


def test_wait_job_returns_the_finished_job(client, model_id):
    job = client.create_job(_spec(model=model_id))
    done = client.wait_job(job.job_id, timeout=10)
    assert done.done and done.state == jobs_pb2.JOB_STATE_SUCCEEDED
    stages = {r.stage for r in done.result.reports}
    assert len(stages) == 3 and done.result.outputs


def test_wait_job_returns_a_running_job_when_the_timeout_passes(server, client, model_id):
    server.jobs.gate.clear()
    job = client.create_job(_spec(model=model_id))
    started = time.monotonic()
    waited = client.wait_job(job.job_id, timeout=0.3)
    assert 0.25 < time.monotonic() - started < 3
    assert not waited.done
    server.jobs.gate.set()
    assert client.wait_job(job.job_id, timeout=10).done


def test_watch_resumes_after_an_interrupted_stream_without_duplicates(server, client, model_id):
    server.faults.break_stream("WatchJob", after_messages=3)
    server.faults.break_stream("WatchJob", after_messages=4)
    job = client.create_job(_spec(model=model_id))
    events = list(client.watch(job.job_id))
    sequences = [e.sequence for e in events]
    assert sequences == list(range(1, len(events) + 1))
    assert events[-1].state == jobs_pb2.JOB_STATE_SUCCEEDED
    assert [r.after_sequence for r in server.faults.requests["WatchJob"]] == [0, 3, 7]
    phases = [e.progress.phase for e in events]
    assert phases[0] == "queued" and "finetune" in phases and phases[-1] == "done"


def test_watch_from_a_sequence_skips_the_history(client, model_id):
    job = client.wait_job(client.create_job(_spec(model=model_id)).job_id, timeout=10)
    everything = list(client.watch(job.job_id))
    tail = list(client.watch(job.job_id, after_sequence=5))
    assert [e.sequence for e in tail] == [e.sequence for e in everything[5:]]


def test_watch_gives_up_when_the_stream_keeps_failing(server, client, model_id):
    job = client.create_job(_spec(model=model_id))
    server.faults.break_stream("WatchJob", after_messages=0, times=client.policy.retries + 1)
    with pytest.raises(EquipruneError) as caught:
        list(client.watch(job.job_id))
    assert caught.value.code == grpc.StatusCode.UNAVAILABLE


def test_failed_job_carries_its_error(client, model_id):
    job = client.wait_job(client.create_job(_spec(model=model_id, group_by=["missing"])).job_id, timeout=10)
    assert job.state == jobs_pb2.JOB_STATE_FAILED
    assert job.error.code == "INVALID_ARGUMENT" and job.error.field == "spec.data.group_by"


def test_cancel_job_and_list_filters(server, client, model_id):
    server.jobs.gate.clear()
    kept = client.create_job(_spec(model=model_id))
    cancelled = client.cancel_job(client.create_job(_spec(model=model_id)).job_id)
    assert cancelled.state == jobs_pb2.JOB_STATE_CANCELLED and cancelled.done
    assert [j.job_id for j in client.list_jobs(states=["cancelled"])] == [cancelled.job_id]
    assert [j.job_id for j in client.list_jobs(kind="prune_and_finetune", page_size=1)] == [cancelled.job_id,
                                                                                            kept.job_id]
    assert list(client.list_jobs(kind="train")) == []
    with pytest.raises(ValueError, match="states: unknown value 'paused'"):
        list(client.list_jobs(states=["paused"]))
    server.jobs.gate.set()


def test_unreachable_server_is_unavailable(tmp_path):
    with EquipruneClient("127.0.0.1:1", timeout=1.0, retries=1, backoff=0.001) as client:
        with pytest.raises(EquipruneError) as caught:
            client.get_job("job-1")
    assert caught.value.code == grpc.StatusCode.UNAVAILABLE and caught.value.field is None


def test_given_channel_is_left_open(server):
    channel = grpc.insecure_channel(server.target)
    with EquipruneClient(channel=channel) as client:
        client.import_uri("sample:digits", "dataset")
    # Still usable: the client did not own it.
    assert EquipruneClient(channel=channel).import_uri("sample:digits", "dataset").artifact_id
    channel.close()
