"""The service's side of the sandbox: start a confined worker, hand it files, read its replies.

`Sandbox.run` is one operation in a fresh worker (validation, deploy probes, jobs);
`Sandbox.serve` keeps one worker per served model for forward passes. Each worker is a new
process (``sys.executable -m equiprune.service.sandbox.worker``) with a minimal environment
(no credentials, no proxy settings), its own session, the client's files as read-only
descriptors opened here, and a working folder. Its replies are treated as hostile: frames are
size-bounded JSON, an error's code must be one a client may see, and anything else —
a crash, a signal, a broken frame — becomes a refusal or an INTERNAL status whose incident
id leads to the worker's last words in this process's log.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass

from equiprune.service.errors import (FailedPrecondition, InvalidArgument, ResourceExhausted, ServiceError, Unavailable,
                                      internal_message, new_incident)
from equiprune.service.sandbox.confine import Limits, uid_of
from equiprune.service.sandbox.protocol import ProtocolError, read_frame, write_frame
from equiprune.service.sandbox.warmup import warmup_kit

log = logging.getLogger("equiprune.service.sandbox")

_REFUSALS = {"INVALID_ARGUMENT": InvalidArgument, "FAILED_PRECONDITION": FailedPrecondition,
             "RESOURCE_EXHAUSTED": ResourceExhausted}
_STDERR_TAIL = 64 * 1024


class SandboxFailure(ServiceError):
    """The worker failed in a way that is not the client's mistake; logged with an incident id."""

    code = "INTERNAL"


@dataclass(frozen=True)
class SandboxConfig:
    """How sandboxes are started: limits per purpose, user ids, whether isolation must be full."""

    limits: dict[str, Limits]  # purpose ("validation", "job", "serving") → limits
    uid_base: int = 2**20
    require_full_isolation: bool = True
    model_limits: dict | None = None  # ModelLimits fields; None: the machine's defaults
    max_dataset_bytes: int | None = None
    work_root: str | None = None  # where one-off working folders go (default: the system temp)
    concurrent_workers: int = 2  # one-off workers one process runs at a time (Sandbox.run)
    python: str = sys.executable

    def for_purpose(self, purpose: str) -> Limits:
        return self.limits[purpose]

    def engine_model_limits(self):
        """The engine's ModelLimits these settings ask for (None: the machine's defaults)."""
        from equiprune.engine.models.footprint import ModelLimits

        return ModelLimits(**self.model_limits) if self.model_limits else None


def minimal_environment(threads: int = 1) -> dict[str, str]:
    """The worker's whole environment: nothing inherited but what the GPU runtime needs."""
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "MALLOC_ARENA_MAX": "2",
           "OMP_NUM_THREADS": str(threads),
           "MKL_NUM_THREADS": str(threads), "OPENBLAS_NUM_THREADS": str(threads)}
    for name in ("CUDA_VISIBLE_DEVICES", "NVIDIA_VISIBLE_DEVICES", "LD_LIBRARY_PATH"):
        if name in os.environ:
            env[name] = os.environ[name]
    return env


class Sandbox:
    def __init__(self, config: SandboxConfig) -> None:
        self.config = config
        # Each worker may use up to its purpose's memory limit: a process running several at
        # once (the ingress validating uploads) starts at most this many at a time.
        self._slots = threading.BoundedSemaphore(config.concurrent_workers)

    def run(self, op: str, args: dict, files: dict[str, str], *, purpose: str, work_dir: str | None = None,
            on_event: Callable[[dict], None] | None = None, threads: int = 1, timeout_s: float | None = None) -> dict:
        """One operation in a fresh worker; its result. `files` maps names to local paths (opened
        here, read-only); `work_dir` is the worker's folder (a fresh one, removed afterwards,
        when None); `on_event` receives its progress events and may raise to stop it."""
        with self._slots:
            folder = work_dir or tempfile.mkdtemp(prefix="sandbox-", dir=self._work_root())
            try:
                worker = _Worker(self.config, op, {**args, "threads": threads}, files, purpose, folder, threads)
                try:
                    with _watchdog(worker, timeout_s):
                        while True:
                            reply = worker.reply()
                            if "event" in reply and on_event is not None:
                                on_event(reply["event"])
                            elif "result" in reply:
                                return reply["result"]
                finally:
                    worker.stop()
            finally:
                if work_dir is None:
                    shutil.rmtree(folder, ignore_errors=True)

    def _work_root(self) -> str | None:
        if self.config.work_root is not None:
            os.makedirs(self.config.work_root, mode=0o700, exist_ok=True)
        return self.config.work_root

    def serve(self, files: dict[str, str], *, threads: int = 1, timeout_s: float | None = None) -> ServedModelProcess:
        folder = tempfile.mkdtemp(prefix="serve-", dir=self._work_root())
        worker = _Worker(self.config, "serve", {"threads": threads}, files, "serving", folder, threads)
        try:
            with _watchdog(worker, timeout_s):
                reply = worker.reply()
            if not reply.get("ready"):
                raise worker.failure("the model server did not say it was ready")
        except BaseException:
            worker.stop()
            shutil.rmtree(folder, ignore_errors=True)
            raise
        return ServedModelProcess(worker, folder)


class ServedModelProcess:
    """One served model in its own sandboxed worker: float32 rows in, probabilities out."""

    def __init__(self, worker: _Worker, folder: str) -> None:
        self._worker, self._folder, self._lock = worker, folder, threading.Lock()

    def forward(self, rows: bytes, shape: tuple[int, ...], count: int,
                timeout_s: float | None = None) -> tuple[bytes, int, list[int]]:
        """(float32 probabilities, classes, rows whose output was not finite) for `count` rows;
        a worker that takes longer than `timeout_s` is stopped (the next request starts another)."""
        with self._lock:
            try:
                with _watchdog(self._worker, timeout_s):
                    write_frame(self._worker.stdin, {"shape": list(shape)}, rows)
                    header, payload = self._worker.frame()
            except ServiceError:
                self._worker.stop()  # a worker mid-frame cannot serve the next request
                raise
            except OSError:
                self._worker.stop()
                raise Unavailable("the model's sandboxed worker stopped; the next request starts another") from None
        classes, bad = header.get("classes"), header.get("non_finite_rows")
        if not (isinstance(classes, int) and 1 <= classes <= 100_000 and isinstance(bad, list)
                and all(isinstance(i, int) and 0 <= i < count for i in bad) and len(payload) == 4 * count * classes):
            raise self._worker.failure("the model server returned a malformed answer")
        return payload, classes, bad

    @property
    def alive(self) -> bool:
        return self._worker.process.poll() is None

    def close(self) -> None:
        self._worker.stop()
        shutil.rmtree(self._folder, ignore_errors=True)


class _Worker:
    """One started worker process and its reply stream."""

    def __init__(self, config: SandboxConfig, op: str, args: dict, files: dict[str, str], purpose: str,
                 folder: str, threads: int) -> None:
        self.config, self.op = config, op
        files = {**warmup_kit(), **files}
        handles = {name: os.open(path, os.O_RDONLY | os.O_CLOEXEC) for name, path in files.items()}
        request = {"op": op, "args": {**args, "model_limits": config.model_limits,
                                      "max_dataset_bytes": config.max_dataset_bytes},
                   "files": {name: fd for name, fd in handles.items()}, "work_dir": folder,
                   "limits": config.for_purpose(purpose).to_json(), "uid_base": config.uid_base,
                   "parent_pid": os.getpid()}
        try:
            # -I: no current folder (nor PYTHON* variables, nor user site) on sys.path, and
            # started from "/": a folder a sandbox once owned must never supply a module to a
            # process that is still root (the worker enters its folder itself).
            self.process = subprocess.Popen(
                [config.python, "-I", "-B", "-u", "-m", "equiprune.service.sandbox.worker"], stdin=subprocess.PIPE,
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, pass_fds=tuple(handles.values()),
                env=minimal_environment(threads), cwd="/", start_new_session=True)
        finally:
            for fd in handles.values():
                os.close(fd)
        self.stdin, self.stdout = self.process.stdin, self.process.stdout
        self._stderr = bytearray()
        threading.Thread(target=self._drain_stderr, daemon=True, name=f"sandbox-{op}-stderr").start()
        self._pid_namespace = False
        try:
            write_frame(self.stdin, request)
            self._check_isolation(self.frame()[0])
        except BaseException:
            self.stop()
            raise

    def _check_isolation(self, header: dict) -> None:
        if "error" in header:
            raise self._error(header["error"])
        problem = isolation_problem(header.get("isolation"), self.config.require_full_isolation)
        if problem is not None:
            raise self.failure(problem)
        self._pid_namespace = header["isolation"].get("pid_namespace") is True

    def frame(self) -> tuple[dict, bytes]:
        try:
            frame = read_frame(self.stdout)
        except ProtocolError as err:
            raise self.failure(f"the sandbox broke its reply stream ({err})") from None
        if frame is None:
            raise self._ended()
        return frame

    def reply(self) -> dict:
        header, _ = self.frame()
        if "error" in header:
            raise self._error(header["error"])
        return header

    def _error(self, error) -> ServiceError:
        if not isinstance(error, dict):
            return self.failure("the sandbox sent a malformed error")
        message, field = str(error.get("message", ""))[:2000], str(error.get("field", ""))[:200] or None
        refusal = _REFUSALS.get(error.get("code"))
        if refusal is None:
            return self.failure(message or "the sandbox failed")
        # The message already starts with the engine's field ("model.weights: ..."); keep it.
        return refusal(message.split(": ", 1)[1] if field and message.startswith(f"{field}: ") else message, field)

    def _ended(self) -> ServiceError:
        code = self.process.wait()
        if code < 0 and -code in (signal.SIGXCPU, signal.SIGKILL):
            return ResourceExhausted("the work ran out of CPU time or memory in the sandbox "
                                     "(settings sandbox_*_cpu_seconds, sandbox_*_memory_bytes)")
        if code < 0:
            return InvalidArgument(f"the sandbox stopped with signal {-code} while reading the client's files; the "
                                   "content cannot be processed safely")
        return self.failure(f"the sandbox exited with status {code} without an answer")

    def failure(self, problem: str) -> SandboxFailure:
        tail = bytes(self._stderr[-_STDERR_TAIL:]).decode(errors="replace")
        incident = new_incident(detail=f"sandbox ({self.op}): {problem}; the worker's last output:\n{tail}\n{problem}")
        return SandboxFailure(internal_message(incident))

    def _drain_stderr(self) -> None:
        for line in iter(lambda: self.process.stderr.readline(8192), b""):
            self._stderr += line
            del self._stderr[:-_STDERR_TAIL]

    def stop(self) -> None:
        if self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.process.wait()
        # Whatever the worker left behind (a child that started a session of its own) runs as
        # its user: end every process of that user — unless it ran in a PID namespace, whose
        # end the kernel already made the end of all of them.
        if not self._pid_namespace:
            _kill_user(uid_of(self.process.pid, self.config.uid_base), self.config.python)
        for stream in (self.stdin, self.stdout):
            try:
                stream.close()
            except OSError:
                pass


def _kill_user(uid: int, python: str) -> None:
    """SIGKILL every process of `uid`: a short-lived helper becomes that user and kills all it
    may signal (kill(-1) as an unprivileged user reaches exactly its own processes)."""
    if os.geteuid() != 0:
        return
    subprocess.run([python, "-I", "-S", "-c", "import os, signal\n"
                    f"os.setgroups([]); os.setresgid({uid}, {uid}, {uid}); os.setresuid({uid}, {uid}, {uid})\n"
                    "try:\n    os.kill(-1, signal.SIGKILL)\nexcept ProcessLookupError:\n    pass"],
                   env={}, cwd="/", timeout=30, check=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def isolation_problem(isolation, required: bool) -> str | None:
    """Why a worker's reported isolation is not acceptable, or None."""
    if not isinstance(isolation, dict):
        return "the sandbox did not report its isolation"
    if required and isolation.get("full") is not True:
        problems = "; ".join(map(str, isolation.get("problems", []))) or "incomplete"
        return (f"the sandbox could not isolate itself ({problems}); run the service as root (it switches each "
                "sandbox to a user of its own), or set sandbox_isolation to limits-only")
    return None


class _watchdog:
    """Kill the worker after `timeout_s` of wall-clock time (its CPU limit catches busy loops;
    this catches a worker that sleeps)."""

    def __init__(self, worker: _Worker, timeout_s: float | None) -> None:
        self.worker, self.timeout_s, self.fired = worker, timeout_s, False
        self._timer: threading.Timer | None = None

    def __enter__(self):
        if self.timeout_s:
            self._timer = threading.Timer(self.timeout_s, self._fire)
            self._timer.daemon = True
            self._timer.start()
        return self

    def _fire(self) -> None:
        self.fired = True
        self.worker.stop()

    def __exit__(self, exc_type, exc, tb):
        if self._timer is not None:
            self._timer.cancel()
        if self.fired and exc is not None:
            raise Unavailable(f"the sandbox took longer than {self.timeout_s:.0f} s and was stopped") from None
        return False

