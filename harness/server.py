"""A real `equiprune serve` in a subprocess, on free loopback ports, for end-to-end tests
and the service benchmarks."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc

from equiprune.v1 import jobs_pb2, jobs_pb2_grpc

# What the launcher prints once serve.run has returned: every deployment is running.
READY_LINE = "equiprune is serving gRPC on"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """Start/stop `python -m equiprune.service.launcher` with its own data dir and Ray."""

    _log_start = 0

    def __init__(self, data_dir: Path, *, allow_import: list[Path] = (), num_cpus: int = 2,
                 extra_args: list[str] = ()) -> None:
        self.data_dir = data_dir
        self.extra_args = list(extra_args)  # more launcher options, e.g. ["--address", head]
        self.allow_import = list(allow_import)
        self.num_cpus = num_cpus
        self.port = free_port()
        self.metrics_port = free_port()
        self.process: subprocess.Popen | None = None
        self.log_path = data_dir.parent / f"{data_dir.name}-server.log"
        self.ray_tmp: str | None = None

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout: float = 120.0, attempts: int = 3) -> "ServerProcess":
        """Start the server and wait until its whole application is deployed. Ports come from
        `free_port`, which cannot reserve them: Ray picks random ports of its own, and one may
        take ours between choice and bind (seen once in CI: the monitor's metrics port). A start
        that fails that way is tried again on fresh ports, saying so in the log."""
        for attempt in range(1, attempts + 1):
            try:
                self._start_once(timeout)
                return self
            except _StartFailed as failure:
                if attempt == attempts:
                    raise RuntimeError(str(failure)) from None
                with open(self.log_path, "a") as log:
                    log.write(f"\n[harness] start {attempt} failed; trying again on fresh ports\n")
                self.port, self.metrics_port = free_port(), free_port()
        return self

    def _start_once(self, timeout: float) -> None:
        # Ray's unix sockets need a short path; one folder per run, removed by stop().
        self.ray_tmp = tempfile.mkdtemp(prefix="ep", dir="/tmp")
        # Ray's ports require the token the launcher keeps in <data dir>/ray.token.
        env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_TMPDIR": self.ray_tmp, "PYTHONUNBUFFERED": "1"}
        env.pop("RAY_AUTH_MODE", None)
        cmd = [sys.executable, "-m", "equiprune.service.launcher", "--port", str(self.port),
               "--http-port", str(free_port()), "--metrics-port", str(self.metrics_port),
               "--data-dir", str(self.data_dir), "--num-cpus", str(self.num_cpus)]
        for root in self.allow_import:
            cmd += ["--allow-import", str(root)]
        cmd += self.extra_args
        self._log_start = self.log_path.stat().st_size if self.log_path.exists() else 0
        log = open(self.log_path, "ab")
        self.process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        self._wait_until_serving(timeout)

    def _wait_until_serving(self, timeout: float) -> None:
        """Until the launcher says the application is deployed (every deployment, not only the
        ingress) and a call answers."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and READY_LINE not in self._this_run_log():
            if self.process.poll() is not None:
                break
            time.sleep(0.5)
        with self.channel() as channel:
            stub = jobs_pb2_grpc.JobServiceStub(channel)
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    failure = f"the server exited with {self.process.returncode}:\n{self.log()}"
                    self.stop()
                    raise _StartFailed(failure)
                try:
                    if READY_LINE in self._this_run_log():
                        stub.ListJobs(jobs_pb2.ListJobsRequest(page_size=1), timeout=5)
                        return
                except grpc.RpcError:
                    pass
                time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"the server did not answer within {timeout} s:\n{self.log()}")

    @property
    def admin_token(self) -> str:
        """The admin token the launcher wrote on its first start (never printed)."""
        return (self.data_dir / "admin.token").read_text().strip()

    @property
    def ray_token(self) -> str:
        return (self.data_dir / "ray.token").read_text().strip()

    def channel(self, token: str | None = None) -> grpc.Channel:
        """A plaintext channel to the server whose calls carry `token` (default: the admin's)."""
        from equiprune.client.credentials import open_channel

        return open_channel(self.target, [], token=token or self.admin_token)

    def _this_run_log(self) -> str:
        try:
            with open(self.log_path, "rb") as log:
                log.seek(self._log_start)
                return log.read().decode(errors="replace")
        except OSError:
            return ""

    def stop(self, timeout: float = 60.0) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        if self.ray_tmp is not None:
            shutil.rmtree(self.ray_tmp, ignore_errors=True)
            self.ray_tmp = None

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-6000:]
        except OSError:
            return ""


class _StartFailed(Exception):
    """The server process ended while starting."""
