"""How a job is stored: the job and event records, the SQLite schema, and the conversion of
rows to records (shared by the writes in store.py and the queries in queries.py)."""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass

from equiprune.service.errors import NotFound

TERMINAL = ("succeeded", "failed", "cancelled")
STATES = ("queued", "running", *TERMINAL)


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
    # The tenant that created it: the only one that can see it.
    tenant: str = "admin"

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

# Added after the first release: applied to older files at open (store.py `_migrate`). A job
# from before tenants belongs to the first admin tenant; request ids are unique per tenant.
_MIGRATIONS = (
    ("tenant", "ALTER TABLE jobs ADD COLUMN tenant TEXT NOT NULL DEFAULT 'admin'"),
)
_INDEXES = """
DROP INDEX IF EXISTS jobs_request_id;
CREATE UNIQUE INDEX IF NOT EXISTS jobs_tenant_request_id ON jobs (tenant, request_id) WHERE request_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS jobs_tenant_newest ON jobs (tenant, create_time DESC, job_id DESC);
"""

_JOB_COLUMNS = (
    "job_id, kind, spec, spec_digest, state, request_id, create_time, start_time, end_time, "
    "attempt, progress, error, result, tenant"
)


# --- row helpers ---------------------------------------------------------------------------


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
        tenant=row["tenant"],
    )


def _to_json(value: dict | None) -> str | None:
    """JSON text for a column; NaN and infinities raise ValueError (callers sanitise first)."""
    return None if value is None else json.dumps(value, allow_nan=False)


def _from_json(text: str | None) -> dict | None:
    return None if text is None else json.loads(text)
