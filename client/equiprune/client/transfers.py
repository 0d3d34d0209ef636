"""Resumable uploads and downloads of artifacts, never holding a whole file in memory.

Upload: sha256 computed by streaming the file, then StartUpload, PutUploadChunk in chunks of at
most the server's `max_chunk_bytes`, and FinishUpload. After an interruption the upload asks
GetUpload how many bytes the server committed and goes on from there.

Download: the stream is written to a temporary file next to the destination; after an
interruption it resumes at the bytes already written; at the end size and sha256 are checked
(DATA_LOSS when they differ) and the file is renamed into place atomically.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import grpc

from equiprune.v1 import artifacts_pb2

from .errors import EquipruneError
from .retry import RETRY_READS, ResumeBudget, call_with_retry

if TYPE_CHECKING:
    from .sdk import EquipruneClient

ProgressCallback = Callable[[int, int], None]
"""Called with (bytes done, bytes in total) after every chunk."""

_READ_BYTES = 1 << 20
_DEFAULT_CHUNK_BYTES = 1 << 20


def file_sha256(path: Path) -> str:
    """Lower-case hex sha256 of a file, read 1 MiB at a time."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(_READ_BYTES):
            digest.update(block)
    return digest.hexdigest()


def upload_file(client: "EquipruneClient", path: str | os.PathLike, kind: int, display_name: str | None,
                chunk_bytes: int | None, on_progress: ProgressCallback | None) -> artifacts_pb2.Artifact:
    """Upload `path` as an artifact of `kind` (an ArtifactKind number); returns the artifact."""
    path = Path(path)
    if not path.is_file():
        raise EquipruneError(grpc.StatusCode.INVALID_ARGUMENT, f"path: no such file: {path}", "path")
    if chunk_bytes is not None and chunk_bytes <= 0:
        raise EquipruneError(grpc.StatusCode.INVALID_ARGUMENT, f"chunk_bytes: must be > 0, got {chunk_bytes}",
                             "chunk_bytes")
    size = path.stat().st_size
    digest = file_sha256(path)
    started = client._unary(client._artifacts.StartUpload, artifacts_pb2.StartUploadRequest(
        kind=kind, display_name=display_name if display_name is not None else path.name,
        size_bytes=size, sha256=digest))
    limit = started.max_chunk_bytes or _DEFAULT_CHUNK_BYTES
    chunk = min(chunk_bytes or limit, limit)
    _send_chunks(client, started.upload_id, path, size, chunk, on_progress)
    return _finish(client, started.upload_id, kind, digest, size)


def _finish(client: "EquipruneClient", upload_id: str, kind: int, sha256: str, size: int) -> artifacts_pb2.Artifact:
    """FinishUpload, retried. A retry after a lost reply may find the session already closed
    (NOT_FOUND): the artifact was stored then, and is found by its digest."""
    attempts = []

    def finish_once():
        attempts.append(upload_id)
        return client._artifacts.FinishUpload(artifacts_pb2.FinishUploadRequest(upload_id=upload_id),
                                              timeout=client._slow(None))

    try:
        return call_with_retry(finish_once, client.policy, sleep=client._sleep).artifact
    except EquipruneError as error:
        if error.code != grpc.StatusCode.NOT_FOUND or len(attempts) < 2:
            raise
        stored = _stored_upload(client, kind, sha256, size)
        if stored is None:
            raise
        return stored


def _stored_upload(client: "EquipruneClient", kind: int, sha256: str, size: int) -> artifacts_pb2.Artifact | None:
    """The newest uploaded artifact with this content, among the newest page of its kind."""
    page = client._unary(client._artifacts.ListArtifacts,
                         artifacts_pb2.ListArtifactsRequest(kind=kind, page_size=100), read=True)
    return next((a for a in page.artifacts if a.sha256 == sha256 and a.size_bytes == size and a.source == "upload"),
                None)


def _send_chunks(client: "EquipruneClient", upload_id: str, path: Path, size: int, chunk: int,
                 on_progress: ProgressCallback | None) -> None:
    budget = ResumeBudget(client.policy, RETRY_READS, client._sleep)
    committed = 0
    with open(path, "rb") as f:
        while committed < size:
            f.seek(committed)
            data = f.read(min(chunk, size - committed))
            if not data:
                raise EquipruneError(grpc.StatusCode.DATA_LOSS,
                                     f"path: {path} shrank to {committed} bytes during the upload", "path")
            try:
                reply = client._artifacts.PutUploadChunk(
                    artifacts_pb2.PutUploadChunkRequest(upload_id=upload_id, offset=committed, data=data),
                    timeout=client.timeout)
            except grpc.RpcError as error:
                # The chunk may or may not have landed: ask the server where to go on from.
                budget.failed(error)
                committed = _committed_bytes(client, upload_id)
                continue
            if reply.committed_bytes <= committed:
                raise EquipruneError(grpc.StatusCode.INTERNAL,
                                     f"offset: the server committed no bytes at offset {committed}", "offset")
            committed = reply.committed_bytes
            budget.progressed()
            if on_progress:
                on_progress(committed, size)


def _committed_bytes(client: "EquipruneClient", upload_id: str) -> int:
    reply = client._unary(client._artifacts.GetUpload, artifacts_pb2.GetUploadRequest(upload_id=upload_id), read=True)
    return reply.upload.committed_bytes


def safe_file_name(name: str, fallback: str) -> str:
    """A server-given display name reduced to a plain file name (no directories, no dots-only)."""
    base = os.path.basename(name.replace("\\", "/")).strip()
    return base if base and base.strip(".") else fallback


def download_file(client: "EquipruneClient", artifact_id: str, path: str | os.PathLike,
                  on_progress: ProgressCallback | None, chunk_bytes: int = 0) -> tuple[artifacts_pb2.Artifact, Path]:
    """Download an artifact to `path` (replaced atomically when complete; into it, under the
    artifact's display name, when `path` is a directory or ends with a separator); returns its
    metadata and the file written."""
    artifact = client.get_artifact(artifact_id)
    into_directory = os.fspath(path).endswith(("/", os.sep))  # `dl/`: a folder, even if not there yet
    path = Path(path)
    if into_directory or path.is_dir():
        path = path / safe_file_name(artifact.display_name, artifact.artifact_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.part")
    try:
        with open(partial, "wb") as out:
            digest = _receive(client, artifact, out, on_progress, chunk_bytes)
            out.flush()
            os.fsync(out.fileno())
            written = out.tell()
        if written != artifact.size_bytes or digest != artifact.sha256:
            raise EquipruneError(grpc.StatusCode.DATA_LOSS,
                                 f"received {written} bytes with sha256 {digest}, expected {artifact.size_bytes} "
                                 f"bytes with sha256 {artifact.sha256}")
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
    return artifact, path


def _receive(client: "EquipruneClient", artifact: artifacts_pb2.Artifact, out, on_progress: ProgressCallback | None,
             chunk_bytes: int) -> str:
    """Stream the artifact into `out`, resuming after interruptions; returns the hex sha256."""
    digest = hashlib.sha256()
    written = 0
    budget = ResumeBudget(client.policy, sleep=client._sleep)
    while written < artifact.size_bytes:
        stream = client._artifacts.DownloadArtifact(artifacts_pb2.DownloadArtifactRequest(
            artifact_id=artifact.artifact_id, offset=written, chunk_bytes=chunk_bytes))
        before = written
        try:
            for piece in stream:
                data = _new_bytes(artifact, piece, written)
                out.write(data)
                digest.update(data)
                written += len(data)
                if data:
                    budget.progressed()
                if on_progress:
                    on_progress(written, artifact.size_bytes)
        except grpc.RpcError as error:
            budget.failed(error)
            continue
        finally:
            stream.cancel()
        if written == before and written < artifact.size_bytes:
            raise EquipruneError(grpc.StatusCode.DATA_LOSS,
                                 f"the download of {artifact.artifact_id} ended at {written} of "
                                 f"{artifact.size_bytes} bytes")
    return digest.hexdigest()


def _new_bytes(artifact: artifacts_pb2.Artifact, piece: artifacts_pb2.DownloadArtifactResponse, written: int) -> bytes:
    """The part of a streamed piece not written yet; DATA_LOSS on a gap or a changed artifact."""
    if piece.size_bytes != artifact.size_bytes or (piece.sha256 and piece.sha256 != artifact.sha256):
        raise EquipruneError(grpc.StatusCode.DATA_LOSS,
                             f"{artifact.artifact_id} changed during the download (size or sha256 differs)")
    if piece.offset > written:
        raise EquipruneError(grpc.StatusCode.DATA_LOSS,
                             f"the download of {artifact.artifact_id} skipped bytes {written}..{piece.offset}")
    return piece.data[written - piece.offset:]
