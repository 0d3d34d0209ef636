"""`equiprune serve` stops quietly and completely when its whole process group is signalled: a
terminal's Ctrl-C (SIGINT to the foreground group) and `kill -TERM -PGID`. SIGINT or SIGTERM
reaches the launcher either way (the harness's own stop() sends SIGTERM to the launcher alone).

The launcher prints "stopping" and "stopped", nothing else (no traceback, no Ray error, no
Serve log line), exits 0 within 10 s (3-5 s measured, docs/reliability.md), and no process of
its Ray is left. One server start per case."""

from __future__ import annotations

import os
import signal
import time

import pytest

from harness.server import READY_LINE, ServerProcess

pytestmark = pytest.mark.e2e

NOISE = ("Traceback", "ERROR", "Error", "graceful_shutdown", "killed by `ray.kill`", "Stack trace", "*** ")


def _stat(pid: int) -> tuple[bytes, int, int, int] | None:
    """(state, parent pid, session id, start time) of a process, None once it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return fields[0], int(fields[1]), int(fields[3]), int(fields[19])


def _all_processes() -> dict[int, tuple[bytes, int, int, int]]:
    stats = {int(name): _stat(int(name)) for name in os.listdir("/proc") if name.isdigit()}
    return {pid: stat for pid, stat in stats.items() if stat is not None}


def _server_processes(root: int) -> dict[int, tuple[bytes, int, int, int]]:
    """The launcher and every process under it: Ray's own, its workers, their children."""
    everything = _all_processes()
    found, todo = {}, [root]
    while todo:
        pid = todo.pop()
        found[pid] = everything[pid]
        todo += [child for child, stat in everything.items() if stat[1] == pid and child not in found]
    return found


def _still_alive(before: dict[int, tuple[bytes, int, int, int]]) -> list[int]:
    """Those of `before` still running, and anything running in their sessions (a zombie
    waiting for a reaper is not running)."""
    sessions = {stat[2] for stat in before.values()}
    return sorted(pid for pid, stat in _all_processes().items() if stat[0] != b"Z" and (
        stat[2] in sessions or (pid in before and before[pid][3] == stat[3])))


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c-to-the-group", "sigterm-to-the-group"])
def test_a_signal_to_the_process_group_stops_the_server_quietly_and_completely(tmp_path, sig):
    server = ServerProcess(tmp_path / "data").start()
    try:
        processes = _server_processes(server.process.pid)
        assert len(processes) > 5, processes  # the launcher, the GCS, the raylet, Serve's workers, ...
        started = time.monotonic()
        os.killpg(server.process.pid, sig)  # the harness started the launcher as a group's leader
        returncode = server.process.wait(timeout=60)
        stopped_in = time.monotonic() - started
        deadline = time.monotonic() + 5  # SIGKILLed processes take a moment to be torn down
        while (left := _still_alive(processes)) and time.monotonic() < deadline:
            time.sleep(0.1)
        print(f"{signal.Signals(sig).name} to the group -> exit {returncode} in {stopped_in:.1f} s; "
              f"{len(processes)} processes before, {len(left)} after")

        output = server.log_path.read_text(errors="replace")
        after_ready = output[output.rindex(READY_LINE):].splitlines()[1:]
        assert not [line for line in after_ready if any(word in line for word in NOISE)], output[-6000:]
        assert after_ready == ["stopping", "stopped"], output[-6000:]
        assert returncode == 0, output[-6000:]
        assert stopped_in <= 10, f"the launcher took {stopped_in:.1f} s to stop"
        assert not left, [(pid, _read_cmdline(pid)) for pid in left]
    finally:
        server.stop()


def _read_cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")[:200]
    except OSError:
        return "?"
