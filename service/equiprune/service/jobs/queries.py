"""The read side of the SQLite job store: one job, pages of jobs, a job's events, and counts.

`JobQueries` is a part of `SqliteJobStore` (store.py), which opens the connection and its lock.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Collection, Iterator
from contextlib import contextmanager

from equiprune.service.errors import InvalidArgument
from equiprune.service.jobs.paging import check_page_size, decode_page_token, encode_page_token, filter_digest
from equiprune.service.jobs.records import (
    _JOB_COLUMNS, STATES, JobEventRecord, JobRecord, _from_json, _job_from_row, _not_found, _require_job,
)


class JobQueries:
    """The reading half of `SqliteJobStore`."""

    def get(self, job_id: str) -> JobRecord:
        with self._locked() as conn:
            return _require_job(conn, job_id)

    def list(
        self,
        states: Collection[str] = (),
        kind: str | None = None,
        page_size: int = 50,
        page_token: str = "",
        tenant: str | None = None,
    ) -> tuple[list[JobRecord], str]:
        """One page of jobs (of `tenant`'s only, when given), newest first, and the token of
        the next page ("" on the last)."""
        wanted = _check_states(states)
        check_page_size(page_size)
        filters = filter_digest(wanted, kind, tenant)
        where, params = [], []
        if tenant is not None:
            where.append("tenant = ?")
            params.append(tenant)
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

    def count_in_states(self, states: Collection[str], tenant: str | None = None) -> int:
        """How many jobs (of `tenant`'s, when given) are in any of `states` (an empty
        collection counts nothing)."""
        wanted = _check_states(states)
        if not wanted:
            return 0
        where = f"state IN ({', '.join('?' * len(wanted))})" + (" AND tenant = ?" if tenant is not None else "")
        with self._locked() as conn:
            row = conn.execute(f"SELECT COUNT(*) FROM jobs WHERE {where}",
                               (*wanted, *([tenant] if tenant is not None else []))).fetchone()
        return row[0]

    @contextmanager
    def _locked(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            yield self._conn


def _check_states(states: Collection[str]) -> list[str]:
    if isinstance(states, str):  # a bare "queued" would otherwise be read letter by letter
        states = (states,)
    unknown = sorted(set(states) - set(STATES))
    if unknown:
        raise InvalidArgument(f"unknown job state(s) {unknown}; known states are {list(STATES)}", field="states")
    return sorted(set(states))
