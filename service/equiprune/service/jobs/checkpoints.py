"""Running jobs' fine-tuning checkpoints, kept in the artifact store so a job resumes on any node.

The engine writes a job's checkpoint into the job's working folder on the node that runs it
(`<data-dir>/jobs/<job-id>/work/checkpoint.pt`, by the sandboxed worker for a single-worker
job). That folder dies with its node, so the job's Ray task copies every new checkpoint into
the artifact store's filesystem (the same root, local folder or fsspec URL, as the artifacts;
never an artifact record):

    <artifact root>/checkpoints/<job-id>/<version>.pt    the bytes, as the worker wrote them
    <artifact root>/checkpoints/<job-id>/latest.json     which version is the newest, its size and
                                                         sha256, the epochs it completed, and
                                                         the local file's mtime it was copied from

The bytes go first under a name of their own, then `latest.json` is written under a temporary
name and moved over the old one, so a reader sees a complete checkpoint or the previous one.
The task only copies bytes: it never loads a checkpoint (a sandbox wrote it; only the next
sandboxed run of the same job reads it, and the engine checks it belongs to the same run).

When a run starts, `restore` puts the newest stored checkpoint into the fresh working folder
unless the local one (from a previous run on this node) is at least as new. The job manager
removes a job's stored checkpoints once the job has ended.

Which epoch a copied checkpoint ends: the task sees every event of the run (`notice`), and
checks the file after each one. The engine reports a step before writing an epoch-end
checkpoint, and writes a mid-epoch one before reporting its step, so the version found after
the event of global step L was written at step L-1, L or L+1; with at least two steps per
epoch, L // steps_per_epoch is the number of epochs it completed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import stat
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import fsspec

log = logging.getLogger("equiprune.service.jobs.checkpoints")

CHECKPOINT = "checkpoint.pt"
LATEST = "latest.json"
MAX_META_BYTES = 4096
COPY_BLOCK = 4 * 2**20
STEPPING_PHASES = ("train", "finetune")  # the phases whose loop writes checkpoints


@dataclass(frozen=True)
class StoredCheckpoint:
    """What `latest.json` says about a job's newest stored checkpoint."""

    file: str
    size_bytes: int
    sha256: str
    epochs_done: int | None  # None: not known (copied before the run reported a step)
    epochs: int | None
    written_at: float  # mtime of the local file it was copied from
    node_id: str = ""

    def to_dict(self) -> dict:
        return dict(vars(self))

    @classmethod
    def from_dict(cls, value: dict) -> StoredCheckpoint:
        def whole(name):
            item = value.get(name)
            return item if isinstance(item, int) and not isinstance(item, bool) and item >= 0 else None

        file, sha256 = value.get("file"), value.get("sha256")
        if not (isinstance(file, str) and file.endswith(".pt") and "/" not in file and file[:1] not in ("", ".")
                and isinstance(sha256, str) and len(sha256) == 64 and whole("size_bytes") is not None
                and isinstance(value.get("written_at"), (int, float))):
            raise ValueError("malformed checkpoint record")
        return cls(file, whole("size_bytes"), sha256, whole("epochs_done"), whole("epochs"),
                   float(value["written_at"]), str(value.get("node_id") or "")[:64])

    def describe(self) -> str:
        """'the checkpoint written after epoch 88 of 400', for a job's history."""
        if self.epochs_done is None:
            return "its last stored checkpoint"
        of = f" of {self.epochs}" if self.epochs else ""
        if self.epochs_done == 0:
            return f"a checkpoint written during epoch 1{of}"
        return f"the checkpoint written after epoch {self.epochs_done}{of}"


class CheckpointStore:
    """The `checkpoints/` part of the artifact store's filesystem."""

    def __init__(self, root: str) -> None:
        self._fs, base = fsspec.core.url_to_fs(str(root))
        self._base = base.rstrip("/")

    @classmethod
    def from_settings(cls, settings) -> CheckpointStore:
        return cls(settings.artifacts)

    def _dir(self, job_id: str) -> str:
        if not job_id or "/" in job_id or job_id.startswith("."):
            raise ValueError(f"not a job id: {job_id!r}")
        return f"{self._base}/checkpoints/{job_id}"

    def latest(self, job_id: str) -> StoredCheckpoint | None:
        """The newest stored checkpoint's record, or None (none, or an unreadable record)."""
        path = f"{self._dir(job_id)}/{LATEST}"
        try:
            self._fs.invalidate_cache(self._dir(job_id))
            if not self._fs.exists(path):
                return None
            with self._fs.open(path, "rb") as stream:
                return StoredCheckpoint.from_dict(json.loads(stream.read(MAX_META_BYTES + 1)[:MAX_META_BYTES]))
        except Exception as err:  # noqa: BLE001 - a damaged record is no checkpoint, never a failure
            log.warning("job %s: its stored checkpoint record is unreadable (%s)", job_id, err)
            return None

    def save(self, job_id: str, source, size: int, *, epochs_done: int | None, epochs: int | None,
             written_at: float, node_id: str = "") -> StoredCheckpoint:
        """Copy `size` bytes of `source` as the job's newest checkpoint; older versions go."""
        directory = self._dir(job_id)
        self._fs.makedirs(directory, exist_ok=True)
        name = f"{time.time_ns():020d}-{uuid.uuid4().hex[:8]}.pt"
        digest, left = hashlib.sha256(), size
        with self._fs.open(f"{directory}/{name}", "wb") as target:
            while left > 0:
                block = source.read(min(COPY_BLOCK, left))
                if not block:
                    break
                digest.update(block)
                target.write(block)
                left -= len(block)
        if left:
            self._remove_quietly(f"{directory}/{name}")
            raise OSError(f"the checkpoint ended {left} bytes short while it was copied")
        record = StoredCheckpoint(name, size, digest.hexdigest(), epochs_done, epochs, written_at, node_id)
        temporary = f"{directory}/{LATEST}.tmp-{uuid.uuid4().hex}"
        self._fs.pipe_file(temporary, json.dumps(record.to_dict()).encode())
        self._fs.mv(temporary, f"{directory}/{LATEST}")
        self._prune(directory, keep=name)
        return record

    def fetch(self, job_id: str, record: StoredCheckpoint, target: Path) -> bool:
        """Copy a stored checkpoint to the local file `target` (via a temporary name), checking
        its size and sha256 on the way; False (and nothing written) when they do not match."""
        temporary = target.with_name(f".{target.name}.restore-{uuid.uuid4().hex}")
        digest, size = hashlib.sha256(), 0
        try:
            with self._fs.open(f"{self._dir(job_id)}/{record.file}", "rb") as source, open(temporary, "wb") as out:
                while block := source.read(COPY_BLOCK):
                    size += len(block)
                    if size > record.size_bytes:
                        break
                    digest.update(block)
                    out.write(block)
            if size != record.size_bytes or digest.hexdigest() != record.sha256:
                log.error("job %s: stored checkpoint %s does not match its record (size %d, expected %d); not used",
                          job_id, record.file, size, record.size_bytes)
                return False
            os.utime(temporary, (record.written_at, record.written_at))
            os.replace(temporary, target)
            return True
        finally:
            if temporary.exists():
                temporary.unlink()

    def remove(self, job_id: str) -> None:
        """Forget every stored checkpoint of the job (it has ended)."""
        directory = self._dir(job_id)
        try:
            self._fs.invalidate_cache(directory)
            if self._fs.exists(directory):
                self._fs.rm(directory, recursive=True)
        except FileNotFoundError:
            pass

    def _prune(self, directory: str, keep: str) -> None:
        try:
            self._fs.invalidate_cache(directory)
            for entry in self._fs.ls(directory, detail=False):
                name = entry.rstrip("/").rsplit("/", 1)[-1]
                if name != keep and name != LATEST and (name.endswith(".pt") or ".tmp-" in name):
                    self._remove_quietly(entry)
        except Exception as err:  # noqa: BLE001 - an old version left behind is harmless
            log.warning("could not remove old checkpoints in %s: %s", directory, err)

    def _remove_quietly(self, path: str) -> None:
        try:
            self._fs.rm(path)
        except Exception:  # noqa: BLE001
            pass


def local_signature(path: Path) -> tuple[int, int, int] | None:
    """(inode, mtime_ns, size) of a plain file, not followed through a link; None otherwise."""
    try:
        info = os.lstat(path)
    except OSError:
        return None
    if not stat.S_ISREG(info.st_mode):
        return None
    return info.st_ino, info.st_mtime_ns, info.st_size


class CheckpointKeeper:
    """One run's side of it, in the job's Ray task: restore before the run, then copy each new
    checkpoint the run writes into the store (a thread of its own does the copying, so the
    run's events are never held up by it)."""

    def __init__(self, store: CheckpointStore, job_id: str, work_dir: Path, open_plain, node_id: str = "") -> None:
        self.store, self.job_id, self.work_dir = store, job_id, Path(work_dir)
        self._open_plain = open_plain  # (folder, name) -> binary stream, no links followed
        self.node_id = node_id
        self._seen: tuple[int, int, int] | None = None
        self._last_step: tuple[int, int, int] | None = None  # (step, total_steps, epochs)
        self._pending: tuple | None = None
        self._wake = threading.Condition()
        self._closed = False
        self._thread: threading.Thread | None = None
        self.saved = 0

    @property
    def local(self) -> Path:
        return self.work_dir / CHECKPOINT

    def restore(self) -> tuple[str, StoredCheckpoint | None]:
        """Before the run: the newest checkpoint into the working folder. Returns what it will
        resume from — ("stored", record), ("local", record or None) or ("none", None)."""
        try:
            record = self.store.latest(self.job_id)
        except Exception as err:  # noqa: BLE001 - the store unreachable: the local one, if any
            log.warning("job %s: stored checkpoints unreadable (%s)", self.job_id, err)
            record = None
        local = local_signature(self.local)
        if record is not None and (local is None or local[1] / 1e9 < record.written_at - 1e-3):
            try:
                if self.store.fetch(self.job_id, record, self.local):
                    self._seen = local_signature(self.local)
                    return "stored", record
            except Exception as err:  # noqa: BLE001
                log.warning("job %s: could not restore its stored checkpoint (%s)", self.job_id, err)
            local = local_signature(self.local)
        if local is not None:
            if record is not None and abs(local[1] / 1e9 - record.written_at) <= 1e-3:
                self._seen = local  # the very version already stored
                return "local", record
            return "local", None
        return "none", None

    def watching(self, emit):
        """`emit`, preceded by a look for a new checkpoint after every event."""
        def on_event(progress) -> None:
            try:
                self.notice(progress)
            except Exception:  # noqa: BLE001 - keeping checkpoints must never stop the job
                log.exception("job %s: checking for a new checkpoint failed", self.job_id)
            emit(progress)

        return on_event

    def notice(self, progress) -> None:
        if isinstance(progress, dict) and progress.get("phase") in STEPPING_PHASES:
            values = tuple(progress.get(k) for k in ("step", "total_steps", "epochs"))
            if all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in values):
                self._last_step = values
        if self._last_step is None:
            return  # no step yet: any file now is the one restored (or the previous run's)
        signature = local_signature(self.local)
        if signature is None or signature == self._seen:
            return
        try:
            stream = self._open_plain(self.work_dir, CHECKPOINT)  # pins this version
        except Exception as err:  # noqa: BLE001 - a link or gone: nothing to copy
            log.warning("job %s: its checkpoint cannot be read safely (%s)", self.job_id, err)
            self._seen = signature
            return
        info = os.fstat(stream.fileno())
        self._seen = (info.st_ino, info.st_mtime_ns, info.st_size)
        step, total, epochs = self._last_step
        per_epoch = max(total // epochs, 1)
        done = (step - 1 if per_epoch == 1 else step) // per_epoch
        job = (stream, info.st_size, info.st_mtime_ns / 1e9, min(done, epochs), epochs)
        with self._wake:
            if self._pending is not None:
                self._pending[0].close()  # superseded before it was copied
            self._pending = job
            if self._thread is None:
                self._thread = threading.Thread(target=self._copy_loop, name=f"checkpoints-{self.job_id}",
                                                daemon=True)
                self._thread.start()
            self._wake.notify()

    def close(self, timeout: float = 60.0, *, copy_pending: bool = False) -> None:
        """Stop copying: what is being copied finishes; what waits is dropped (the run is over,
        its job ends with it), or with `copy_pending` copied first."""
        with self._wake:
            if copy_pending:
                self._wake.wait_for(lambda: self._pending is None or self._thread is None, timeout)
            self._closed = True
            if self._pending is not None:
                self._pending[0].close()
                self._pending = None
            self._wake.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)

    def _copy_loop(self) -> None:
        while True:
            with self._wake:
                while self._pending is None and not self._closed:
                    self._wake.wait()
                if self._closed:
                    return
                stream, size, mtime, done, epochs = self._pending
                self._pending = None
                self._wake.notify_all()  # `close(copy_pending=True)` waits for this
            try:
                with stream:
                    self.store.save(self.job_id, stream, size, epochs_done=done, epochs=epochs, written_at=mtime,
                                    node_id=self.node_id)
                self.saved += 1
            except Exception as err:  # noqa: BLE001 - the next checkpoint tries again
                log.warning("job %s: could not store its checkpoint (%s)", self.job_id, err)
