"""Job state and job event history, behind a small interface; SQLite by default.

A job moves queued -> running -> succeeded | failed | cancelled (a service restart may move a
running job back to queued). Every change appends an event with a per-job sequence 1, 2, 3…
without gaps, written in the same transaction as the change, so a watcher that resumes from
the last sequence it saw misses nothing. The first terminal state wins: a cancel that races a
success cannot flip it.

The SQLite store keeps one connection guarded by a lock (safe across threads) and uses
`BEGIN IMMEDIATE` transactions plus a UNIQUE index on the idempotency key (safe across
processes sharing the file). Reopening the file sees everything written before.

This module holds the interface and the SQLite store's connection and writes; queries.py its
reads, records.py the records, schema and row conversion, paging.py the page tokens.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import time
import uuid
from collections.abc import Collection
from typing import Protocol

from equiprune.service.errors import AlreadyExists
from equiprune.service.jobs.queries import JobQueries
from equiprune.service.sqlite_file import SqliteFile
from equiprune.service.jobs.records import (
    _INDEXES, _JOB_COLUMNS, _MIGRATIONS, _SCHEMA, TERMINAL, JobEventRecord, JobRecord, _require_job, _select_job, _to_json,
)


class JobStore(Protocol):
    """What the job manager needs from a job store."""

    def create(self, kind: str, spec: dict, request_id: str | None = None,
               tenant: str = "admin") -> tuple[JobRecord, bool]: ...

    def get(self, job_id: str) -> JobRecord: ...

    def list(
        self,
        states: Collection[str] = (),
        kind: str | None = None,
        page_size: int = 50,
        page_token: str = "",
        tenant: str | None = None,
    ) -> tuple[list[JobRecord], str]: ...

    def find_request(self, request_id: str, tenant: str = "admin") -> JobRecord | None: ...

    def mark_running(self, job_id: str) -> JobRecord: ...

    def record_progress(self, job_id: str, progress: dict) -> JobEventRecord | None: ...

    def finish(
        self, job_id: str, state: str, *, result: dict | None = None, error: dict | None = None
    ) -> JobRecord: ...

    def requeue(self, job_id: str, message: str) -> JobRecord: ...

    def events_since(self, job_id: str, after_sequence: int, limit: int = 1000) -> list[JobEventRecord]: ...

    def last_sequence(self, job_id: str) -> int: ...

    def unfinished(self) -> list[JobRecord]: ...

    def count_in_states(self, states: Collection[str], tenant: str | None = None) -> int: ...

    def close(self) -> None: ...


def spec_digest(spec: dict) -> str:
    """The sha256 of the spec's canonical JSON: equal specs give equal digests."""
    canonical = json.dumps(spec, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def new_job_id() -> str:
    return "job-" + uuid.uuid4().hex[:16]


class SqliteJobStore(SqliteFile, JobQueries):
    """A `JobStore` in one SQLite file (WAL mode), shared safely by threads and processes."""

    def __init__(self, path: str | os.PathLike) -> None:
        SqliteFile.__init__(self, path, _SCHEMA)
        with self._lock:
            self._migrate()

    def _migrate(self) -> None:
        columns = {row["name"] for row in self._conn.execute("PRAGMA table_info(jobs)")}
        for column, statement in _MIGRATIONS:
            if column not in columns:
                self._conn.execute(statement)
        self._conn.executescript(_INDEXES)

    def create(self, kind: str, spec: dict, request_id: str | None = None,
               tenant: str = "admin") -> tuple[JobRecord, bool]:
        digest = spec_digest(spec)
        spec_json = _to_json(spec)
        job_id = new_job_id()
        now = time.time()
        queued = {"phase": "queued"}
        with self._transaction() as conn:
            if request_id is not None:
                existing = _select_job(conn, "tenant = ? AND request_id = ?", (tenant, request_id))
                if existing is not None:
                    return _same_request(existing, digest, request_id), False
            conn.execute(
                f"INSERT INTO jobs ({_JOB_COLUMNS}) VALUES (?, ?, ?, ?, 'queued', ?, ?, NULL, NULL, 0, ?, NULL, NULL, ?)",
                (job_id, kind, spec_json, digest, request_id, now, _to_json(queued), tenant),
            )
            _append_event(conn, job_id, now, "queued", queued)
            return _select_job(conn, "job_id = ?", (job_id,)), True

    def find_request(self, request_id: str, tenant: str = "admin") -> JobRecord | None:
        """The job `tenant` created with this idempotency key, if any."""
        with self._lock:
            return _select_job(self._conn, "tenant = ? AND request_id = ?", (tenant, request_id))

    def mark_running(self, job_id: str) -> JobRecord:
        """queued -> running (a new attempt); a terminal job comes back unchanged.

        A job already running (its last attempt died with the service and nobody requeued it)
        starts another attempt. The latest progress is cleared: the job's task reports the first
        phase of the new attempt.
        """
        now = time.time()
        with self._transaction() as conn:
            job = _require_job(conn, job_id)
            if job.done:
                return job
            conn.execute(
                "UPDATE jobs SET state = 'running', attempt = attempt + 1, "
                "start_time = COALESCE(start_time, ?), progress = NULL WHERE job_id = ?",
                (now, job_id),
            )
            _append_event(conn, job_id, now, "running", None)
            return _require_job(conn, job_id)

    def record_progress(self, job_id: str, progress: dict) -> JobEventRecord | None:
        """Stores the latest progress and appends it as an event; None when the job is done."""
        progress_json = _to_json(progress)
        now = time.time()
        with self._transaction() as conn:
            job = _require_job(conn, job_id)
            if job.done:
                return None
            conn.execute("UPDATE jobs SET progress = ? WHERE job_id = ?", (progress_json, job_id))
            sequence = _append_event(conn, job_id, now, job.state, progress)
            return JobEventRecord(job_id, sequence, now, job.state, json.loads(progress_json))

    def finish(
        self, job_id: str, state: str, *, result: dict | None = None, error: dict | None = None
    ) -> JobRecord:
        """Moves the job to a terminal state, unless it already is in one (first one wins)."""
        if state not in TERMINAL:
            raise ValueError(f"finish needs a terminal state {TERMINAL}, not {state!r}")
        final = _final_progress(state, error)
        result_json, error_json, final_json = _to_json(result), _to_json(error), _to_json(final)
        now = time.time()
        with self._transaction() as conn:
            job = _require_job(conn, job_id)
            if job.done:
                return job
            conn.execute(
                "UPDATE jobs SET state = ?, end_time = ?, result = ?, error = ?, progress = ? WHERE job_id = ?",
                (state, now, result_json, error_json, final_json, job_id),
            )
            _append_event(conn, job_id, now, state, final)
            return _require_job(conn, job_id)

    def requeue(self, job_id: str, message: str) -> JobRecord:
        """After a service restart: running/queued -> queued; a terminal job comes back unchanged."""
        progress = {"phase": "queued", "message": message}
        now = time.time()
        with self._transaction() as conn:
            job = _require_job(conn, job_id)
            if job.done:
                return job
            conn.execute(
                "UPDATE jobs SET state = 'queued', progress = ? WHERE job_id = ?", (_to_json(progress), job_id)
            )
            _append_event(conn, job_id, now, "queued", progress)
            return _require_job(conn, job_id)


# --- write helpers -------------------------------------------------------------------------


def _append_event(conn: sqlite3.Connection, job_id: str, when: float, state: str, progress: dict | None) -> int:
    """Appends the next event of `job_id` (inside the caller's transaction); returns its sequence."""
    conn.execute("UPDATE jobs SET last_sequence = last_sequence + 1 WHERE job_id = ?", (job_id,))
    sequence = conn.execute("SELECT last_sequence FROM jobs WHERE job_id = ?", (job_id,)).fetchone()[0]
    conn.execute(
        "INSERT INTO job_events (job_id, sequence, time, state, progress) VALUES (?, ?, ?, ?, ?)",
        (job_id, sequence, when, state, _to_json(progress)),
    )
    return sequence


def _same_request(existing: JobRecord, digest: str, request_id: str) -> JobRecord:
    if existing.spec_digest != digest:
        raise AlreadyExists(
            f"request id {request_id!r} was already used for job {existing.job_id} with a different spec; "
            "use a new request id for a different job",
            field="request_id",
        )
    return existing


def _final_progress(state: str, error: dict | None) -> dict:
    if state == "succeeded":
        return {"phase": "done"}
    return {"phase": state, "message": (error or {}).get("message", "")}
