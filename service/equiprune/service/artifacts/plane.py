"""The artifact plane: uploads, imports, reads — protocol-neutral (no gRPC, no Ray).

The gRPC servicer only translates; every rule about what a client may store or read is here
or in the store. Methods block (file I/O, validation in a sandboxed worker): callers on an
event loop run them in a thread.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

from equiprune.service.errors import InvalidArgument, ServiceError, naming
from equiprune.service.jobs.wire import ArtifactSource
from equiprune.service.artifacts.samples import is_sample, write_sample
from equiprune.service.artifacts.store import ArtifactRecord, ArtifactStore, UploadRecord, sha256_of_file

DEFAULT_CHUNK = 1024 * 1024
MAX_DOWNLOAD_CHUNK = 4 * 1024 * 1024 - 64 * 1024  # stay below gRPC's default 4 MiB message limit
# Smaller chunks would let one request make the server send a message per byte (the fuzzing
# found a 1-byte chunk size streaming a 0.5 MB dataset for over a minute).
MIN_DOWNLOAD_CHUNK = 64 * 1024


def page_size(value: int, default: int) -> int:
    if value < 0 or value > 1000:
        raise InvalidArgument(f"must be between 0 and 1000, got {value}", field="page_size")
    return value or default


class ArtifactsPlane:
    def __init__(self, store: ArtifactStore, validate, samples_dir: Path) -> None:
        self.store = store
        self.validate = validate  # runs in a sandboxed worker, never in this process
        self.samples_dir = Path(samples_dir)
        self.samples_dir.mkdir(parents=True, exist_ok=True)

    # Every method acts for a `caller` (tenants/auth.py Caller): what it creates is the
    # caller's tenant's, and it sees nothing of another tenant's (NOT_FOUND, as if absent).

    # ------------------------------------------------------------------ uploads

    def start_upload(self, caller, kind: str, display_name: str, size_bytes: int, sha256: str) -> UploadRecord:
        return self.store.start_upload(kind, display_name, size_bytes, sha256, tenant=caller.tenant,
                                       quotas=caller.quotas)

    def put_chunk(self, caller, upload_id: str, offset: int, data: bytes) -> int:
        return self.store.put_chunk(upload_id, offset, data, tenant=caller.tenant)

    def get_upload(self, caller, upload_id: str) -> UploadRecord:
        return self.store.get_upload(upload_id, tenant=caller.tenant)

    def finish_upload(self, caller, upload_id: str) -> ArtifactRecord:
        return self.store.finish_upload(upload_id, self.validate, tenant=caller.tenant)

    # ------------------------------------------------------------------ imports

    def import_artifact(self, caller, kind: str, source: ArtifactSource, display_name: str = "",
                        field: str = "source") -> ArtifactRecord:
        """Import a URI (or write a built-in sample), reusing an identical artifact of the
        caller's so a retried request resolves to the same id. Refusals name `field` (`source`
        for ImportArtifact, `spec.dataset.uri` inside a job spec)."""
        if not source.uri:
            raise InvalidArgument("required: the URI to import", field=f"{field}.uri")
        if is_sample(source.uri):
            return self._sample(caller, kind, source.uri, display_name, field)
        try:
            if not source.sha256:
                raise InvalidArgument("required for imports: the content's sha256", field="source.sha256")
            # The policy first: a URI the server may not read is refused even when the content
            # is already stored.
            self.store.imports.check(source.uri)
            existing = self.store.find(kind, source.sha256.lower(), caller.tenant)
            if existing is not None:
                return existing
            with self.store.quota_reservation(caller.tenant, caller.quotas) as reserve:
                return self.store.import_uri(kind, source.uri, source.sha256, display_name, validate=self.validate,
                                             tenant=caller.tenant, quota=reserve)
        except ServiceError as err:
            # The store names `source.*`; in a job spec the same fields are `spec.dataset.uri.*`.
            if field != "source" and err.field and err.field.startswith("source."):
                raise type(err)(err.message, field=field + err.field[len("source"):]) from None
            raise

    def _sample(self, caller, kind: str, uri: str, display_name: str, field: str) -> ArtifactRecord:
        if kind != "dataset":
            raise InvalidArgument("sample: URIs name datasets; use kind DATASET", field=f"{field}.uri")
        path = write_sample(uri, str(self.samples_dir))
        try:
            existing = self.store.find(kind, sha256_of_file(str(path)), caller.tenant)
            if existing is not None:
                return existing
            with self.store.quota_reservation(caller.tenant, caller.quotas) as reserve:
                reserve(path.stat().st_size)
                return self.store.put_file(str(path), kind, display_name or path.name, source=uri,
                                           description=self.validate(str(path), kind), tenant=caller.tenant)
        finally:
            shutil.rmtree(path.parent, ignore_errors=True)

    def resolve(self, caller, source: ArtifactSource, field: str) -> str | None:
        """The id of the caller's artifact a job spec's reference names (`field` is
        `spec.model` or `spec.dataset`), importing a URI; None for an empty reference."""
        if source.artifact_id:
            with naming(f"{field}.artifact_id"):
                return self.store.get(source.artifact_id, caller.tenant).artifact_id
        if not source.uri:
            return None
        kind = "model" if field == "spec.model" else "dataset"
        return self.import_artifact(caller, kind, source, "", f"{field}.uri").artifact_id

    # ------------------------------------------------------------------ reads

    def get(self, caller, artifact_id: str) -> ArtifactRecord:
        return self.store.get(artifact_id, caller.tenant)

    def list(self, caller, kind: str | None, size: int, token: str) -> tuple[list[ArtifactRecord], str]:
        return self.store.list(kind, page_size(size, 100), token, tenant=caller.tenant)

    def download(self, caller, artifact_id: str, offset: int,
                 chunk_bytes: int) -> tuple[ArtifactRecord, Iterator[bytes]]:
        if chunk_bytes != 0 and not MIN_DOWNLOAD_CHUNK <= chunk_bytes <= MAX_DOWNLOAD_CHUNK:
            raise InvalidArgument(f"must be 0 (1 MiB) or in [{MIN_DOWNLOAD_CHUNK}, {MAX_DOWNLOAD_CHUNK}]",
                                  field="chunk_bytes")
        record = self.store.get(artifact_id, caller.tenant)
        return record, self.store.read_chunks(record.artifact_id, offset, chunk_bytes or DEFAULT_CHUNK)

    def usage(self, caller) -> dict:
        uploads = self.store.open_uploads(caller.tenant)
        return {"stored_bytes": self.store.stored_bytes(caller.tenant), "open_upload_sessions": len(uploads),
                "announced_upload_bytes": sum(u.size_bytes for u in uploads)}
