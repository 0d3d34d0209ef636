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
