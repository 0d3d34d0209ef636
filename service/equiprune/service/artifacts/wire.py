"""Artifacts on the wire: records as proto messages, kinds as enum numbers."""

from __future__ import annotations

from equiprune.v1 import artifacts_pb2

from equiprune.service.jobs.wire import enum_names, enum_number, enum_value, timestamp
from equiprune.service.artifacts.store import ArtifactRecord, UploadRecord

ARTIFACT_KINDS = enum_names(artifacts_pb2.ArtifactKind.DESCRIPTOR)


def kind(number: int, field: str = "kind") -> str:
    return enum_value(artifacts_pb2.ArtifactKind.DESCRIPTOR, number, field)


def optional_kind(number: int, field: str = "kind") -> str | None:
    return kind(number, field) if number else None


def artifact_to_proto(record: ArtifactRecord) -> artifacts_pb2.Artifact:
    return artifacts_pb2.Artifact(
        artifact_id=record.artifact_id, kind=enum_number(artifacts_pb2.ArtifactKind.DESCRIPTOR, record.kind),
        display_name=record.display_name, size_bytes=record.size_bytes, sha256=record.sha256,
        create_time=timestamp(record.create_time), source=record.source, description=record.description)


def upload_to_proto(upload: UploadRecord) -> artifacts_pb2.Upload:
    return artifacts_pb2.Upload(upload_id=upload.upload_id,
                                kind=enum_number(artifacts_pb2.ArtifactKind.DESCRIPTOR, upload.kind),
                                size_bytes=upload.size_bytes, committed_bytes=upload.committed_bytes,
                                sha256=upload.sha256)
