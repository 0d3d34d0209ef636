"""Uploads and downloads: chunking, resumption after interruptions, digest checks."""

from __future__ import annotations

import hashlib
import os

import grpc
import pytest

from equiprune.client.errors import EquipruneError
from equiprune.v1 import artifacts_pb2


def _payload(size: int) -> bytes:
    return (hashlib.sha256(b"seed").digest() * (size // 32 + 1))[:size]


def test_round_trip_with_small_chunks_and_interruptions(server, client, tmp_path):
    data = _payload(10_000)
    source = tmp_path / "model.safetensors"
    source.write_bytes(data)
    # One chunk lost before reaching the server, one committed whose reply was lost.
    server.faults.fail("PutUploadChunk", times=1)
    server.faults.fail("PutUploadChunk", times=1, after=True)
    seen = []
    artifact = client.upload_file(source, "model", chunk_bytes=1000, on_progress=lambda done, total: seen.append(done))

    assert artifact.size_bytes == len(data) and artifact.sha256 == hashlib.sha256(data).hexdigest()
    assert artifact.kind == artifacts_pb2.ARTIFACT_KIND_MODEL and artifact.display_name == "model.safetensors"
    assert server.artifacts.blobs[artifact.artifact_id] == data
    offsets = [r.offset for r in server.faults.requests["PutUploadChunk"]]
    assert all(len(r.data) == 1000 for r in server.faults.requests["PutUploadChunk"])
    assert server.faults.count("GetUpload") == 2  # each interruption re-read the committed bytes
    assert offsets == [0, 0] + list(range(1000, 10_000, 1000))  # resumed from the committed bytes
    assert seen[-1] == len(data) and seen == sorted(seen)

    server.faults.break_stream("DownloadArtifact", after_messages=3)
    server.faults.break_stream("DownloadArtifact", after_messages=2)
    target = tmp_path / "out" / "copy.bin"
    got = client.download(artifact.artifact_id, target, chunk_bytes=700)
    assert target.read_bytes() == data and got.artifact_id == artifact.artifact_id
    resumed_at = [r.offset for r in server.faults.requests["DownloadArtifact"]]
    assert resumed_at == [0, 3 * 700, 5 * 700]
    assert os.listdir(target.parent) == ["copy.bin"]  # no temporary file left behind


def test_chunks_never_exceed_the_servers_limit(server, client, tmp_path):
    server.artifacts.max_chunk_bytes = 512
    source = tmp_path / "d.npz"
    source.write_bytes(_payload(2000))
    client.upload_file(source, "dataset", chunk_bytes=10_000)
    sizes = [len(r.data) for r in server.faults.requests["PutUploadChunk"]]
    assert sizes == [512, 512, 512, 464]


def test_upload_gives_up_after_retries_without_progress(server, client, tmp_path):
    source = tmp_path / "m.bin"
    source.write_bytes(_payload(100))
    server.faults.fail("PutUploadChunk", times=10)
    with pytest.raises(EquipruneError) as caught:
        client.upload_file(source, "model")
    assert caught.value.code == grpc.StatusCode.UNAVAILABLE
    assert server.faults.count("PutUploadChunk") == client.policy.retries + 1


def test_download_refuses_content_that_does_not_match_its_digest(server, client, tmp_path):
    artifact = client.import_uri("sample:digits", "dataset")
    server.artifacts.blobs[artifact.artifact_id] = b"X" + server.artifacts.blobs[artifact.artifact_id][1:]
    target = tmp_path / "digits.npz"
    with pytest.raises(EquipruneError) as caught:
        client.download(artifact.artifact_id, target)
    assert caught.value.code == grpc.StatusCode.DATA_LOSS
    assert not target.exists() and list(tmp_path.iterdir()) == []


def test_download_replaces_an_existing_file_only_when_complete(server, client, tmp_path):
    artifact = client.import_uri("sample:digits", "dataset")
    target = tmp_path / "digits.npz"
    target.write_bytes(b"old")
    server.faults.break_stream("DownloadArtifact", after_messages=0, times=client.policy.retries + 1)
    with pytest.raises(EquipruneError):
        client.download(artifact.artifact_id, target, chunk_bytes=100)
    assert target.read_bytes() == b"old"
    client.download(artifact.artifact_id, target, chunk_bytes=100)
    assert target.read_bytes() == server.artifacts.blobs[artifact.artifact_id]


def test_upload_of_a_missing_file_names_the_path(client, tmp_path):
    with pytest.raises(EquipruneError) as caught:
        client.upload_file(tmp_path / "nope.bin", "model")
    assert caught.value.field == "path"


def test_unknown_kind_is_refused_before_any_call(server, client, tmp_path):
    source = tmp_path / "m.bin"
    source.write_bytes(b"x")
    with pytest.raises(ValueError, match="kind: unknown value 'weights'"):
        client.upload_file(source, "weights")
    assert server.faults.count("StartUpload") == 0


def test_list_artifacts_pages_through_everything(server, client):
    ids = [client.import_uri("sample:digits", "dataset").artifact_id for _ in range(5)]
    listed = [a.artifact_id for a in client.list_artifacts(page_size=2)]
    assert listed == ids[::-1]
    assert server.faults.count("ListArtifacts") == 3
    assert list(client.list_artifacts(kind="model")) == []


def test_download_into_a_directory_uses_a_safe_display_name(server, client, tmp_path):
    artifact = server.artifacts.store(3, b"{}", "../../escape.json", "job:job-1")
    got, path = client.download_to(artifact.artifact_id, tmp_path)
    assert path == tmp_path / "escape.json" and path.read_bytes() == b"{}"
    assert got.artifact_id == artifact.artifact_id
    _, path = client.download_to(artifact.artifact_id, f"{tmp_path}/new/")  # a folder not there yet
    assert path == tmp_path / "new" / "escape.json" and path.read_bytes() == b"{}"


@pytest.mark.parametrize("idempotent_finish", [True, False])
def test_a_lost_finish_reply_still_returns_the_stored_artifact(server, client, tmp_path, idempotent_finish):
    server.artifacts.idempotent_finish = idempotent_finish
    other = tmp_path / "other.bin"
    other.write_bytes(b"other content")
    client.upload_file(other, "model")
    source = tmp_path / "m.bin"
    source.write_bytes(_payload(3000))
    server.faults.fail("FinishUpload", times=1, after=True)  # stored, but the reply is lost
    artifact = client.upload_file(source, "model")
    assert server.artifacts.blobs[artifact.artifact_id] == source.read_bytes()
    assert len(server.artifacts.artifacts) == 2  # stored once, found again
    assert server.faults.count("ListArtifacts") == (0 if idempotent_finish else 1)  # found by its digest


def test_finish_not_found_on_the_first_attempt_is_an_error(server, client, tmp_path):
    source = tmp_path / "m.bin"
    source.write_bytes(b"abc")
    server.faults.fail("FinishUpload", times=1, code=grpc.StatusCode.NOT_FOUND, message="upload_id: no open upload")
    with pytest.raises(EquipruneError) as caught:
        client.upload_file(source, "model")
    assert caught.value.code == grpc.StatusCode.NOT_FOUND and caught.value.field == "upload_id"
    assert server.faults.count("ListArtifacts") == 0
