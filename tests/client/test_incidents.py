"""The incident log (client/incidents.py), `equiprune incident`, and the CLI waiting for a
server that is still starting."""

from __future__ import annotations

import io
import json
import socket
import threading
import time
from concurrent import futures

import grpc
import pytest

from equiprune.client import cli, incidents
from tests.tracebacks import traceback_text as _traceback

pytestmark = pytest.mark.unit


def test_records_are_appended_and_found_by_id_or_prefix(tmp_path):
    path = incidents.log_path(tmp_path)
    assert incidents.record("aaaa11112222", "the Ingress replica (pid 1)", _traceback("first"), path) == path
    assert incidents.record("bbbb33334444", "the task of job job-1", _traceback("second"), path) == path
    header, body = incidents.find(path, "bbbb")
    assert header.startswith("incident bbbb33334444 at ") and header.endswith("in the task of job job-1")
    assert body.splitlines()[-1] == "RuntimeError: second" and "Traceback" in body
    assert incidents.find(path, "aaaa11112222")[1].endswith("RuntimeError: first")
    assert incidents.find(path, "cccc") is None
    assert incidents.find(tmp_path / "missing.log", "aaaa") is None
    assert incidents.summary(header, body).endswith(": RuntimeError: second")
    assert oct(path.stat().st_mode & 0o777) == "0o600"


def test_record_uses_the_environment_and_never_fails(tmp_path, monkeypatch):
    monkeypatch.delenv(incidents.LOG_VARIABLE, raising=False)
    assert incidents.record("abc", "here", "detail") is None
    monkeypatch.setenv(incidents.LOG_VARIABLE, str(tmp_path / "logs" / "incidents.log"))
    assert incidents.record("abc", "here", "detail") is not None
    (tmp_path / "file").write_text("")
    assert incidents.record("abd", "here", "detail", tmp_path / "file" / "below") is None  # not a folder


def test_records_from_many_threads_do_not_interleave(tmp_path):
    path = incidents.log_path(tmp_path)
    detail = "x" * 20000
    threads = [threading.Thread(target=incidents.record, args=(f"{i:012x}", "here", detail, path)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    found = list(incidents.parse(path.read_text()))
    assert len(found) == 16 and all(body == detail for _, _, body in found)


def test_incident_command_prints_the_traceback(tmp_path, capsys):
    incidents.record("3f2a9c81d0e4", "the Ingress replica (pid 7)", _traceback("boom"), incidents.log_path(tmp_path))
    assert cli.main(["incident", "3f2a9c81d0e4", "--data-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "incident 3f2a9c81d0e4" in out and out.rstrip().endswith("RuntimeError: boom")
    assert cli.main(["--json", "incident", "3f2a", "--data-dir", str(tmp_path)]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["incident"] == "3f2a9c81d0e4" and doc["traceback"].endswith("RuntimeError: boom")
    assert cli.main(["incident", "0000", "--data-dir", str(tmp_path)]) == 2
    assert "no incident 0000" in capsys.readouterr().err


# ------------------------------------------------------------------ waiting for a starting server

def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class _Health(grpc.GenericRpcHandler):
    """grpc.health.v1.Health/Check answering SERVING; every other method UNIMPLEMENTED."""

    def service(self, details):
        if details.method == "/grpc.health.v1.Health/Check":
            return grpc.unary_unary_rpc_method_handler(lambda request, context: b"\x08\x01",
                                                       request_deserializer=lambda raw: raw,
                                                       response_serializer=lambda raw: raw)
        return None


def test_the_cli_waits_for_a_server_that_starts_later(capsys):
    port = _free_port()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    server.add_generic_rpc_handlers((_Health(),))
    server.add_insecure_port(f"127.0.0.1:{port}")
    timer = threading.Timer(2.0, server.start)
    timer.start()
    try:
        started = time.monotonic()
        code = cli.main(["--server", f"127.0.0.1:{port}", "--timeout", "2", "--retries", "0", "--token", "t",
                         "--json", "jobs"])
        waited = time.monotonic() - started
    finally:
        timer.join()
        server.stop(None)
    captured = capsys.readouterr()
    assert waited >= 1.5
    assert captured.err.count("waiting for the equiprune server at") == 1
    # It reached the server (which knows no JobService): not "unreachable", nothing extra on stdout.
    assert code != 3 and "unreachable" not in captured.err and "waiting" not in captured.out


class _Recording(grpc.GenericRpcHandler):
    """Health SERVING, and ListJobs answering empty after noting the call's authorization."""

    def __init__(self) -> None:
        self.authorization: list[str] = []

    def service(self, details):
        if details.method == "/grpc.health.v1.Health/Check":
            return _Health().service(details)
        if details.method != "/equiprune.v1.JobService/ListJobs":
            return None

        def list_jobs(request, context):
            self.authorization += [v for k, v in context.invocation_metadata() if k == "authorization"]
            return b""

        return grpc.unary_unary_rpc_method_handler(list_jobs, request_deserializer=lambda raw: raw,
                                                   response_serializer=lambda raw: raw)


def test_the_token_a_starting_server_writes_is_found_after_the_wait(capsys, tmp_path, monkeypatch):
    """`equiprune demo` typed right after a first `equiprune serve`: the admin token does not
    exist yet when the CLI starts; it is looked up once the server answers."""
    monkeypatch.setenv("EQUIPRUNE_CONFIG_DIR", str(tmp_path / "config"))
    for name in ("EQUIPRUNE_TOKEN", "EQUIPRUNE_TOKEN_FILE"):
        monkeypatch.delenv(name, raising=False)
    port = _free_port()
    handler = _Recording()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    server.add_generic_rpc_handlers((handler,))
    server.add_insecure_port(f"127.0.0.1:{port}")

    def first_start():
        from equiprune.client.credentials import credentials_file, write_token_file

        write_token_file(credentials_file(f"127.0.0.1:{port}"), "ept_written-by-the-first-start")
        server.start()

    timer = threading.Timer(1.5, first_start)
    timer.start()
    try:
        code = cli.main(["--server", f"127.0.0.1:{port}", "--timeout", "2", "--retries", "0", "jobs"])
    finally:
        timer.join()
        server.stop(None)
    assert code == 0, capsys.readouterr().err
    assert handler.authorization == ["Bearer ept_written-by-the-first-start"]


def test_the_cli_gives_up_after_the_bound(capsys):
    port = _free_port()
    started = time.monotonic()
    code = cli.main(["--server", f"127.0.0.1:{port}", "--timeout", "1", "--retries", "0", "--token", "t",
                     "--wait-for-server", "1.5", "jobs"])
    assert 1.2 <= time.monotonic() - started < 8
    err = capsys.readouterr().err
    assert code == 3 and "waiting for the equiprune server" in err and "is unreachable" in err


class _Deploying(grpc.GenericRpcHandler):
    """A proxy whose application deploys: Health/Check is NOT_FOUND until `ready` is set."""

    def __init__(self) -> None:
        self.ready = threading.Event()

    def service(self, details):
        if details.method != "/grpc.health.v1.Health/Check":
            return None

        def check(request, context):
            if not self.ready.is_set():
                context.abort(grpc.StatusCode.NOT_FOUND, "application not found")
            return b"\x08\x01"
        return grpc.unary_unary_rpc_method_handler(check, request_deserializer=lambda raw: raw,
                                                   response_serializer=lambda raw: raw)


def test_the_cli_waits_while_the_application_deploys(capsys):
    port = _free_port()
    handler = _Deploying()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    server.add_generic_rpc_handlers((handler,))
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    timer = threading.Timer(1.5, handler.ready.set)
    timer.start()
    try:
        started = time.monotonic()
        cli.main(["--server", f"127.0.0.1:{port}", "--timeout", "2", "--retries", "0", "--token", "t", "jobs"])
        waited = time.monotonic() - started
    finally:
        timer.join()
        server.stop(None)
    assert waited >= 1.2 and capsys.readouterr().err.count("waiting for the equiprune server") == 1
