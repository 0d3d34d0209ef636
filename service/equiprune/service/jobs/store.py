"""Job state and job event history, behind a small interface; SQLite by default.

A job moves queued -> running -> succeeded | failed | cancelled (a service restart may move a
running job back to queued). Every change appends an event with a per-job sequence 1, 2, 3…
without gaps, written in the same transaction as the change, so a watcher that resumes from
the last sequence it saw misses nothing. The first terminal state wins: a cancel that races a
success cannot flip it.

The SQLite store keeps one connection guarded by a lock (safe across threads) and uses
`BEGIN IMMEDIATE` transactions plus a UNIQUE index on the idempotency key (safe across
processes sharing the file). Reopening the file sees everything written before.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import sqlite3
import threading
import time
import uuid
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from equiprune.service.errors import AlreadyExists, InvalidArgument, NotFound

TERMINAL = ("succeeded", "failed", "cancelled")
STATES = ("queued", "running", *TERMINAL)
MAX_PAGE_SIZE = 1000


@dataclass(frozen=True)
class JobRecord:
    """One job as stored."""

    job_id: str
    kind: str
    spec: dict
    spec_digest: str
    state: str
    request_id: str | None
    create_time: float
    start_time: float | None
    end_time: float | None
    attempt: int
    progress: dict | None
    error: dict | None
    result: dict | None

    @property
    def done(self) -> bool:
        return self.state in TERMINAL


@dataclass(frozen=True)
class JobEventRecord:
    """One entry of a job's history: the state after the change and the progress it carried."""

    job_id: str
    sequence: int
    time: float
    state: str
    progress: dict | None


class JobStore(Protocol):
    """What the job manager needs from a job store."""

    def create(self, kind: str, spec: dict, request_id: str | None = None) -> tuple[JobRecord, bool]: ...

    def get(self, job_id: str) -> JobRecord: ...

    def list(
        self,
        states: Collection[str] = (),
        kind: str | None = None,
        page_size: int = 50,
        page_token: str = "",
    ) -> tuple[list[JobRecord], str]: ...

    def find_request(self, request_id: str) -> JobRecord | None: ...

    def mark_running(self, job_id: str) -> JobRecord: ...

    def record_progress(self, job_id: str, progress: dict) -> JobEventRecord | None: ...

    def finish(
        self, job_id: str, state: str, *, result: dict | None = None, error: dict | None = None
    ) -> JobRecord: ...

    def requeue(self, job_id: str, message: str) -> JobRecord: ...

    def events_since(self, job_id: str, after_sequence: int, limit: int = 1000) -> list[JobEventRecord]: ...

    def last_sequence(self, job_id: str) -> int: ...

    def unfinished(self) -> list[JobRecord]: ...

    def count_in_states(self, states: Collection[str]) -> int: ...

    def close(self) -> None: ...


def spec_digest(spec: dict) -> str:
    """The sha256 of the spec's canonical JSON: equal specs give equal digests."""
    canonical = json.dumps(spec, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def new_job_id() -> str:
    return "job-" + uuid.uuid4().hex[:16]


_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    job_id        TEXT PRIMARY KEY,
    kind          TEXT NOT NULL,
    spec          TEXT NOT NULL,
    spec_digest   TEXT NOT NULL,
    state         TEXT NOT NULL,
    request_id    TEXT,
    create_time   REAL NOT NULL,
    start_time    REAL,
    end_time      REAL,
    attempt       INTEGER NOT NULL DEFAULT 0,
    progress      TEXT,
    error         TEXT,
    result        TEXT,
    last_sequence INTEGER NOT NULL DEFAULT 0
);
CREATE UNIQUE INDEX IF NOT EXISTS jobs_request_id ON jobs (request_id) WHERE request_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS jobs_newest ON jobs (create_time DESC, job_id DESC);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs (state);
CREATE TABLE IF NOT EXISTS job_events (
    job_id   TEXT NOT NULL REFERENCES jobs (job_id),
    sequence INTEGER NOT NULL,
    time     REAL NOT NULL,
    state    TEXT NOT NULL,
    progress TEXT,
    PRIMARY KEY (job_id, sequence)
) WITHOUT ROWID;
"""

_JOB_COLUMNS = (
    "job_id, kind, spec, spec_digest, state, request_id, create_time, start_time, end_time, "
    "attempt, progress, error, result"
)


class SqliteJobStore:
    """A `JobStore` in one SQLite file (WAL mode), shared safely by threads and processes."""

    def __init__(self, path: str | os.PathLike) -> None:
        self._path = Path(path)
        self._path.parent.mkdir(parents=True, exist_ok=True)
        # One connection guarded by a lock: SQLite serialises writers anyway, and a single
        # connection keeps reads consistent with this process's own writes.
        self._lock = threading.Lock()
        self._conn = sqlite3.connect(self._path, timeout=30.0, check_same_thread=False, isolation_level=None)
        self._conn.row_factory = sqlite3.Row
        with self._lock:
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=NORMAL")
            self._conn.execute("PRAGMA foreign_keys=ON")
            self._conn.executescript(_SCHEMA)

    # --- writing ---------------------------------------------------------------------------

    def create(self, kind: str, spec: dict, request_id: str | None = None) -> tuple[JobRecord, bool]:
        digest = spec_digest(spec)
        spec_json = _to_json(spec)
        job_id = new_job_id()
        now = time.time()
        queued = {"phase": "queued"}
        with self._transaction() as conn:
            if request_id is not None:
                existing = _select_job(conn, "request_id = ?", (request_id,))
                if existing is not None:
                    return _same_request(existing, digest, request_id), False
            conn.execute(
                f"INSERT INTO jobs ({_JOB_COLUMNS}) VALUES (?, ?, ?, ?, 'queued', ?, ?, NULL, NULL, 0, ?, NULL, NULL)",
                (job_id, kind, spec_json, digest, request_id, now, _to_json(queued)),
            )
            _append_event(conn, job_id, now, "queued", queued)
            return _select_job(conn, "job_id = ?", (job_id,)), True

    def find_request(self, request_id: str) -> JobRecord | None:
        """The job created with this idempotency key, if any."""
        with self._lock:
            return _select_job(self._conn, "request_id = ?", (request_id,))

    def mark_running(self, job_id: str) -> JobRecord:
        """queued -> running (a new attempt); a terminal job comes back unchanged.

        A job already running (its last attempt died with the service and nobody requeued it)
        starts another attempt. The latest progress is cleared: the runner reports the first
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

    # --- reading ---------------------------------------------------------------------------

    def get(self, job_id: str) -> JobRecord:
        with self._locked() as conn:
            return _require_job(conn, job_id)

    def list(
        self,
        states: Collection[str] = (),
        kind: str | None = None,
        page_size: int = 50,
        page_token: str = "",
    ) -> tuple[list[JobRecord], str]:
        """One page of jobs, newest first, and the token of the next page ("" on the last)."""
        wanted = _check_states(states)
        check_page_size(page_size)
        filters = filter_digest(wanted, kind)
        where, params = [], []
        if wanted:
            where.append(f"state IN ({', '.join('?' * len(wanted))})")
            params.extend(wanted)
        if kind is not None:
            where.append("kind = ?")
            params.append(kind)
        if page_token:
            after_time, after_id = decode_page_token(page_token, filters)
            where.append("(create_time < ? OR (create_time = ? AND job_id < ?))")
            params.extend([after_time, after_time, after_id])
        clause = " AND ".join(where) or "1"
        with self._locked() as conn:
            rows = conn.execute(
                f"SELECT {_JOB_COLUMNS} FROM jobs WHERE {clause} "
                "ORDER BY create_time DESC, job_id DESC LIMIT ?",
                (*params, page_size + 1),
            ).fetchall()
        jobs = [_job_from_row(row) for row in rows[:page_size]]
        if len(rows) <= page_size:
            return jobs, ""
        last = jobs[-1]
        return jobs, encode_page_token(last.create_time, last.job_id, filters)

    def events_since(self, job_id: str, after_sequence: int, limit: int = 1000) -> list[JobEventRecord]:
        """Events with sequence > after_sequence, ascending, at most `limit`."""
        if limit < 1:
            raise ValueError(f"limit must be at least 1, not {limit}")
        with self._locked() as conn:
            _require_job(conn, job_id)
            rows = conn.execute(
                "SELECT job_id, sequence, time, state, progress FROM job_events "
                "WHERE job_id = ? AND sequence > ? ORDER BY sequence LIMIT ?",
                (job_id, after_sequence, limit),
            ).fetchall()
        return [
            JobEventRecord(row["job_id"], row["sequence"], row["time"], row["state"], _from_json(row["progress"]))
            for row in rows
        ]

    def last_sequence(self, job_id: str) -> int:
        with self._locked() as conn:
            row = conn.execute("SELECT last_sequence FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
        if row is None:
            raise _not_found(job_id)
        return row["last_sequence"]

    def unfinished(self) -> list[JobRecord]:
        """Queued and running jobs, oldest first (the order to resume them in)."""
        with self._locked() as conn:
            rows = conn.execute(
                f"SELECT {_JOB_COLUMNS} FROM jobs WHERE state IN ('queued', 'running') "
                "ORDER BY create_time, job_id"
            ).fetchall()
        return [_job_from_row(row) for row in rows]

    def count_in_states(self, states: Collection[str]) -> int:
        """How many jobs are in any of `states` (an empty collection counts nothing)."""
        wanted = _check_states(states)
        if not wanted:
            return 0
        with self._locked() as conn:
            row = conn.execute(
                f"SELECT COUNT(*) FROM jobs WHERE state IN ({', '.join('?' * len(wanted))})", wanted
            ).fetchone()
        return row[0]

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    # --- plumbing --------------------------------------------------------------------------

    @contextmanager
    def _locked(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            yield self._conn

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        # IMMEDIATE takes the write lock up front, so a read-then-write (idempotency check,
        # first-terminal-wins) cannot interleave with another process's write.
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")


# --- row helpers ---------------------------------------------------------------------------


def _append_event(conn: sqlite3.Connection, job_id: str, when: float, state: str, progress: dict | None) -> int:
    """Appends the next event of `job_id` (inside the caller's transaction); returns its sequence."""
    conn.execute("UPDATE jobs SET last_sequence = last_sequence + 1 WHERE job_id = ?", (job_id,))
    sequence = conn.execute("SELECT last_sequence FROM jobs WHERE job_id = ?", (job_id,)).fetchone()[0]
    conn.execute(
        "INSERT INTO job_events (job_id, sequence, time, state, progress) VALUES (?, ?, ?, ?, ?)",
        (job_id, sequence, when, state, _to_json(progress)),
    )
    return sequence


def _select_job(conn: sqlite3.Connection, where: str, params: tuple) -> JobRecord | None:
    row = conn.execute(f"SELECT {_JOB_COLUMNS} FROM jobs WHERE {where}", params).fetchone()
    return None if row is None else _job_from_row(row)


def _require_job(conn: sqlite3.Connection, job_id: str) -> JobRecord:
    job = _select_job(conn, "job_id = ?", (job_id,))
    if job is None:
        raise _not_found(job_id)
    return job


def _not_found(job_id: str) -> NotFound:
    return NotFound(f"no job with id {job_id!r}", field="job_id")


def _same_request(existing: JobRecord, digest: str, request_id: str) -> JobRecord:
    if existing.spec_digest != digest:
        raise AlreadyExists(
            f"request id {request_id!r} was already used for job {existing.job_id} with a different spec; "
            "use a new request id for a different job",
            field="request_id",
        )
    return existing


def _job_from_row(row: sqlite3.Row) -> JobRecord:
    return JobRecord(
        job_id=row["job_id"],
        kind=row["kind"],
        spec=json.loads(row["spec"]),
        spec_digest=row["spec_digest"],
        state=row["state"],
        request_id=row["request_id"],
        create_time=row["create_time"],
        start_time=row["start_time"],
        end_time=row["end_time"],
        attempt=row["attempt"],
        progress=_from_json(row["progress"]),
        error=_from_json(row["error"]),
        result=_from_json(row["result"]),
    )


def _final_progress(state: str, error: dict | None) -> dict:
    if state == "succeeded":
        return {"phase": "done"}
    return {"phase": state, "message": (error or {}).get("message", "")}


def _to_json(value: dict | None) -> str | None:
    """JSON text for a column; NaN and infinities raise ValueError (callers sanitise first)."""
    return None if value is None else json.dumps(value, allow_nan=False)


def _from_json(text: str | None) -> dict | None:
    return None if text is None else json.loads(text)


# --- list validation and page tokens (shared with the artifact store) -----------------------


def _check_states(states: Collection[str]) -> list[str]:
    if isinstance(states, str):  # a bare "queued" would otherwise be read letter by letter
        states = (states,)
    unknown = sorted(set(states) - set(STATES))
    if unknown:
        raise InvalidArgument(f"unknown job state(s) {unknown}; known states are {list(STATES)}", field="states")
    return sorted(set(states))


def check_page_size(page_size: int) -> None:
    if not 1 <= page_size <= MAX_PAGE_SIZE:
        raise InvalidArgument(f"page_size must be between 1 and {MAX_PAGE_SIZE}, not {page_size}", field="page_size")


def filter_digest(*filters: object) -> str:
    return hashlib.sha256(json.dumps(filters, sort_keys=True).encode()).hexdigest()[:16]


def encode_page_token(create_time: float, item_id: str, filters: str) -> str:
    """An opaque token for the page after the item (create_time, item_id), bound to `filters`."""
    payload = json.dumps({"t": create_time, "id": item_id, "f": filters}, separators=(",", ":"))
    return base64.urlsafe_b64encode(payload.encode()).decode()


def decode_page_token(token: str, filters: str) -> tuple[float, str]:
    """The (create_time, id) a token continues after; InvalidArgument when malformed or reused with other filters."""
    try:
        payload = json.loads(base64.urlsafe_b64decode(token.encode("ascii")))
        after_time, after_id, token_filters = payload["t"], payload["id"], payload["f"]
        valid = isinstance(after_time, (int, float)) and isinstance(after_id, str) and isinstance(token_filters, str)
    except (ValueError, TypeError, KeyError, binascii.Error, UnicodeError):
        valid = False
    if not valid:
        raise InvalidArgument("page_token is not a token this server issued", field="page_token")
    if token_filters != filters:
        raise InvalidArgument(
            "page_token was issued for a list with other filters; repeat the same filters or start from an empty token",
            field="page_token",
        )
    return float(after_time), after_id
