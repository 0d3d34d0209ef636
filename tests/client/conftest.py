"""Fixtures: a fresh in-process fake server per test, and a client with fast retries."""

from __future__ import annotations

import pytest

from equiprune.client import cli
from equiprune.client.sdk import EquipruneClient

from .fake_server import FakeServer


@pytest.fixture
def server():
    with FakeServer() as fake:
        yield fake


@pytest.fixture
def client(server):
    with EquipruneClient(server.target, timeout=5.0, retries=3, backoff=0.001, max_backoff=0.005) as sdk:
        yield sdk


@pytest.fixture
def run(server, capsys):
    """Run the CLI against the fake server; returns (exit code, stdout, stderr)."""
    def invoke(*argv: str):
        code = cli.main(["--server", server.target, "--timeout", "5", "--retries", "2", *argv])
        captured = capsys.readouterr()
        return code, captured.out, captured.err
    return invoke
