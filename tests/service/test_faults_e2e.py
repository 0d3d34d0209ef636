"""Faults injected into a running fine-tuning job on a real server (issue #11, item 5):

- SIGKILL of the Ray worker running the job: the manager retries it (attempt 2) from its last
  checkpoint; then SIGTERM of the launcher: it exits within 10 s, leaving the job RUNNING, and
  the next start resumes it (attempt 3) from its checkpoint; it ends SUCCEEDED.
- a node killed on a real two-node Ray cluster (`ray start` on this machine: a head without
  CPUs and two one-CPU worker nodes): the job resumes on the other node from the checkpoint
  kept in the artifact store.

Slow (minutes each): `OMP_NUM_THREADS=1 .venv/bin/pytest -m slow tests/service/test_faults_e2e.py`.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from equiprune.client import specs
from equiprune.client.sdk import EquipruneClient
from equiprune.v1 import jobs_pb2

from .server import ServerProcess, free_port

pytestmark = pytest.mark.slow

SPARSITY = 0.5
EPOCHS = 600  # ≈ 40 ms each on sample:digits: long enough to be interrupted twice
CNN = {"num_classes": 10, "in_channels": 1, "input_size": 8, "channels": [8, 16]}
RAY = str(Path(sys.executable).with_name("ray"))


# --------------------------------------------------------------------------- helpers


def _processes() -> dict[int, tuple[int, str]]:
    """pid → (parent pid, command line), from /proc."""
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                command = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
            with open(f"/proc/{entry}/stat") as f:
                parent = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        found[int(entry)] = (parent, command)
    return found


def _with_descendants(roots: set[int], table: dict[int, tuple[int, str]]) -> set[int]:
    found, grew = set(roots), True
    while grew:
        grew = False
        for pid, (parent, _) in table.items():
            if parent in found and pid not in found:
                found.add(pid)
                grew = True
    return found


def _kill(pids: set[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass


def _task_process(job_id: str, timeout: float = 60) -> int:
    """The Ray worker running the job's task (its process title is `ray::equiprune-<job id>`)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pids = [pid for pid, (_, command) in _processes().items() if command.startswith(f"ray::equiprune-{job_id}")]
        if pids:
            return pids[0]
        time.sleep(0.2)
    raise AssertionError(f"no process runs job {job_id}")


def _stored(data_dir: Path, job_id: str) -> dict | None:
    """What the artifact store holds of the job's checkpoints (checkpoints.py)."""
    try:
        return json.loads((data_dir / "artifacts" / "checkpoints" / job_id / "latest.json").read_text())
    except (OSError, ValueError):
        return None


def _wait_stored(data_dir: Path, job_id: str, epochs_done: int, timeout: float = 300) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        stored = _stored(data_dir, job_id)
        if stored is not None and (stored.get("epochs_done") or 0) >= epochs_done:
            return stored
        time.sleep(0.05)
    raise AssertionError(f"no stored checkpoint of epoch {epochs_done} within {timeout} s")


def _dense_model(client: EquipruneClient, dataset: str) -> str:
    train = client.wait_job(client.create_job(specs.train_spec(
        dataset=dataset, architecture="small_cnn", architecture_kwargs=CNN, epochs=2)).job_id, timeout=300)
    assert train.state == jobs_pb2.JOB_STATE_SUCCEEDED, train.error
    return train.result.outputs[0].artifact.artifact_id


def _long_job(client: EquipruneClient, workers: int = 1, epochs: int = EPOCHS) -> str:
    """A long prune-and-finetune job on the digits sample, of a dense model trained for it."""
    dataset = client.import_uri("sample:digits", "dataset").artifact_id
    model = _dense_model(client, dataset)
    spec = specs.prune_and_finetune_spec(model=model, dataset=dataset, group_by="cohort", sparsity=SPARSITY,
                                         method="naive", epochs=epochs, min_group_size=10)
    spec.resources.workers = workers
    return client.create_job(spec).job_id


def _events_until(client: EquipruneClient, job_id: str, after: int, done) -> list[jobs_pb2.JobEvent]:
    """The job's events after `after`, up to the first for which `done(events so far)` holds."""
    seen = []
    for event in client.watch(job_id, after_sequence=after):
        seen.append(event)
        if done(seen):
            break
    return seen


def _first_step_after(events, message_prefix: str):
    """The first fine-tuning step event after the event whose message starts with the prefix."""
    start = next(i for i, e in enumerate(events) if e.progress.message.startswith(message_prefix))
    return next((e.progress for e in events[start:] if e.progress.phase == "finetune" and e.progress.total_steps),
                None)


def _check_result(client: EquipruneClient, job: jobs_pb2.Job, tmp_path: Path) -> dict:
    """The requested sparsity, every stage's report and the three outputs; the full report."""
    assert job.state == jobs_pb2.JOB_STATE_SUCCEEDED, job.error
    assert abs(job.result.measured_sparsity - SPARSITY) < 0.01
    stages = {(r.stage, r.split) for r in job.result.reports}
    assert {(1, "test"), (2, "test"), (4, "test")} <= stages, stages  # dense, pruned, fine-tuned
    outputs = {o.role: o.artifact for o in job.result.outputs}
    assert set(outputs) == {"model", "sparse_model", "report"}
    path = tmp_path / f"{job.job_id}-report.json"
    client.download(outputs["report"].artifact_id, path)
    report = json.loads(path.read_text())
    assert {"dense", "pruned", "finetuned", "pruning", "finetune"} <= {k for k, v in report.items() if v}, sorted(report)
    return report


# --------------------------------------------------------------------------- one machine


def test_worker_sigkill_is_retried_from_the_checkpoint_and_sigterm_stops_within_10s(own_server, tmp_path):
    data_dir = own_server.data_dir
    with EquipruneClient(own_server.target, timeout=60) as client:
        job_id = _long_job(client)

        # 1. SIGKILL of the worker process once a few epochs are checkpointed and stored.
        before_kill = _wait_stored(data_dir, job_id, epochs_done=3)
        worker = _task_process(job_id)
        os.kill(worker, signal.SIGKILL)
        killed = time.monotonic()
        events = _events_until(client, job_id, 0, lambda seen: _retried_and_stepping(seen, "attempt 2 of 3"))
        messages = [e.progress.message for e in events]
        retry = next(m for m in messages if m.startswith("attempt 2 of 3"))
        assert re.match(r"attempt 2 of 3: the process running the job stopped unexpectedly \(WorkerCrashedError\); "
                        r"resuming from ", retry), retry
        resumed = _first_step_after(events, "attempt 2 of 3")
        per_epoch = resumed.total_steps // resumed.epochs
        # It went on from the epoch stored before the kill or a later one (every epoch's last
        # step is reported, so the first step reported is in the epoch it resumed at).
        assert resumed.epoch >= before_kill["epochs_done"] >= 3, (resumed, before_kill)
        assert any(m.startswith("run on node ") and f"after epoch {resumed.epoch} of {EPOCHS}" in m
                   for m in messages) or any("resuming from its last checkpoint" in m for m in messages), messages
        print(f"worker SIGKILL after epoch {before_kill['epochs_done']} (stored); {retry!r}; attempt 2 resumed at "
              f"epoch {resumed.epoch} (0-based), {time.monotonic() - killed:.1f} s after the kill")
        assert client.get_job(job_id).attempt == 2

        # 2. SIGTERM of the launcher, a few epochs later.
        stored = _wait_stored(data_dir, job_id, epochs_done=resumed.epoch + 2)
    started = time.monotonic()
    own_server.process.send_signal(signal.SIGTERM)
    own_server.process.wait(timeout=60)
    stopped_in = time.monotonic() - started
    print(f"SIGTERM → exit in {stopped_in:.1f} s (stored checkpoint: epoch {stored['epochs_done']})")
    assert stopped_in <= 10, f"the launcher took {stopped_in:.1f} s to stop"

    own_server.start()
    with EquipruneClient(own_server.target, timeout=60) as client:
        final = client.wait_job(job_id, timeout=900)
        events = list(client.watch(job_id))
        messages = [e.progress.message for e in events]
        restart = next(m for m in messages if m.startswith("the service restarted during run 2"))
        assert re.search(r"resuming from (the|its last) checkpoint,? written (on this node )?after epoch \d+ of "
                         rf"{EPOCHS}", restart), restart
        after_restart = _first_step_after(events, "the service restarted during run 2")
        assert after_restart.epoch >= stored["epochs_done"], (after_restart, stored)
        print(f"restart: {restart!r}; attempt 3 resumed at epoch {after_restart.epoch}; final state "
              f"{jobs_pb2.JobState.Name(final.state)}")
        assert final.attempt == 3
        report = _check_result(client, final, tmp_path)
    assert report["finetune"]["resumed_from_step"] == after_restart.epoch * per_epoch
    assert not (data_dir / "artifacts" / "checkpoints" / job_id).exists(), "stored checkpoints go with the job"


def test_a_killed_data_parallel_worker_is_retried_from_the_checkpoint(own_server, tmp_path):
    data_dir = own_server.data_dir
    with EquipruneClient(own_server.target, timeout=60) as client:
        job_id = _long_job(client, workers=2, epochs=200)
        before_kill = _wait_stored(data_dir, job_id, epochs_done=3)
        train_workers = [pid for pid, (_, command) in _processes().items() if command.startswith("ray::RayTrainWorker")]
        assert len(train_workers) == 2, train_workers
        os.kill(max(train_workers), signal.SIGKILL)
        killed = time.monotonic()
        events = _events_until(client, job_id, 0, lambda seen: _retried_and_stepping(seen, "attempt 2 of 3"))
        messages = [e.progress.message for e in events]
        retry = next((m for m in messages if m.startswith("attempt 2 of 3")), None)
        assert retry is not None, [m for m in messages if m][-5:]
        assert re.match(r"attempt 2 of 3: Ray Train worker \d of the job died \(\w+\); resuming ", retry), retry
        resumed = _first_step_after(events, "attempt 2 of 3")
        assert resumed.epoch >= before_kill["epochs_done"] >= 3, (resumed, before_kill)
        print(f"data-parallel worker SIGKILL after epoch {before_kill['epochs_done']} (stored); {retry!r}; attempt 2 "
              f"resumed at epoch {resumed.epoch}, {time.monotonic() - killed:.1f} s after the kill")
        final = client.wait_job(job_id, timeout=900)
        assert final.attempt == 2
        report = _check_result(client, final, tmp_path)
    per_epoch = resumed.total_steps // resumed.epochs
    assert report["finetune"]["resumed_from_step"] == resumed.epoch * per_epoch


def _retried_and_stepping(seen, prefix: str) -> bool:
    if seen[-1].state in (jobs_pb2.JOB_STATE_FAILED, jobs_pb2.JOB_STATE_SUCCEEDED, jobs_pb2.JOB_STATE_CANCELLED):
        return True
    return any(e.progress.message.startswith(prefix) for e in seen) and _first_step_after(seen, prefix) is not None


# --------------------------------------------------------------------------- two nodes


class RayCluster:
    """A Ray cluster of `ray start` processes on this machine, in a temp folder of its own; each
    node is found (and killed) through its raylet's `--node_id`."""

    def __init__(self) -> None:
        self.temp_dir = tempfile.mkdtemp(prefix="epc", dir="/tmp")
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
        self.env.pop("RAY_TMPDIR", None)

    def start_head(self) -> None:
        self._ray("start", "--head", f"--port={self.port}", "--num-cpus=0", '--resources={"head": 1}',
                  f"--temp-dir={self.temp_dir}", "--include-dashboard=false", "--disable-usage-stats")

    def add_worker(self) -> str:
        """Start a one-CPU worker node; return its node id."""
        before = set(self.raylets())
        self._ray("start", f"--address={self.address}", "--num-cpus=1", "--disable-usage-stats")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            new = set(self.raylets()) - before
            if new:
                return new.pop()
            time.sleep(0.2)
        raise AssertionError("the worker node's raylet did not appear")

    def raylets(self) -> dict[str, int]:
        """node id → raylet pid, for this cluster's nodes."""
        found = {}
        for pid, (_, command) in _processes().items():
            if "/raylet/raylet " in command and self.temp_dir in command:
                match = re.search(r"--node_id=([0-9a-f]+)", command)
                if match:
                    found[match.group(1)] = pid
        return found

    def kill_node(self, node_id: str) -> None:
        """SIGKILL the node's raylet and every process under it (its workers and agents)."""
        table = _processes()
        _kill(_with_descendants({self.raylets()[node_id]}, table))

    def stop(self) -> None:
        table = _processes()
        roots = {pid for pid, (_, command) in table.items() if self.temp_dir in command and pid != os.getpid()}
        _kill(_with_descendants(roots, table))
        shutil.rmtree(self.temp_dir, ignore_errors=True)

    def _ray(self, *args: str) -> None:
        done = subprocess.run([RAY, *args], env=self.env, capture_output=True, text=True, timeout=180)
        assert done.returncode == 0, done.stdout + done.stderr


@pytest.fixture
def cluster():
    ray_cluster = RayCluster()
    try:
        ray_cluster.start_head()
        yield ray_cluster
    finally:
        ray_cluster.stop()


def test_a_killed_node_s_job_resumes_on_the_other_node_from_the_stored_checkpoint(cluster, tmp_path):
    # The server joins before the worker nodes, so every Serve actor (num_cpus 0) is on the head.
    server = ServerProcess(tmp_path / "data", extra_args=["--address", cluster.address]).start()
    try:
        nodes = [cluster.add_worker(), cluster.add_worker()]
        data_dir = server.data_dir
        with EquipruneClient(server.target, timeout=60) as client:
            job_id = _long_job(client)
            before_kill = _wait_stored(data_dir, job_id, epochs_done=3)
            first_node = before_kill["node_id"]
            assert first_node in nodes, (first_node, nodes)
            cluster.kill_node(first_node)
            killed = time.monotonic()
            # The dead node's disk is gone with it: only the artifact store has the checkpoint.
            shutil.rmtree(data_dir / "jobs" / job_id, ignore_errors=True)

            events = _events_until(client, job_id, 0, lambda seen: _retried_and_stepping(seen, "attempt 2 of 3"))
            messages = [e.progress.message for e in events]
            retry = next(m for m in messages if m.startswith("attempt 2 of 3"))
            assert "resuming from the checkpoint written after epoch" in retry, retry
            restored = next(m for m in messages if m.startswith("run on node ") and "restored from the artifact store"
                            in m)
            other = [n for n in nodes if n != first_node][0]
            assert restored.startswith(f"run on node {other[:12]}:"), (restored, other)
            assert f"(written on node {first_node[:12]})" in restored, restored
            resumed = _first_step_after(events, "attempt 2 of 3")
            per_epoch = resumed.total_steps // resumed.epochs
            assert resumed.epoch >= before_kill["epochs_done"] >= 3, (resumed, before_kill)
            print(f"node kill after epoch {before_kill['epochs_done']} (stored); {retry!r}; attempt 2 on the other "
                  f"node resumed at epoch {resumed.epoch}, {time.monotonic() - killed:.1f} s after the kill")

            final = client.wait_job(job_id, timeout=900)
            assert final.attempt == 2
            report = _check_result(client, final, tmp_path)
        assert report["finetune"]["resumed_from_step"] == resumed.epoch * per_epoch
        assert not (data_dir / "artifacts" / "checkpoints" / job_id).exists()
    finally:
        server.stop()
