"""How content gets into the artifact store: copying it to a local file while hashing it,
placing the verified copy, writing the record last, and the paths and local cache involved.

`ContentPlacement` is a part of `ArtifactStore` (store.py), which sets up the filesystem
(`_fs`, `_base`, `_is_local`), the record cache, the locks and the cache folder it uses.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from typing import BinaryIO

from equiprune.service.errors import ResourceExhausted
from equiprune.service.artifacts.records import COPY_BLOCK_BYTES, ArtifactRecord, _Copied, _remove_local, sha256_of_file


class ContentPlacement:
    """The copying and placing half of `ArtifactStore`."""

    def _store(
        self,
        kind: str,
        display_name: str,
        source: str,
        copy: _Copied,
        description: dict[str, str],
        place: Callable[[str], None],
        tenant: str,
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
            tenant=tenant,
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

    # --- paths -----------------------------------------------------------------------------

    def _path(self, *parts: str) -> str:
        return "/".join((self._base, *parts))

    def _artifact_dir(self, artifact_id: str) -> str:
        return self._path("artifacts", artifact_id)

    def _content_path(self, artifact_id: str) -> str:
        return self._path("artifacts", artifact_id, "content")

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
