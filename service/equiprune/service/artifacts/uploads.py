"""Resumable chunked uploads into the artifact store: start, commit chunks, finish.

`UploadSessions` is a part of `ArtifactStore` (store.py), which supplies the filesystem, the
paths and the placing of verified content (placement.py). A session's state is its files,
`uploads/<upl-id>/part` and `meta.json`, so an upload survives a service restart; a finished
session leaves `finished-uploads/<upl-id>.json` so a retried finish finds its artifact.

Hygiene (issue #11 measured 200 sessions announcing 2 GiB each accepted on a smaller disk,
kept forever): a session not finished within `upload_ttl_s` of its start is removed with its
bytes — swept at every start and found expired on any later call — and a new session is
refused (RESOURCE_EXHAUSTED naming `size_bytes`) when the bytes every open session still
announces would not fit in the free disk less `free_disk_reserve_bytes` (local stores; an
object store has no disk to run out of here).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import shutil
import time
import uuid

from equiprune.service.errors import FailedPrecondition, InvalidArgument, NotFound, ResourceExhausted
from equiprune.service.artifacts.records import (
    _UPLOAD_ID, OWNER_BEFORE_TENANTS, ArtifactRecord, UploadRecord, Validator, _check_display_name, _check_id,
    _check_kind,
    _normalise_sha256, _run_validator,
)

log = logging.getLogger("equiprune.service.artifacts")


class UploadSessions:
    """The upload half of `ArtifactStore`."""

    def start_upload(self, kind: str, display_name: str, size_bytes: int, sha256: str, *,
                     tenant: str = OWNER_BEFORE_TENANTS,
                     quotas=None) -> UploadRecord:
        """A new session of `tenant`. `quotas` (tenants.Quotas) bound its open sessions and its
        stored plus announced bytes."""
        _check_kind(kind, "kind")
        _check_display_name(display_name)
        if size_bytes < 1:
            raise InvalidArgument(f"size_bytes must be at least 1, not {size_bytes}", field="size_bytes")
        self._check_size_limit(size_bytes, "size_bytes")
        # Checked and created under one lock: concurrent starts in this replica cannot both pass
        # the quota or the free disk (the ingress runs one replica; several would need a lock file).
        with self._lock_for("new-upload-sessions"):
            open_sessions = self.expire_uploads()
            if quotas is not None:
                self._check_quotas(tenant, size_bytes, [u for u in open_sessions if u.tenant == tenant], quotas)
            self._check_free_disk(size_bytes, open_sessions)
            upload = UploadRecord(
                upload_id="upl-" + uuid.uuid4().hex[:16],
                kind=kind,
                display_name=display_name,
                size_bytes=size_bytes,
                sha256=_normalise_sha256(sha256, "sha256"),
                committed_bytes=0,
                create_time=time.time(),
                tenant=tenant,
            )
            directory = self._upload_dir(upload.upload_id)
            self._fs.makedirs(directory, exist_ok=True)
            self._fs.pipe_file(f"{directory}/part", b"")
            self._write_json_atomically(f"{directory}/meta.json", _upload_meta(upload))
            return upload

    def put_chunk(self, upload_id: str, offset: int, data: bytes, *, tenant: str | None = None) -> int:
        """Commits `data` at `offset`; returns the bytes committed so far."""
        _check_id(upload_id, _UPLOAD_ID, "upload_id")
        with self._lock_for(upload_id):
            upload = self._read_upload(upload_id, tenant)
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

    def expire_uploads(self) -> list[UploadRecord]:
        """Remove every session older than `upload_ttl_s`; the ones still open."""
        try:
            entries = self._fs.ls(self._path("uploads"), detail=False)
        except FileNotFoundError:
            return []
        still_open = []
        for entry in entries:
            upload_id = os.path.basename(entry.rstrip("/"))
            if not _UPLOAD_ID.match(upload_id):
                continue
            try:
                still_open.append(self._read_upload(upload_id))
            except NotFound:
                continue  # expired (and removed) or finished meanwhile
        return still_open

    def _check_quotas(self, tenant: str, size_bytes: int, open_sessions: list[UploadRecord], quotas) -> None:
        if len(open_sessions) >= quotas.max_upload_sessions:
            raise ResourceExhausted(
                f"tenant {tenant} has {len(open_sessions)} open upload sessions, its quota max_upload_sessions; "
                "finish or let some expire first", field="quotas.max_upload_sessions")
        held = self.held_bytes(tenant, open_sessions)
        if held + size_bytes > quotas.max_stored_bytes:
            raise ResourceExhausted(
                f"tenant {tenant} holds {held} bytes (stored and announced by open uploads); {size_bytes} more "
                f"would pass its quota max_stored_bytes of {quotas.max_stored_bytes}", field="quotas.max_stored_bytes")

    def held_bytes(self, tenant: str, open_sessions: list[UploadRecord] | None = None) -> int:
        """What counts against `tenant`'s max_stored_bytes: its stored artifacts, the full sizes
        its open upload sessions announced (`open_sessions`: those, when already read) and the
        bytes its running imports reserved (`quota_reservation`)."""
        sessions = self.open_uploads(tenant) if open_sessions is None else open_sessions
        return self.stored_bytes(tenant) + sum(u.size_bytes for u in sessions) + self._reserved.get(tenant, 0)

    @contextlib.contextmanager
    def quota_reservation(self, tenant: str, quotas):
        """Yields `reserve(size)` for an import: refuses when `size` more bytes would pass
        `tenant`'s max_stored_bytes (`held_bytes`, so uploads and other imports count), and
        holds the bytes until the import ends, stored or not. Under the lock upload starts take:
        an import and an upload started together cannot both pass the quota."""
        held = 0

        def reserve(size: int) -> None:
            nonlocal held
            with self._lock_for("new-upload-sessions"):
                holds = self.held_bytes(tenant)
                if holds + size > quotas.max_stored_bytes:
                    raise ResourceExhausted(
                        f"tenant {tenant} holds {holds} bytes (stored, announced by open uploads, being "
                        f"imported); {size} more would pass its quota max_stored_bytes of "
                        f"{quotas.max_stored_bytes}", field="quotas.max_stored_bytes")
                self._reserved[tenant] = self._reserved.get(tenant, 0) + size
                held += size
        try:
            yield reserve
        finally:
            with self._lock_for("new-upload-sessions"):
                left = self._reserved.get(tenant, 0) - held
                if left > 0:
                    self._reserved[tenant] = left
                else:
                    self._reserved.pop(tenant, None)

    def open_uploads(self, tenant: str) -> list[UploadRecord]:
        return [u for u in self.expire_uploads() if u.tenant == tenant]

    def _check_free_disk(self, size_bytes: int, open_sessions: list[UploadRecord]) -> None:
        if not self._is_local:
            return
        announced = sum(u.size_bytes - u.committed_bytes for u in open_sessions)
        free = shutil.disk_usage(self._path("uploads")).free - self.free_disk_reserve_bytes
        if announced + size_bytes > free:
            # Other tenants' sessions are part of the sum: the client is told no counts.
            log.warning("upload refused for want of disk: %d open sessions announce %d bytes, %d asked, %d free "
                        "beyond the reserve", len(open_sessions), announced, size_bytes, max(free, 0))
            raise ResourceExhausted(
                f"the server cannot take {size_bytes} more bytes now: its disk, less what open uploads still need "
                "and its reserve (settings free_disk_reserve_bytes, upload_ttl_s), is too small; try again later "
                "or with less", field="size_bytes")

    def get_upload(self, upload_id: str, *, tenant: str | None = None) -> UploadRecord:
        _check_id(upload_id, _UPLOAD_ID, "upload_id")
        return self._read_upload(upload_id, tenant)

    def finish_upload(self, upload_id: str, validate: Validator | None = None, *,
                      tenant: str | None = None) -> ArtifactRecord:
        """Checks the digest, validates, and stores the upload as an artifact.

        A digest mismatch or a validator refusal deletes the session: its bytes are not what
        the client meant to send, so the client starts again. The validator's exception
        propagates unchanged.
        """
        _check_id(upload_id, _UPLOAD_ID, "upload_id")
        with self._lock_for(upload_id):
            finished = self._finished_upload(upload_id, tenant)
            if finished is not None:
                # A retry after a lost reply: the same artifact, not NOT_FOUND.
                return finished
            upload = self._read_upload(upload_id, tenant)
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
                    tenant=upload.tenant,
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

    def _finished_upload(self, upload_id: str, tenant: str | None) -> ArtifactRecord | None:
        try:
            marker = json.loads(self._fs.cat_file(self._path("finished-uploads", f"{upload_id}.json")))
        except FileNotFoundError:
            return None
        try:
            return self.get(marker["artifact_id"], tenant)
        except NotFound:
            raise _no_upload(upload_id) from None

    # --- plumbing --------------------------------------------------------------------------

    def _read_upload(self, upload_id: str, tenant: str | None = None) -> UploadRecord:
        """The open session; with `tenant`, only that tenant's (another's is NOT_FOUND in the
        same words as one that does not exist)."""
        directory = self._upload_dir(upload_id)
        try:
            meta = json.loads(self._fs.cat_file(f"{directory}/meta.json"))
            committed = self._fs.size(f"{directory}/part")
        except FileNotFoundError:
            raise _no_upload(upload_id) from None
        upload = UploadRecord(committed_bytes=int(committed), **meta)
        if tenant is not None and upload.tenant != tenant:
            raise _no_upload(upload_id)
        if time.time() - upload.create_time > self.upload_ttl_s:
            self._delete_upload(upload_id)
            raise NotFound(f"upload {upload_id} expired: it was not finished within {self.upload_ttl_s:g} s of its "
                           "start (setting upload_ttl_s); its bytes were removed — start a new one", field="upload_id")
        return upload

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

    def _upload_dir(self, upload_id: str) -> str:
        return self._path("uploads", upload_id)


def _no_upload(upload_id: str) -> NotFound:
    return NotFound(f"no open upload with id {upload_id!r} (it may have been finished or discarded)",
                    field="upload_id")


def _upload_meta(upload: UploadRecord) -> dict:
    meta = dataclasses.asdict(upload)
    del meta["committed_bytes"]  # the part file's size is the truth
    return meta
