"""The incident log: every INTERNAL error's traceback, found again by its incident id.

A server process that hits an unexpected error (an ingress replica, the job manager, a job's
task, a sandbox's parent) appends one record to `<data_dir>/logs/incidents.log`, named by the
incident id the client was told. `equiprune serve` prints a line for each new record on its
terminal, and `equiprune incident <id>` (on the server's machine) prints the record. Stdlib
only: the client reads it without torch or Ray.

A record is one `os.write` to a file opened with O_APPEND, so records from many processes never
interleave. It holds the time, the id, where it happened and the traceback: never a request's
payload or its metadata (the API token travels there).
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path
from typing import Iterator, NamedTuple

# Set by `equiprune serve` for itself and every Ray worker it starts: the file to append to.
LOG_VARIABLE = "EQUIPRUNE_INCIDENT_LOG"
_BEGIN = "=== incident "
END = "=== end of incident "  # + the id: the line that closes a record
_HEADER = re.compile(r"^=== incident ([0-9a-f]+) at (\S+) in (.*)$")


def log_path(data_dir: str | os.PathLike) -> Path:
    """Where the incidents of a server with this data folder are recorded."""
    return Path(data_dir) / "logs" / "incidents.log"


def record(incident: str, where: str, detail: str, path: str | os.PathLike | None = None) -> Path | None:
    """Append the record of `incident` (`detail`: its traceback) to `path`, by default the file
    $EQUIPRUNE_INCIDENT_LOG names. Returns the file, or None when there is none or it cannot be
    written (recording must never turn one failure into another)."""
    target = path if path is not None else os.environ.get(LOG_VARIABLE)
    if not target:
        return None
    target = Path(target)
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    where = " ".join(where.split()) or "the server"
    text = f"{_BEGIN}{incident} at {stamp} in {where}\n{detail.rstrip()}\n{END}{incident}\n"
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(target, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, text.encode("utf-8", errors="replace"))
        finally:
            os.close(fd)
    except OSError:
        return None
    return target


class Incident(NamedTuple):
    """One complete record: its id, header line (without the `=== `) and traceback."""
    ident: str
    header: str
    body: str

    @property
    def where(self) -> str:
        """The process or task it happened in, as recorded."""
        return _HEADER.match("=== " + self.header).group(3)

    @property
    def exception(self) -> str:
        """The traceback's last non-empty line: the exception."""
        lines = [line.strip() for line in self.body.splitlines() if line.strip()]
        return lines[-1] if lines else "(no traceback)"


def parse(text: str) -> Iterator[Incident]:
    """Every complete record in `text`."""
    current: tuple[str, str] | None = None
    body: list[str] = []
    for line in text.splitlines():
        header = _HEADER.match(line)
        if header:
            current, body = (header.group(1), line[len("=== "):]), []
        elif current is not None and line == f"{END}{current[0]}":
            yield Incident(current[0], current[1], "\n".join(body))
            current = None
        elif current is not None:
            body.append(line)


def find(path: str | os.PathLike, incident: str) -> tuple[str, str] | None:
    """(header, traceback) of the incident whose id is or starts with `incident`; the last
    one when several match. None when the file or the record is missing."""
    try:
        text = Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    found = None
    for ident, header, body in parse(text):
        if incident and ident.startswith(incident):
            found = (header, body)
    return found


def summary(header: str, body: str) -> str:
    """One line: the header and the traceback's last non-empty line (the exception)."""
    return f"{header}: {Incident('', header, body).exception}"
