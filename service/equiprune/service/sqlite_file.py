"""One SQLite file shared by threads and processes: the job store and the tenant store.

One connection guarded by a lock (SQLite serialises writers anyway, and a single connection
keeps reads consistent with this process's own writes), WAL so readers never wait for a
writer, and `BEGIN IMMEDIATE` transactions so that a read-then-write (an idempotency check,
first-terminal-wins, a name that must be new) cannot interleave with another process's write.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


class SqliteFile:
    def __init__(self, path: str | os.PathLike, schema: str, *, synchronous: str = "NORMAL") -> None:
        """`synchronous`: NORMAL survives a crash of the process (WAL); FULL also a power cut."""
        self._path = Path(path)
        self._path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._conn = sqlite3.connect(self._path, timeout=30.0, check_same_thread=False, isolation_level=None)
        self._conn.row_factory = sqlite3.Row
        with self._lock:
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute(f"PRAGMA synchronous={synchronous}")
            self._conn.execute("PRAGMA foreign_keys=ON")
            self._conn.executescript(schema)

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    def close(self) -> None:
        with self._lock:
            self._conn.close()
