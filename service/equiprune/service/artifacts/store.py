"""Artifacts (models, datasets, reports) in a local folder or any fsspec filesystem.

Content enters three ways: a resumable chunked upload, an import from a URI, or a file the
service wrote itself. Every way checks the sha256, hands a local copy to an optional validator,
and only then stores the artifact. Imports follow a policy: local paths only under
`import_roots`, remote protocols only those in `import_protocols`, http(s) only through
fetch.py, which vets the addresses it connects to. Layout inside the root:

    artifacts/<art-id>/content     the bytes
    artifacts/<art-id>/meta.json   the ArtifactRecord, written last (temp name, then move), so a
                                   half-written artifact is never listed
    uploads/<upl-id>/part          the bytes committed so far (its size is the resume point)
    uploads/<upl-id>/meta.json     the UploadRecord as announced by start_upload
    staging/<hex>                  local roots only: imports and service files being copied in

Upload state lives in the store, so an upload survives a service restart. Ids are checked
against their pattern before they become part of a path. Artifacts are immutable, so their
records are cached in memory once read.

This module holds the store itself, imports, service files and reading; uploads.py the upload
sessions, placement.py the copying in and placing, records.py the records and argument checks.
"""

from __future__ import annotations

import json
import logging
import os
import posixpath
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import BinaryIO

import fsspec
from fsspec.implementations.local import LocalFileSystem

from equiprune.service.errors import FailedPrecondition, InvalidArgument, NotFound
from equiprune.service.artifacts.import_sources import ImportSources
from equiprune.service.artifacts.placement import ContentPlacement
from equiprune.service.artifacts.records import (
    _ARTIFACT_ID, OWNER_BEFORE_TENANTS, ArtifactRecord, CorruptArtifact, UploadRecord, Validator, _check_display_name,
    _check_id,
    _check_kind, _normalise_sha256, _remove_local, _run_validator, sha256_of_file,
)
from equiprune.service.artifacts.uploads import UploadSessions
from equiprune.service.jobs.paging import check_page_size, decode_page_token, encode_page_token, filter_digest

# The records and sha256_of_file are imported from here by plane.py, wire.py and the tests.
log = logging.getLogger("equiprune.service.artifacts")

__all__ = ["ArtifactRecord", "ArtifactStore", "CorruptArtifact", "UploadRecord", "sha256_of_file"]


class ArtifactStore(UploadSessions, ContentPlacement):
    """Artifacts and upload sessions under `root` (a local path or an fsspec URL)."""

    def __init__(
        self,
        root: str,
        *,
        max_upload_bytes: int = 2 * 1024**3,
        max_chunk_bytes: int = 2 * 1024**2,
        import_roots: Sequence[str] = (),
        import_protocols: Sequence[str] = (),
        import_allow_private_addresses: bool = False,
        cache_dir: str | None = None,
        upload_ttl_s: float = 86400.0,
        free_disk_reserve_bytes: int = 1024**3,
    ) -> None:
        self._fs, base = fsspec.core.url_to_fs(str(root))
        self.upload_ttl_s = upload_ttl_s
        self.free_disk_reserve_bytes = free_disk_reserve_bytes
        self._base = base.rstrip("/")
        self._is_local = isinstance(self._fs, LocalFileSystem)
        self.max_upload_bytes = max_upload_bytes
        self.max_chunk_bytes = max_chunk_bytes
        self.imports = ImportSources(import_roots, import_protocols, import_allow_private_addresses,
                                     size_limit=self._check_size_limit)
        self._cache_dir = cache_dir
        self._records: dict[str, ArtifactRecord] = {}
        self._verified: dict[str, tuple[int, ...]] = {}  # path → (size, mtime, ctime, inode) found intact
        self._locks: dict[str, threading.Lock] = {}
        self._locks_guard = threading.Lock()
        self._reserved: dict[str, int] = {}  # bytes imports of each tenant hold until stored (uploads.py)
        self._fs.makedirs(self._path("artifacts"), exist_ok=True)
        self._fs.makedirs(self._path("uploads"), exist_ok=True)

    @property
    def is_local(self) -> bool:
        """True when the root is a local folder (stored files can be opened directly)."""
        return self._is_local

    # --- other ways in ---------------------------------------------------------------------

    def import_uri(
        self, kind: str, uri: str, sha256: str, display_name: str = "", validate: Validator | None = None, *,
        tenant: str = OWNER_BEFORE_TENANTS, quota: Callable[[int], None] | None = None,
    ) -> ArtifactRecord:
        """Copies content from a local path (under `import_roots`), an http(s) URL or another
        fsspec URL whose protocol is in `import_protocols`.

        No refusal quotes the fetched content or its digest: the server must not become a
        way to read what only it can reach.
        """
        _check_kind(kind, "kind")
        expected = _normalise_sha256(sha256, "source.sha256")
        protocol = self.imports.check(uri)
        name = display_name or posixpath.basename(uri.rstrip("/"))
        _check_display_name(name)
        with self.imports.open(uri, protocol) as (source, size):
            copy = self._copy_in(source, limit_field="source.uri")
        try:
            if size is not None and copy.size_bytes != size:
                raise FailedPrecondition(f"{uri} changed while it was being copied; try again", field="source.uri")
            if copy.size_bytes == 0:
                raise InvalidArgument(f"{uri} is empty", field="source.uri")
            if copy.sha256 != expected:
                raise InvalidArgument(
                    f"the content of {uri} does not match the expected sha256 {expected}", field="source.sha256"
                )
            if quota is not None:
                quota(copy.size_bytes)  # the real size, before it is kept
            description = _run_validator(validate, copy.path, kind)
            return self._store(kind, name, uri, copy, description, place=self._placer(copy), tenant=tenant)
        except BaseException:
            _remove_local(copy.path)
            raise

    def put_file(
        self, path: str, kind: str, display_name: str, source: str, description: dict[str, str] | None = None, *,
        tenant: str = OWNER_BEFORE_TENANTS,
    ) -> ArtifactRecord:
        """Copies in a local file the service wrote (a built-in sample)."""
        with open(path, "rb") as stream:
            return self.put_stream(stream, kind, display_name, source, description, tenant=tenant)

    def put_stream(
        self, stream: BinaryIO, kind: str, display_name: str, source: str, description: dict[str, str] | None = None,
        *, tenant: str = OWNER_BEFORE_TENANTS,
    ) -> ArtifactRecord:
        """Copies in an open file (a job's output, opened by the caller without following links)."""
        _check_kind(kind, "kind")
        _check_display_name(display_name)
        copy = self._copy_in(stream, limit_field=None)
        try:
            described = {str(k): str(v) for k, v in (description or {}).items()}
            return self._store(kind, display_name, source, copy, described, place=self._placer(copy), tenant=tenant)
        except BaseException:
            _remove_local(copy.path)
            raise

    # --- reading ---------------------------------------------------------------------------

    def get(self, artifact_id: str, tenant: str | None = None) -> ArtifactRecord:
        """The artifact; with `tenant`, only one that tenant owns — another tenant's is NOT_FOUND
        in the same words as one that does not exist (None: the service's own reads)."""
        _check_id(artifact_id, _ARTIFACT_ID, "artifact_id")
        record = self._records.get(artifact_id) or self._read_record(artifact_id)
        if record is None or (tenant is not None and record.tenant != tenant):
            raise NotFound(f"no artifact with id {artifact_id!r}", field="artifact_id")
        return record

    def find(self, kind: str, sha256: str, tenant: str = OWNER_BEFORE_TENANTS) -> ArtifactRecord | None:
        """The oldest artifact of `kind` with this content that `tenant` owns, if any: imports
        reuse it, so a retried request that names the same content resolves to the same
        artifact id. Never another tenant's: that would tell who holds what."""
        matches = [r for r in self._all_records()
                   if r.kind == kind and r.sha256 == sha256.lower() and r.tenant == tenant]
        return min(matches, key=lambda r: (r.create_time, r.artifact_id)) if matches else None

    def list(
        self, kind: str | None = None, page_size: int = 100, page_token: str = "", *, tenant: str | None = None
    ) -> tuple[list[ArtifactRecord], str]:
        """One page of artifacts, newest first, and the token of the next page ("" on the last)."""
        if kind is not None:
            _check_kind(kind, "kind")
        check_page_size(page_size)
        filters = filter_digest("artifacts", kind, tenant)
        records = [r for r in self._all_records()
                   if (kind is None or r.kind == kind) and (tenant is None or r.tenant == tenant)]
        records.sort(key=lambda r: (r.create_time, r.artifact_id), reverse=True)
        if page_token:
            after = decode_page_token(page_token, filters)
            records = [r for r in records if (r.create_time, r.artifact_id) < after]
        page = records[:page_size]
        if len(records) <= page_size:
            return page, ""
        return page, encode_page_token(page[-1].create_time, page[-1].artifact_id, filters)

    def stored_bytes(self, tenant: str) -> int:
        """What `tenant`'s artifacts take in the store."""
        return sum(r.size_bytes for r in self._all_records() if r.tenant == tenant)

    def read_chunks(self, artifact_id: str, offset: int = 0, chunk_bytes: int = 1024**2) -> Iterator[bytes]:
        """The content from `offset` on, in chunks of at most `chunk_bytes`, from a file
        checked against its sha256 first (`local_path`): damaged content is never sent."""
        record = self.get(artifact_id)  # checked now, not at the first next()
        if not 0 <= offset <= record.size_bytes:
            raise InvalidArgument(
                f"offset {offset} is outside the artifact's {record.size_bytes} bytes", field="offset"
            )
        if chunk_bytes < 1:
            raise InvalidArgument(f"chunk_bytes must be at least 1, not {chunk_bytes}", field="chunk_bytes")
        path = self.local_path(artifact_id)
        return self._iter_local_chunks(path, offset, chunk_bytes)

    def local_path(self, artifact_id: str) -> str:
        """A local file with the content — the stored file itself, or a cached copy — checked
        against the recorded sha256 before it is handed out (to a job, a deploy, the model
        server, a download). A mismatch is logged for the operator and raised as
        `CorruptArtifact` (DATA_LOSS); the content is never used. The check streams the file
        once and is remembered per file for as long as its size, mtime, ctime and inode stay the
        same (silent media corruption is the scrub's to find: it checks afresh)."""
        record = self.get(artifact_id)
        if self._is_local:
            path = self._content_path(artifact_id)
        else:
            path = self._cached_path(artifact_id)
            with self._lock_for(artifact_id):
                if not os.path.exists(path):
                    copy = self._local_view(self._content_path(artifact_id))
                    if copy.sha256 != record.sha256:
                        _remove_local(copy.path)
                        raise self._damaged(record, copy.sha256)
                    self._adopt_into_cache(artifact_id, copy.path)
                    self._remember_intact(path)  # just hashed while copying: not again below
        self._verify(record, path)
        return path

    def verify(self, artifact_id: str) -> None:
        """Check one artifact's stored content now, whatever was remembered (the scrub)."""
        self._verified.pop(self._content_path(artifact_id) if self._is_local else self._cached_path(artifact_id), None)
        self.local_path(artifact_id)

    def _verify(self, record: ArtifactRecord, path: str) -> None:
        try:
            seen = _identity(path)
        except FileNotFoundError:
            raise self._damaged(record, "missing") from None
        if self._verified.get(path) == seen:
            return
        actual = sha256_of_file(path)
        if actual != record.sha256:
            self._verified.pop(path, None)
            raise self._damaged(record, actual)
        self._verified[path] = seen

    def _remember_intact(self, path: str) -> None:
        self._verified[path] = _identity(path)

    @staticmethod
    def _damaged(record: ArtifactRecord, actual: str) -> CorruptArtifact:
        log.error("DATA LOSS: artifact %s (%s, %r) has content sha256 %s, recorded %s; it is not used. "
                  "Restore it from a backup or delete it (python -m equiprune.service.artifacts.scrub)",
                  record.artifact_id, record.kind, record.display_name, actual, record.sha256)
        return CorruptArtifact(record.artifact_id)

    # --- reading plumbing ------------------------------------------------------------------

    def _all_records(self) -> list[ArtifactRecord]:
        directory = self._path("artifacts")
        self._fs.invalidate_cache(directory)
        try:
            entries = self._fs.ls(directory, detail=False)
        except FileNotFoundError:
            return []
        records = []
        for entry in entries:
            artifact_id = posixpath.basename(entry.rstrip("/"))
            if not _ARTIFACT_ID.match(artifact_id):
                continue
            record = self._records.get(artifact_id) or self._read_record(artifact_id)
            if record is not None:  # None: still being written
                records.append(record)
        return records

    def _read_record(self, artifact_id: str) -> ArtifactRecord | None:
        try:
            meta = self._fs.cat_file(f"{self._artifact_dir(artifact_id)}/meta.json")
        except FileNotFoundError:
            return None
        record = ArtifactRecord.from_dict(json.loads(meta))
        self._records[artifact_id] = record
        return record

    @staticmethod
    def _iter_local_chunks(path: str, offset: int, chunk_bytes: int) -> Iterator[bytes]:
        with open(path, "rb") as source:
            source.seek(offset)
            while chunk := source.read(chunk_bytes):
                yield chunk


def _identity(path: str) -> tuple[int, ...]:
    """What must stay the same for a check to be remembered. ctime too: a copy that restores
    mtime (cp -p, rsync -t, touch -r) still changes it."""
    info = os.stat(path)
    return info.st_size, info.st_mtime_ns, info.st_ctime_ns, info.st_ino
