"""The service's side of the incident log: INTERNAL errors recorded with their traceback,
and the launcher printing new ones on its terminal."""

from __future__ import annotations

import io
import time

import pytest

from equiprune.client import incidents
from equiprune.service import errors
from equiprune.service.launcher import follow_incidents
from tests.tracebacks import traceback_text as _traceback

pytestmark = pytest.mark.unit


def test_the_server_error_message_names_the_command():
    status = errors.client_status(KeyError("unexpected"))
    incident = status.message.split("incident ", 1)[1].split(";", 1)[0]
    assert status.code == "INTERNAL" and f"`equiprune incident {incident}` on the server" in status.message


def test_the_service_records_incidents_in_the_log(tmp_path, monkeypatch):
    path = incidents.log_path(tmp_path)
    monkeypatch.setenv(incidents.LOG_VARIABLE, str(path))
    try:
        {}["secret-free key"]
    except KeyError as exc:
        status = errors.client_status(exc)
    incident = status.message.split("incident ", 1)[1].split(";", 1)[0]
    header, body = incidents.find(path, incident)
    assert "KeyError" in body.splitlines()[-1] and "test_the_service_records" in body


def test_the_launcher_prints_new_incidents(tmp_path):
    path = incidents.log_path(tmp_path)
    incidents.record("000000000001", "before", "old", path)  # recorded before the start: not printed
    stream = io.StringIO()
    follow_incidents(path, interval_s=0.05, stream=stream)
    time.sleep(0.2)
    incidents.record("aaaabbbbcccc", "the JobManager replica (pid 9)", _traceback("kaput"), path)
    for _ in range(100):
        if "aaaabbbbcccc" in stream.getvalue():
            break
        time.sleep(0.05)
    line = stream.getvalue()
    assert "000000000001" not in line
    assert line.startswith("incident aaaabbbbcccc: RuntimeError: kaput (in the JobManager replica (pid 9))")
    assert "`equiprune incident aaaabbbbcccc`" in line and str(path) in line
