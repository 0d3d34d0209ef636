"""Faults of a job's run, without a real Ray: checkpoints kept in the artifact store (copied
from the working folder as the run writes them, restored on any node) and the manager's retry
of a run whose task crashed. The end-to-end versions (a real worker SIGKILL, a node kill on a
two-node cluster, SIGTERM) are in test_faults_e2e.py."""

from __future__ import annotations

import asyncio
import json
import os
import time
import uuid

import pytest
import ray

from equiprune.service.jobs import manager as manager_module
from equiprune.service.jobs.checkpoints import CheckpointKeeper, CheckpointStore
from equiprune.service.jobs.manager import JobManager
from equiprune.service.jobs.tasks import _open_inside, fresh_work_dir
from equiprune.service.settings import ServerSettings

SPE = 10  # steps per epoch
EPOCHS = 5


def _write(work, payload: bytes) -> None:
    """What the engine does: a temporary file, then a rename."""
    tmp = work / "checkpoint.pt.tmp"
    tmp.write_bytes(payload)
    os.replace(tmp, work / "checkpoint.pt")


def _step(step: int) -> dict:
    return {"phase": "finetune", "step": step, "total_steps": SPE * EPOCHS, "epoch": (step - 1) // SPE,
            "epochs": EPOCHS}


def _run_epochs(keeper, work, epochs: range, emitted: list) -> None:
    """Events and epoch-end checkpoints in the engine's order: the epoch's last step is
    reported, then its checkpoint written."""
    on_event = keeper.watching(emitted.append)
    for epoch in epochs:
        for step in range(epoch * SPE + 1, (epoch + 1) * SPE + 1):
            on_event(_step(step))
        _write(work, f"after epoch {epoch + 1}".encode())


def _settle(keeper) -> None:
    keeper.close(copy_pending=True)


@pytest.mark.parametrize("root", ["local", "memory"])
def test_each_new_checkpoint_is_copied_to_the_store_with_the_epochs_it_completed(tmp_path, root):
    url = str(tmp_path / "artifacts") if root == "local" else f"memory://ckpt-{uuid.uuid4().hex}"
    store = CheckpointStore(url)
    work = fresh_work_dir(tmp_path / "jobs", "job-1")
    keeper = CheckpointKeeper(store, "job-1", work, _open_inside)
    assert keeper.restore() == ("none", None)
    emitted: list = []
    _run_epochs(keeper, work, range(3), emitted)
    keeper.watching(emitted.append)({"phase": "finetune", "step": 31, "total_steps": 50, "epochs": 5})
    _settle(keeper)
    assert len(emitted) == 31, "every event still goes out"
    latest = store.latest("job-1")
    assert latest is not None and latest.epochs_done == 3 and latest.epochs == 5
    assert "after epoch 3 of 5" in latest.describe()
    # Only the newest version is kept.
    stored = [p for p in store._fs.ls(store._dir("job-1"), detail=False) if p.endswith(".pt")]
    assert len(stored) == 1

    # Another node: an empty working folder gets the stored bytes, with their age.
    other = fresh_work_dir(tmp_path / "node-b", "job-1")
    again = CheckpointKeeper(store, "job-1", other, _open_inside)
    where, record = again.restore()
    assert where == "stored" and record.epochs_done == 3
    assert (other / "checkpoint.pt").read_bytes() == b"after epoch 3"
    # ... and does not copy them back unchanged: the next step event finds nothing new.
    again.watching(lambda e: None)(_step(31))
    again.close(copy_pending=True)
    assert again.saved == 0

    store.remove("job-1")
    assert store.latest("job-1") is None


def test_a_newer_checkpoint_on_this_node_wins_over_the_stored_one(tmp_path):
    store = CheckpointStore(str(tmp_path / "artifacts"))
    jobs = tmp_path / "jobs"
    work = fresh_work_dir(jobs, "job-1")
    keeper = CheckpointKeeper(store, "job-1", work, _open_inside)
    keeper.restore()
    _run_epochs(keeper, work, range(2), [])
    keeper.watching(lambda e: None)(_step(21))
    keeper.close(copy_pending=True)
    assert store.latest("job-1").epochs_done == 2
    time.sleep(0.01)
    _write(work, b"after epoch 3")  # written, then the run was killed before any copy

    work = fresh_work_dir(jobs, "job-1")  # the next run on this node keeps the file and its age
    keeper = CheckpointKeeper(store, "job-1", work, _open_inside)
    assert keeper.restore() == ("local", None)
    assert (work / "checkpoint.pt").read_bytes() == b"after epoch 3"
    # Its first step event (it resumed at step 30) copies it to the store.
    keeper.watching(lambda e: None)(_step(31))
    keeper.close(copy_pending=True)
    assert store.latest("job-1").epochs_done == 3


def test_a_stored_checkpoint_that_does_not_match_its_record_is_not_used(tmp_path):
    store = CheckpointStore(str(tmp_path / "artifacts"))
    work = fresh_work_dir(tmp_path / "jobs", "job-1")
    keeper = CheckpointKeeper(store, "job-1", work, _open_inside)
    _run_epochs(keeper, work, range(1), [])
    keeper.watching(lambda e: None)(_step(11))
    keeper.close(copy_pending=True)
    record = store.latest("job-1")
    (tmp_path / "artifacts" / "checkpoints" / "job-1" / record.file).write_bytes(b"tampered!!!!!")
    other = fresh_work_dir(tmp_path / "node-b", "job-1")
    assert CheckpointKeeper(store, "job-1", other, _open_inside).restore() == ("none", None)
    assert list(other.iterdir()) == []
    # A damaged record is no checkpoint either.
    (tmp_path / "artifacts" / "checkpoints" / "job-1" / "latest.json").write_text(json.dumps({"file": "../x.pt"}))
    assert store.latest("job-1") is None


def test_a_checkpoint_that_is_a_link_is_not_copied(tmp_path):
    store = CheckpointStore(str(tmp_path / "artifacts"))
    work = fresh_work_dir(tmp_path / "jobs", "job-1")
    secret = tmp_path / "secret"
    secret.write_bytes(b"root only")
    keeper = CheckpointKeeper(store, "job-1", work, _open_inside)
    on_event = keeper.watching(lambda e: None)
    on_event(_step(1))
    (work / "checkpoint.pt").symlink_to(secret)
    on_event(_step(2))
    keeper.close(copy_pending=True)
    assert store.latest("job-1") is None


# --------------------------------------------------------------------------- the manager's retry


class _Ref:
    def __init__(self, value):
        self.value = value

    def __await__(self):
        if False:
            yield
        return self.value


class _Task:
    """A streaming task: its items, then maybe a Ray error."""

    def __init__(self, items, error=None, hold: asyncio.Event | None = None):
        self.items, self.error, self.hold = items, error, hold

    def __aiter__(self):
        return self._gen()

    async def _gen(self):
        for item in self.items:
            yield _Ref(item)
        if self.hold is not None:
            await self.hold.wait()
        if self.error is not None:
            raise self.error


class _FakeExecute:
    def __init__(self, runs):
        self.runs, self.launched = list(runs), 0

    def options(self, **_):
        return self

    def remote(self, *args):
        self.launched += 1
        return self.runs.pop(0)


def _manager(tmp_path, monkeypatch, runs, max_attempts=3):
    settings = ServerSettings(data_dir=tmp_path, max_attempts=max_attempts)
    fake = _FakeExecute(runs)
    monkeypatch.setattr(manager_module, "execute_job", fake)
    monkeypatch.setattr(manager_module, "RETRY_BACKOFF_S", 0.05)
    monkeypatch.setattr(ray, "cancel", lambda *a, **k: None)
    manager = JobManager.func_or_class(settings.model_dump(mode="json"))

    async def ready():
        return 0

    manager.ready = ready  # no recovery: each test runs the job itself
    job, _ = manager.store.create("finetune", {"resources": {"workers": 1, "cpus_per_worker": 1,
                                                             "gpus_per_worker": 0}})
    return manager, fake, job.job_id


def _crash():
    return ray.exceptions.WorkerCrashedError()


def test_a_crashed_run_is_retried_and_the_retry_is_in_the_history(tmp_path, monkeypatch):
    runs = [_Task([("started", None), ("progress", {"phase": "finetune", "step": 1})], _crash()),
            _Task([("started", None), ("result", {"outputs": []})])]
    manager, fake, job_id = _manager(tmp_path, monkeypatch, runs)
    CheckpointStore.from_settings(manager.settings)  # the store root exists
    asyncio.run(manager._run(job_id))
    record = manager.store.get(job_id)
    assert record.state == "succeeded" and record.attempt == 2 and fake.launched == 2
    messages = [e.progress.get("message", "") for e in manager.store.events_since(job_id, 0) if e.progress]
    retry = [m for m in messages if m.startswith("attempt 2 of 3")]
    assert retry and "WorkerCrashedError" in retry[0] and "starting again" in retry[0], messages


def test_after_the_last_attempt_the_job_fails_saying_how_many_runs(tmp_path, monkeypatch):
    runs = [_Task([("started", None)], _crash()) for _ in range(2)]
    manager, fake, job_id = _manager(tmp_path, monkeypatch, runs, max_attempts=2)
    asyncio.run(manager._run(job_id))
    record = manager.store.get(job_id)
    assert record.state == "failed" and fake.launched == 2
    assert "in each of its 2 runs" in record.error["message"] and "WorkerCrashedError" in record.error["message"]


def test_a_cancel_during_the_backoff_wins(tmp_path, monkeypatch):
    runs = [_Task([("started", None)], _crash()), _Task([("started", None), ("result", {"outputs": []})])]
    manager, fake, job_id = _manager(tmp_path, monkeypatch, runs)
    monkeypatch.setattr(manager_module, "RETRY_BACKOFF_S", 1.0)

    async def scenario():
        run = asyncio.create_task(manager._run(job_id))
        for _ in range(100):
            await asyncio.sleep(0.02)
            if manager.store.get(job_id).state == "queued" and manager.store.get(job_id).attempt == 1:
                break
        await manager.cancel(job_id)
        await run

    asyncio.run(scenario())
    assert manager.store.get(job_id).state == "cancelled" and fake.launched == 1


def test_a_stopping_service_does_not_retry_and_leaves_the_job_to_the_next_start(tmp_path, monkeypatch):
    hold = asyncio.Event()
    runs = [_Task([("started", None)], ray.exceptions.TaskCancelledError(), hold)]
    manager, fake, job_id = _manager(tmp_path, monkeypatch, runs)

    async def scenario():
        run = asyncio.create_task(manager._run(job_id))
        await asyncio.sleep(0.1)
        await manager.stop_jobs()
        hold.set()
        await run

    asyncio.run(scenario())
    assert manager.store.get(job_id).state == "running" and fake.launched == 1


def test_stored_checkpoints_go_when_the_job_ends(tmp_path, monkeypatch):
    runs = [_Task([("started", None), ("result", {"outputs": []})])]
    manager, fake, job_id = _manager(tmp_path, monkeypatch, runs)
    store = manager._checkpoints
    work = fresh_work_dir(manager.settings.jobs_dir, job_id)
    keeper = CheckpointKeeper(store, job_id, work, _open_inside)
    keeper.watching(lambda e: None)(_step(1))
    _write(work, b"x")
    keeper.watching(lambda e: None)(_step(2))
    keeper.close(copy_pending=True)
    assert store.latest(job_id) is not None
    assert asyncio.run(manager._resume_note(job_id)).startswith("resuming from a checkpoint written during epoch 1 of 5")
    asyncio.run(manager._run(job_id))
    assert store.latest(job_id) is None


def test_a_data_parallel_worker_s_death_is_a_crash_and_retried(tmp_path, monkeypatch):
    runs = [_Task([("started", None), ("crash", "Ray Train worker 1 of the job died (ActorDiedError)")]),
            _Task([("started", None), ("result", {"outputs": []})])]
    manager, fake, job_id = _manager(tmp_path, monkeypatch, runs)
    asyncio.run(manager._run(job_id))
    record = manager.store.get(job_id)
    assert record.state == "succeeded" and record.attempt == 2
    messages = [e.progress.get("message", "") for e in manager.store.events_since(job_id, 0) if e.progress]
    assert any(m.startswith("attempt 2 of 3: Ray Train worker 1 of the job died (ActorDiedError); starting again")
               for m in messages), messages


def test_an_exception_of_the_task_s_own_code_is_not_retried(tmp_path, monkeypatch):
    error = ray.exceptions.RayTaskError("execute_job", "Traceback ...", ValueError("bad"))
    runs = [_Task([("started", None)], error), _Task([("started", None), ("result", {"outputs": []})])]
    manager, fake, job_id = _manager(tmp_path, monkeypatch, runs)
    asyncio.run(manager._run(job_id))
    record = manager.store.get(job_id)
    assert record.state == "failed" and fake.launched == 1 and record.error["code"] == "INTERNAL"


def test_ray_train_reports_a_dead_worker_as_lost_and_an_engine_error_as_itself():
    from ray.train import WorkerGroupError

    from equiprune.engine.errors import InvalidConfigError
    from equiprune.service.jobs.distributed import WorkerEngineError, WorkersLost, _unwrapped

    lost = _unwrapped(WorkerGroupError("died", {0: RuntimeError("gloo: connection closed"),
                                                1: ray.exceptions.ActorDiedError()}))
    assert isinstance(lost, WorkersLost) and "worker 1" in str(lost) and "ActorDiedError" in str(lost)
    engine = _unwrapped(WorkerGroupError("refused", {0: WorkerEngineError("InvalidConfigError", "finetune.lr", "no"),
                                                     1: ray.exceptions.ActorDiedError()}))
    assert isinstance(engine, InvalidConfigError)
    other = WorkerGroupError("bug", {0: ValueError("a bug")})
    assert _unwrapped(other) is other
