"""Acknowledged means durable: what the monitor replica said OK to survives a SIGKILL right
after the reply (the write-ahead journal, serving/monitor/journal.py), and the journal itself
keeps its promises (torn last line, damaged line, discarding what a snapshot holds)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

from harness.server import free_port

from equiprune.service.serving.monitor.journal import Journal

SERVED = {"name": "faces", "artifact_id": "art-0000000000000001", "shadow_artifact_id": "", "group_by": ["race"],
          "reference_accuracy": {"a": 0.9, "b": 0.8}, "reference_overall_accuracy": 0.85, "tolerance": 0.01,
          "input_shape": [2], "num_classes": 3, "create_time": 0.0}

# A replica that records 1,000 predictions, 1,000 outcomes and 10 evaluation records, prints
# "acknowledged" once every call has returned, and is SIGKILLed at once: no snapshot is ever
# written (the persist interval is an hour), only what the journal holds can come back.
CHILD = textwrap.dedent("""
    import asyncio, json, os, signal, sys, time
    from equiprune.service.serving.monitoring import MonitorService
    from equiprune.service.serving.monitor.state import make_prediction_id
    settings, served = json.loads(sys.argv[1]), json.loads(sys.argv[2])
    service = MonitorService.func_or_class(settings)
    async def traffic():
        await service.deploy(served)
        ids = [make_prediction_id("faces") for _ in range(1000)]
        await service.record_predictions("faces", [
            (pid, time.time(), {"race": "ab"[i % 2]}, i % 3, [0.2, 0.3, 0.5], None) for i, pid in enumerate(ids)])
        answer = await service.record_outcomes([(pid, i % 3 if i % 4 else (i + 1) % 3) for i, pid in enumerate(ids)])
        await service.record_evaluations("faces", [(None, {"race": "a"}, 1, 1, 0.9)] * 10)
        return answer
    answer = asyncio.run(traffic())
    print("acknowledged", json.dumps(answer), flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
""")


def _settings(tmp_path: Path) -> dict:
    return {"data_dir": str(tmp_path / "data"), "metrics_port": free_port(), "monitor_persist_interval_s": 3600}


def test_sigkill_right_after_the_acknowledgement_loses_nothing(tmp_path):
    settings = _settings(tmp_path)
    done = subprocess.run([sys.executable, "-c", CHILD, json.dumps(settings), json.dumps(SERVED)],
                          capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == -signal.SIGKILL, done.stderr[-2000:]
    acknowledged = json.loads(done.stdout.split("acknowledged", 1)[1])
    assert acknowledged["joined"] == 1000, acknowledged
    assert not (tmp_path / "data" / "monitor_state.json").exists()  # no snapshot: the journal alone

    from equiprune.service.serving.monitoring import MonitorService

    service = MonitorService.func_or_class({**settings, "metrics_port": free_port()})
    try:
        totals = asyncio.run(service.metrics("faces"))["metrics"]["totals"]
        assert totals["predictions"] == 1000 and totals["outcomes_joined"] == 1000, totals
        assert totals["evaluation_records"] == 10, totals
        # A snapshot now holds it all; the journal files it covers are gone, and a second
        # start counts everything once.
        service.persist()
        assert service.journal.files() == []
    finally:
        service._http[0].shutdown()
        service.persist = lambda: None
    again = MonitorService.func_or_class({**settings, "metrics_port": free_port()})
    try:
        assert asyncio.run(again.metrics("faces"))["metrics"]["totals"] == totals
    finally:
        again._http[0].shutdown()
        again.persist = lambda: None


def test_the_journal_replays_in_order_and_ignores_a_torn_last_line(tmp_path):
    journal = Journal(tmp_path)
    for i in range(3):
        journal.append("outcomes", 10.0 + i, [[f"p{i}", i]])
    journal.rotate()
    journal.append("outcomes", 13.0, [["p3", 3]])
    journal.close()
    newest = journal.files()[-1]
    with open(newest, "ab") as f:
        f.write(b"0badc0de [5,\"outcomes\"")  # a crash while the fifth entry was written
    entries = list(Journal(tmp_path).entries_after(0))
    assert [e[0] for e in entries] == [1, 2, 3, 4] and entries[3][2] == 13.0
    assert [e[0] for e in Journal(tmp_path).entries_after(2)] == [3, 4]
    assert Journal(tmp_path).sequence == 4  # the next entry is 5, the torn one never counted


def test_a_damaged_line_is_skipped_and_the_rest_replays(tmp_path):
    journal = Journal(tmp_path)
    for i in range(3):
        journal.append("outcomes", 1.0, [[f"p{i}", i]])
    journal.close()
    path = journal.files()[0]
    lines = path.read_bytes().split(b"\n")
    lines[1] = lines[1].replace(b"p1", b"pX")  # the checksum no longer matches
    path.write_bytes(b"\n".join(lines))
    assert [e[0] for e in Journal(tmp_path).entries_after(0)] == [1, 3]


def test_discarding_keeps_every_entry_after_the_snapshot(tmp_path):
    journal = Journal(tmp_path)
    journal.append("outcomes", 1.0, [])
    held = journal.rotate()  # a snapshot holds entry 1
    journal.append("outcomes", 2.0, [])  # arrives while the snapshot is written
    journal.discard_through(held)
    assert [e[0] for e in journal.entries_after(0)] == [2]
    journal.rotate()
    journal.discard_through(2)
    assert journal.files() == [] and journal.sequence == 2


def _replica(settings: dict):
    from equiprune.service.serving.monitoring import MonitorService

    return MonitorService.func_or_class({**settings, "metrics_port": free_port()})


def _close(service) -> None:
    service._http[0].shutdown()
    service.persist = lambda: None  # as a SIGKILL: nothing more is written


def _outcomes(service, n: int) -> None:
    from equiprune.service.serving.monitor.state import make_prediction_id

    async def traffic():
        ids = [make_prediction_id("faces") for _ in range(n)]
        import time as clock

        await service.record_predictions("faces", [(pid, clock.time(), {"race": "a"}, 0, [1.0, 0.0, 0.0], None)
                                                   for pid in ids])
        await service.record_outcomes([(pid, 0) for pid in ids])
    asyncio.run(traffic())


def _joined(service) -> int:
    return asyncio.run(service.metrics("faces"))["metrics"]["totals"]["outcomes_joined"]


def test_numbering_goes_on_after_a_clean_stop_so_later_entries_replay(tmp_path):
    settings = _settings(tmp_path)
    first = _replica(settings)
    asyncio.run(first.deploy(SERVED))
    _outcomes(first, 5)
    first.persist()  # a clean stop: snapshot at sequence 2, every journal file removed
    _close(first)
    second = _replica(settings)
    _outcomes(second, 7)  # acknowledged after the restart, then a crash before any snapshot
    _close(second)
    third = _replica(settings)
    try:
        assert _joined(third) == 12
    finally:
        _close(third)


def test_an_entry_written_after_a_torn_one_is_not_lost(tmp_path):
    journal = Journal(tmp_path)
    journal.append("outcomes", 1.0, [["p1", 1]])
    journal.rotate()  # a snapshot round: entry 2 starts a new file...
    (tmp_path / "journal-000000000002.log").write_bytes(b"1234abcd [2,\"outco")  # ...and the crash came mid-append
    again = Journal(tmp_path)
    again.append("outcomes", 2.0, [["p2", 2]])  # acknowledged after the restart
    again.close()
    assert [(e[0], e[3]) for e in Journal(tmp_path).entries_after(0)] == [(1, [["p1", 1]]), (2, [["p2", 2]])]


def test_a_call_whose_entry_cannot_be_written_changes_nothing_and_is_unavailable(tmp_path):
    import pytest

    from equiprune.service.errors import Unavailable

    service = _replica(_settings(tmp_path))
    try:
        asyncio.run(service.deploy(SERVED))
        _outcomes(service, 3)

        def broken(*args, **kwargs):
            raise OSError(28, "No space left on device")
        service.journal.append = broken
        with pytest.raises(Unavailable):
            _outcomes(service, 4)
        assert _joined(service) == 3  # nothing of the refused call was applied
    finally:
        _close(service)
