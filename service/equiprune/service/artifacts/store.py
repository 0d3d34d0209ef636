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
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import posixpath
import re
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import BinaryIO

import fsspec
from fsspec.implementations.local import LocalFileSystem

from equiprune.service.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
)
from equiprune.service.artifacts.import_sources import ImportSources
from equiprune.service.jobs.store import check_page_size, decode_page_token, encode_page_token, filter_digest

KINDS = ("model", "dataset", "report")
MAX_DISPLAY_NAME = 256
COPY_BLOCK_BYTES = 1024**2

_ARTIFACT_ID = re.compile(r"^art-[0-9a-f]{16}$")
_UPLOAD_ID = re.compile(r"^upl-[0-9a-f]{16}$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")

log = logging.getLogger("equiprune.service")

Validator = Callable[[str, str], dict[str, str]]
"""(local file path, kind) -> description; raises to refuse the content."""


@dataclass(frozen=True)
class ArtifactRecord:
    """An immutable blob in the store."""

    artifact_id: str
    kind: str
    display_name: str
    size_bytes: int
    sha256: str
    create_time: float
    source: str
    description: dict[str, str]

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> ArtifactRecord:
        return cls(
            artifact_id=str(data["artifact_id"]),
            kind=str(data["kind"]),
            display_name=str(data["display_name"]),
            size_bytes=int(data["size_bytes"]),
            sha256=str(data["sha256"]),
            create_time=float(data["create_time"]),
            source=str(data["source"]),
            description={str(k): str(v) for k, v in dict(data.get("description") or {}).items()},
        )


@dataclass(frozen=True)
class UploadRecord:
    """An open upload session; `committed_bytes` is where the client resumes."""

    upload_id: str
    kind: str
    display_name: str
    size_bytes: int
    sha256: str
    committed_bytes: int
    create_time: float


class CorruptArtifact(OSError):
    """Stored content no longer matches its recorded sha256 (a storage fault, not a client error)."""


@dataclass(frozen=True)
class _Copied:
    """A local file holding content copied in, with what was measured while copying."""

    path: str
    size_bytes: int
    sha256: str


class ArtifactStore:
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
    ) -> None:
        self._fs, base = fsspec.core.url_to_fs(str(root))
        self._base = base.rstrip("/")
        self._is_local = isinstance(self._fs, LocalFileSystem)
        self.max_upload_bytes = max_upload_bytes
        self.max_chunk_bytes = max_chunk_bytes
        self.imports = ImportSources(import_roots, import_protocols, import_allow_private_addresses,
                                     size_limit=self._check_size_limit)
        self._cache_dir = cache_dir
        self._records: dict[str, ArtifactRecord] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._locks_guard = threading.Lock()
        self._fs.makedirs(self._path("artifacts"), exist_ok=True)
        self._fs.makedirs(self._path("uploads"), exist_ok=True)

    @property
    def is_local(self) -> bool:
        """True when the root is a local folder (stored files can be opened directly)."""
        return self._is_local

    # --- resumable uploads -----------------------------------------------------------------

    def start_upload(self, kind: str, display_name: str, size_bytes: int, sha256: str) -> UploadRecord:
        _check_kind(kind, "kind")
        _check_display_name(display_name)
        if size_bytes < 1:
            raise InvalidArgument(f"size_bytes must be at least 1, not {size_bytes}", field="size_bytes")
        self._check_size_limit(size_bytes, "size_bytes")
        upload = UploadRecord(
            upload_id="upl-" + uuid.uuid4().hex[:16],
            kind=kind,
            display_name=display_name,
            size_bytes=size_bytes,
            sha256=_normalise_sha256(sha256, "sha256"),
            committed_bytes=0,
            create_time=time.time(),
        )
        directory = self._upload_dir(upload.upload_id)
        self._fs.makedirs(directory, exist_ok=True)
        self._fs.pipe_file(f"{directory}/part", b"")
        self._write_json_atomically(f"{directory}/meta.json", _upload_meta(upload))
        return upload

    def put_chunk(self, upload_id: str, offset: int, data: bytes) -> int:
        """Commits `data` at `offset`; returns the bytes committed so far."""
        _check_id(upload_id, _UPLOAD_ID, "upload_id")
        with self._lock_for(upload_id):
            upload = self._read_upload(upload_id)
            if not data:
                raise InvalidArgument("data is empty; send at least one byte per chunk", field="data")
            if len(data) > self.max_chunk_bytes:
                raise ResourceExhausted(
                    f"chunk of {len(data)} bytes exceeds the server's chunk limit of {self.max_chunk_bytes} bytes",
                    field="data",
                )
            if offset < 0 or offset + len(data) > upload.size_bytes:
                raise InvalidArgument(
                    f"a chunk of {len(data)} bytes at offset {offset} does not fit in the announced "
                    f"size of {upload.size_bytes} bytes",
                    field="offset",
                )
            committed = upload.committed_bytes
            part = f"{self._upload_dir(upload_id)}/part"
            if offset == committed:
                self._append(part, data)
                return committed + len(data)
            end = offset + len(data)
            if end <= committed and self._fs.cat_file(part, start=offset, end=end) == data:
                return committed  # a retried chunk that already arrived in full
            raise FailedPrecondition(
                f"offset {offset} is not where the upload continues: expected offset {committed} "
                f"({committed} of {upload.size_bytes} bytes committed)",
                field="offset",
            )

    def get_upload(self, upload_id: str) -> UploadRecord:
        _check_id(upload_id, _UPLOAD_ID, "upload_id")
        return self._read_upload(upload_id)

    def finish_upload(self, upload_id: str, validate: Validator | None = None) -> ArtifactRecord:
        """Checks the digest, validates, and stores the upload as an artifact.

        A digest mismatch or a validator refusal deletes the session: its bytes are not what
        the client meant to send, so the client starts again. The validator's exception
        propagates unchanged.
        """
        _check_id(upload_id, _UPLOAD_ID, "upload_id")
        with self._lock_for(upload_id):
            finished = self._finished_upload(upload_id)
            if finished is not None:
                # A retry after a lost reply: the same artifact, not NOT_FOUND.
                return finished
            upload = self._read_upload(upload_id)
            if upload.committed_bytes < upload.size_bytes:
                raise FailedPrecondition(
                    f"only {upload.committed_bytes} of {upload.size_bytes} bytes have been committed; "
                    "send the rest before finishing",
                    field="upload_id",
                )
            part = f"{self._upload_dir(upload_id)}/part"
            copy = self._local_view(part)
            try:
                if copy.sha256 != upload.sha256:
                    raise InvalidArgument(
                        f"the uploaded content has sha256 {copy.sha256} but StartUpload announced "
                        f"{upload.sha256}; the upload was discarded, start a new one",
                        field="sha256",
                    )
                description = _run_validator(validate, copy.path, upload.kind)
                record = self._store(
                    upload.kind,
                    upload.display_name,
                    "upload",
                    copy,
                    description,
                    place=lambda destination: self._fs.mv(part, destination),
                )
            except BaseException:
                self._discard_local_copy(copy, part)
                self._delete_upload(upload_id)
                raise
            self._delete_upload(upload_id)
            self._fs.makedirs(self._path("finished-uploads"), exist_ok=True)
            self._write_json_atomically(self._path("finished-uploads", f"{upload_id}.json"),
                                        {"artifact_id": record.artifact_id})
        return record

    def _finished_upload(self, upload_id: str) -> ArtifactRecord | None:
        try:
            marker = json.loads(self._fs.cat_file(self._path("finished-uploads", f"{upload_id}.json")))
        except FileNotFoundError:
            return None
        return self.get(marker["artifact_id"])

    # --- other ways in ---------------------------------------------------------------------

    def import_uri(
        self, kind: str, uri: str, sha256: str, display_name: str = "", validate: Validator | None = None
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
            description = _run_validator(validate, copy.path, kind)
            return self._store(kind, name, uri, copy, description, place=self._placer(copy))
        except BaseException:
            _remove_local(copy.path)
            raise

    def put_file(
        self, path: str, kind: str, display_name: str, source: str, description: dict[str, str] | None = None
    ) -> ArtifactRecord:
        """Copies in a local file the service wrote (a built-in sample)."""
        with open(path, "rb") as stream:
            return self.put_stream(stream, kind, display_name, source, description)

    def put_stream(
        self, stream: BinaryIO, kind: str, display_name: str, source: str, description: dict[str, str] | None = None
    ) -> ArtifactRecord:
        """Copies in an open file (a job's output, opened by the caller without following links)."""
        _check_kind(kind, "kind")
        _check_display_name(display_name)
        copy = self._copy_in(stream, limit_field=None)
        try:
            described = {str(k): str(v) for k, v in (description or {}).items()}
            return self._store(kind, display_name, source, copy, described, place=self._placer(copy))
        except BaseException:
            _remove_local(copy.path)
            raise

    # --- reading ---------------------------------------------------------------------------

    def get(self, artifact_id: str) -> ArtifactRecord:
        _check_id(artifact_id, _ARTIFACT_ID, "artifact_id")
        record = self._records.get(artifact_id) or self._read_record(artifact_id)
        if record is None:
            raise NotFound(f"no artifact with id {artifact_id!r}", field="artifact_id")
        return record

    def find(self, kind: str, sha256: str) -> ArtifactRecord | None:
        """The oldest stored artifact of `kind` with this content, if any: imports reuse it, so
        a retried request that names the same content resolves to the same artifact id."""
        matches = [r for r in self._all_records() if r.kind == kind and r.sha256 == sha256.lower()]
        return min(matches, key=lambda r: (r.create_time, r.artifact_id)) if matches else None

    def list(
        self, kind: str | None = None, page_size: int = 100, page_token: str = ""
    ) -> tuple[list[ArtifactRecord], str]:
        """One page of artifacts, newest first, and the token of the next page ("" on the last)."""
        if kind is not None:
            _check_kind(kind, "kind")
        check_page_size(page_size)
        filters = filter_digest("artifacts", kind)
        records = [r for r in self._all_records() if kind is None or r.kind == kind]
        records.sort(key=lambda r: (r.create_time, r.artifact_id), reverse=True)
        if page_token:
            after = decode_page_token(page_token, filters)
            records = [r for r in records if (r.create_time, r.artifact_id) < after]
        page = records[:page_size]
        if len(records) <= page_size:
            return page, ""
        return page, encode_page_token(page[-1].create_time, page[-1].artifact_id, filters)

    def read_chunks(self, artifact_id: str, offset: int = 0, chunk_bytes: int = 1024**2) -> Iterator[bytes]:
        """The content from `offset` on, in chunks of at most `chunk_bytes`."""
        record = self.get(artifact_id)  # checked now, not at the first next()
        if not 0 <= offset <= record.size_bytes:
            raise InvalidArgument(
                f"offset {offset} is outside the artifact's {record.size_bytes} bytes", field="offset"
            )
        if chunk_bytes < 1:
            raise InvalidArgument(f"chunk_bytes must be at least 1, not {chunk_bytes}", field="chunk_bytes")
        return self._iter_chunks(self._content_path(artifact_id), offset, record.size_bytes, chunk_bytes)

    def local_path(self, artifact_id: str) -> str:
        """A local file with the content: the stored file itself, or a verified cached copy."""
        record = self.get(artifact_id)
        if self._is_local:
            return self._content_path(artifact_id)
        cached = self._cached_path(artifact_id)
        with self._lock_for(artifact_id):
            if not os.path.exists(cached):
                copy = self._local_view(self._content_path(artifact_id))
                if copy.sha256 != record.sha256:
                    _remove_local(copy.path)
                    raise CorruptArtifact(
                        f"artifact {artifact_id} has sha256 {copy.sha256} in the store, "
                        f"not the recorded {record.sha256}"
                    )
                self._adopt_into_cache(artifact_id, copy.path)
        return cached

    # --- storing ---------------------------------------------------------------------------

    def _store(
        self,
        kind: str,
        display_name: str,
        source: str,
        copy: _Copied,
        description: dict[str, str],
        place: Callable[[str], None],
    ) -> ArtifactRecord:
        """Puts verified content in place, then writes the record last."""
        record = ArtifactRecord(
            artifact_id="art-" + uuid.uuid4().hex[:16],
            kind=kind,
            display_name=display_name,
            size_bytes=copy.size_bytes,
            sha256=copy.sha256,
            create_time=time.time(),
            source=source,
            description=dict(description),
        )
        directory = self._artifact_dir(record.artifact_id)
        self._fs.makedirs(directory, exist_ok=True)
        place(self._content_path(record.artifact_id))
        if not self._is_local:
            self._adopt_into_cache(record.artifact_id, copy.path)
        self._write_json_atomically(f"{directory}/meta.json", record.to_dict())
        self._records[record.artifact_id] = record
        return record

    def _placer(self, copy: _Copied) -> Callable[[str], None]:
        """How a local copy becomes the stored content: a rename locally, an upload remotely."""
        if self._is_local:
            return lambda destination: os.replace(copy.path, destination)
        return lambda destination: self._fs.put_file(copy.path, destination)

    def _copy_in(self, source: BinaryIO, limit_field: str | None) -> _Copied:
        """Copies a stream to a local staging file in blocks, hashing as it goes.

        With `limit_field`, a stream longer than the upload limit is cut off and refused, so a
        source that lies about its size cannot fill the disk.
        """
        path = self._staging_path()
        digest, size = hashlib.sha256(), 0
        try:
            with open(path, "wb") as target:
                while block := source.read(COPY_BLOCK_BYTES):
                    size += len(block)
                    if limit_field is not None:
                        self._check_size_limit(size, limit_field)
                    digest.update(block)
                    target.write(block)
        except BaseException:
            _remove_local(path)
            raise
        return _Copied(path, size, digest.hexdigest())

    def _local_view(self, path: str) -> _Copied:
        """A local file with the content at `path` in the store, and its measured digest.

        Locally that is the file itself (hashed in place); remotely a download into the cache
        folder, hashed while it arrives.
        """
        if self._is_local:
            return _Copied(path, os.path.getsize(path), sha256_of_file(path))
        with self._fs.open(path, "rb") as source:
            return self._copy_in(source, limit_field=None)

    def _discard_local_copy(self, copy: _Copied, stored_path: str) -> None:
        if copy.path != stored_path:
            _remove_local(copy.path)

    def _adopt_into_cache(self, artifact_id: str, local_copy: str) -> None:
        cached = self._cached_path(artifact_id)
        os.makedirs(os.path.dirname(cached), exist_ok=True)
        os.replace(local_copy, cached)

    # --- uploads plumbing ------------------------------------------------------------------

    def _read_upload(self, upload_id: str) -> UploadRecord:
        directory = self._upload_dir(upload_id)
        try:
            meta = json.loads(self._fs.cat_file(f"{directory}/meta.json"))
            committed = self._fs.size(f"{directory}/part")
        except FileNotFoundError:
            raise NotFound(
                f"no open upload with id {upload_id!r} (it may have been finished or discarded)", field="upload_id"
            ) from None
        return UploadRecord(committed_bytes=int(committed), **meta)

    def _append(self, part: str, data: bytes) -> None:
        # Durable before returning: a client told "committed" must never have to resend.
        with self._fs.open(part, "ab") as target:
            target.write(data)
            if self._is_local:
                target.flush()
                os.fsync(target.fileno())

    def _delete_upload(self, upload_id: str) -> None:
        try:
            self._fs.rm(self._upload_dir(upload_id), recursive=True)
        except FileNotFoundError:
            pass
        with self._locks_guard:
            self._locks.pop(upload_id, None)

    def _lock_for(self, key: str) -> threading.Lock:
        with self._locks_guard:
            return self._locks.setdefault(key, threading.Lock())

    def _check_size_limit(self, size: int, field: str) -> None:
        if size > self.max_upload_bytes:
            raise ResourceExhausted(
                f"{size} bytes exceed the server's artifact size limit of {self.max_upload_bytes} bytes "
                "(setting max_upload_bytes)",
                field=field,
            )

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

    def _iter_chunks(self, path: str, offset: int, size: int, chunk_bytes: int) -> Iterator[bytes]:
        if self._is_local:
            with open(path, "rb") as source:
                source.seek(offset)
                while chunk := source.read(chunk_bytes):
                    yield chunk
            return
        # Ranged reads: no file object shared between concurrent downloads.
        while offset < size:
            end = min(offset + chunk_bytes, size)
            yield self._fs.cat_file(path, start=offset, end=end)
            offset = end

    # --- paths -----------------------------------------------------------------------------

    def _path(self, *parts: str) -> str:
        return "/".join((self._base, *parts))

    def _artifact_dir(self, artifact_id: str) -> str:
        return self._path("artifacts", artifact_id)

    def _content_path(self, artifact_id: str) -> str:
        return self._path("artifacts", artifact_id, "content")

    def _upload_dir(self, upload_id: str) -> str:
        return self._path("uploads", upload_id)

    def _staging_path(self) -> str:
        """A fresh local file name for a copy: inside the root when local (so the final move is
        a rename on one filesystem), else inside the cache folder."""
        folder = self._path("staging") if self._is_local else os.path.join(self._local_cache_dir(), "staging")
        os.makedirs(folder, exist_ok=True)
        return os.path.join(folder, uuid.uuid4().hex)

    def _cached_path(self, artifact_id: str) -> str:
        return os.path.join(self._local_cache_dir(), artifact_id, "content")

    def _local_cache_dir(self) -> str:
        if self._cache_dir is None:
            self._cache_dir = tempfile.mkdtemp(prefix="equiprune-artifacts-")
        return self._cache_dir

    def _write_json_atomically(self, path: str, value: dict) -> None:
        """Writes under a temporary name, then moves: readers see all of it or nothing."""
        temporary = f"{path}.tmp-{uuid.uuid4().hex}"
        self._fs.pipe_file(temporary, json.dumps(value, allow_nan=False).encode())
        self._fs.mv(temporary, path)


# --- validation helpers --------------------------------------------------------------------


def _check_kind(kind: str, field: str) -> None:
    if kind not in KINDS:
        raise InvalidArgument(f"unknown artifact kind {kind!r}; known kinds are {list(KINDS)}", field=field)


def _check_display_name(name: str) -> None:
    if len(name) > MAX_DISPLAY_NAME:
        raise InvalidArgument(
            f"display_name has {len(name)} characters; at most {MAX_DISPLAY_NAME} are allowed", field="display_name"
        )
    if "/" in name or "\x00" in name:
        raise InvalidArgument("display_name must not contain '/' or NUL characters", field="display_name")


def _normalise_sha256(value: str, field: str) -> str:
    digest = value.lower() if isinstance(value, str) else ""
    if not _SHA256.match(digest):
        raise InvalidArgument(f"{field} must be 64 hex digits, not {value!r}", field=field)
    return digest


def _check_id(value: str, pattern: re.Pattern, field: str) -> None:
    # The id becomes part of a path: anything but the exact pattern is refused before use.
    if not isinstance(value, str) or not pattern.match(value):
        example = "art-" if field == "artifact_id" else "upl-"
        raise InvalidArgument(f"{field} {value!r} is not a valid id ({example} followed by 16 hex digits)", field=field)


def _run_validator(validate: Validator | None, path: str, kind: str) -> dict[str, str]:
    if validate is None:
        return {}
    return {str(k): str(v) for k, v in (validate(path, kind) or {}).items()}


def _upload_meta(upload: UploadRecord) -> dict:
    meta = dataclasses.asdict(upload)
    del meta["committed_bytes"]  # the part file's size is the truth
    return meta


def sha256_of_file(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as source:
        while block := source.read(COPY_BLOCK_BYTES):
            digest.update(block)
    return digest.hexdigest()


def _remove_local(path: str) -> None:
    try:
        os.remove(path)
    except FileNotFoundError:
        pass
