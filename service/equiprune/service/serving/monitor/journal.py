"""The monitor's write-ahead journal: what was acknowledged since the last snapshot.

The snapshot (snapshots.py) is written every `monitor_persist_interval_s`; without more, a
crash lost everything acknowledged since (issue #11 measured 1,000 of 1,000 outcomes lost to a
SIGKILL right after the reply). Now every recording call (predictions, outcomes, evaluation
records) is appended here, as one line, and fsynced *before* the reply: acknowledged means
on disk. A start loads the snapshot and replays the entries after the snapshot's sequence.

Files: `journal-<first sequence>.log` in one folder, one JSON entry a line, each line
prefixed by the CRC-32 of its JSON so a torn or damaged line is recognised. `rotate()` starts a
new file; a snapshot records the sequence it holds, and the files wholly before it are then
removed. A torn line can only be the last one of the newest file (the crash happened while
it was written, so it was never acknowledged): it is ignored. A damaged line anywhere else is
logged and skipped — the entries around it still replay.

fsync policy: one fsync per appended batch (a Predict, a ReportOutcomes, a RecordEvaluations
call), and of the folder when a file is created, so that the file itself survives.
"""

from __future__ import annotations

import json
import logging
import os
import zlib
from collections.abc import Iterator
from pathlib import Path

log = logging.getLogger("equiprune.service.serving.monitor")

PREFIX, SUFFIX = "journal-", ".log"


class Journal:
    def __init__(self, folder: str | Path, *, fsync: bool = True, after: int = 0) -> None:
        """`after`: the sequence a loaded snapshot holds. Numbering goes on from the higher of
        it and the newest entry here: a clean stop may have left no file at all, and a
        sequence must never be used twice (replay skips what the snapshot holds by number)."""
        self.folder = Path(folder)
        self.folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._fsync = fsync
        files = self.files()
        newest = after
        if files:
            _cut_torn_tail(files[-1])  # a crash mid-append: never acknowledged; the next line must not join it
            newest = max(newest, max((seq for seq, *_ in self._read(files[-1], last=True)),
                                     default=_first(files[-1]) - 1))
        self.sequence = newest
        self._file = None

    def files(self) -> list[Path]:
        """The journal's files, oldest first."""
        return sorted(self.folder.glob(f"{PREFIX}*{SUFFIX}"), key=_first)

    def append(self, kind: str, when: float, payload) -> int:
        """Write one entry and make it durable; its sequence number. Raises (nothing to
        acknowledge, nothing left behind: the file is cut back to where it was) when the entry
        cannot be written."""
        body = json.dumps([self.sequence + 1, kind, when, payload], separators=(",", ":"), allow_nan=False)
        if self._file is None:
            self._open(self.sequence + 1)
        start = self._file.tell()
        try:
            self._file.write(f"{zlib.crc32(body.encode()):08x} {body}\n".encode())
            self._file.flush()
            if self._fsync:
                os.fsync(self._file.fileno())
        except BaseException:
            self._abandon(start)
            raise
        self.sequence += 1
        return self.sequence

    def _abandon(self, start: int) -> None:
        """After a failed append: drop the buffered bytes and cut the file back; the next
        append opens a fresh file."""
        file, self._file = self._file, None
        try:
            file.truncate(start)
        except OSError:
            pass
        try:
            file.close()
        except OSError:
            pass

    def rotate(self) -> int:
        """Close the current file; later entries go to a new one. The sequence a snapshot
        taken now holds."""
        if self._file is not None:
            self._file.close()
            self._file = None
        return self.sequence

    def discard_through(self, sequence: int) -> None:
        """Remove every file whose entries are all at or below `sequence` (in a snapshot)."""
        files = self.files()
        for current, following in zip(files, files[1:]):
            if _first(following) - 1 <= sequence:
                current.unlink(missing_ok=True)
        if files and self._file is None and _first(files[-1]) <= sequence and self.sequence <= sequence:
            files[-1].unlink(missing_ok=True)

    def entries_after(self, sequence: int) -> Iterator[tuple[int, str, float, object]]:
        """(sequence, kind, time, payload) of every entry after `sequence`, in order."""
        files = self.files()
        for i, path in enumerate(files):
            for entry in self._read(path, last=i == len(files) - 1):
                if entry[0] > sequence:
                    yield entry

    def close(self) -> None:
        self.rotate()

    def _open(self, first: int) -> None:
        path = self.folder / f"{PREFIX}{first:012d}{SUFFIX}"
        self._file = open(path, "ab", buffering=0)  # unbuffered: a failed write leaves nothing pending
        if self._fsync:  # the new file's name is durable too
            directory = os.open(self.folder, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(directory)
            finally:
                os.close(directory)

    @staticmethod
    def _read(path: Path, *, last: bool) -> Iterator[tuple[int, str, float, object]]:
        with open(path, "rb") as f:
            lines = f.read().split(b"\n")
        if lines and lines[-1] == b"":
            lines.pop()
        for number, line in enumerate(lines, 1):
            entry = _parse(line)
            if entry is None:
                if last and number == len(lines):
                    log.warning("monitor journal %s: its last entry was cut off (never acknowledged); ignored",
                                path.name)
                else:
                    log.error("monitor journal %s: entry on line %d is damaged; skipped", path.name, number)
                continue
            yield entry


def _parse(line: bytes):
    try:
        checksum, body = line.split(b" ", 1)
        if int(checksum, 16) != zlib.crc32(body):
            return None
        sequence, kind, when, payload = json.loads(body)
        return int(sequence), str(kind), float(when), payload
    except (ValueError, TypeError):
        return None


def _cut_torn_tail(path: Path) -> None:
    """Cut a file back to its last complete line (a torn write never ends in a newline)."""
    data = path.read_bytes()
    end = data.rfind(b"\n") + 1
    if end < len(data):
        log.warning("monitor journal %s: its last entry was cut off (never acknowledged); removed", path.name)
        with open(path, "r+b") as f:
            f.truncate(end)
            f.flush()
            os.fsync(f.fileno())


def _first(path: Path) -> int:
    return int(path.name[len(PREFIX):-len(SUFFIX)])
