"""The job manager: one Serve replica that owns the job store and the running Ray tasks.

It records jobs (with idempotency), launches each as a Ray task with the resources its spec
asks for, writes the task's progress and result into the store, answers long-polls for new
events, and cancels. Being the single writer keeps job state consistent whatever the number
of ingress replicas. On start it resumes the jobs a previous run left unfinished: requeued
(fine-tuning resumes from its checkpoint) until `max_attempts` runs, then failed with the
reason — a job is never silently lost. A job whose task crashes while the service runs (its
worker process killed, its node gone) is requeued and run again the same way, on any node: each
run keeps its checkpoints in the artifact store (checkpoints.py).
"""

from __future__ import annotations

import asyncio
import logging
import time

import ray
from ray import serve

from equiprune.service.errors import (FailedPrecondition, ResourceExhausted, client_status, internal_message,
                                      new_incident)
from equiprune.service.factory import settings_from
from equiprune.service.jobs.checkpoints import CHECKPOINT, CheckpointStore, local_signature
from equiprune.service.jobs.store import JobEventRecord, JobRecord, SqliteJobStore
from equiprune.service.jobs.tasks import execute_job

log = logging.getLogger("equiprune.service.jobs.manager")

UNFINISHED = ("queued", "running")


RETRY_BACKOFF_S = 1.5  # between a crashed run and the next


class TaskCrashed(Exception):
    """The job's task reported that part of its run died (a data-parallel job's Ray Train
    worker): a crash like the task's own."""


def _crash_reason(err: BaseException) -> str:
    """What ended a job's task abnormally, for the job's history: 'what happened (ErrorType)'."""
    exceptions = ray.exceptions
    if isinstance(err, TaskCrashed):
        return str(err)
    if isinstance(err, (exceptions.NodeDiedError, exceptions.LocalRayletDiedError)):
        why = "the node running the job died"
    elif isinstance(err, (exceptions.ObjectLostError, exceptions.OwnerDiedError)):
        why = "the job's results were lost with the node or process holding them"
    elif isinstance(err, exceptions.TaskCancelledError):
        why = "the job's task was cancelled outside the service"
    else:
        why = "the process running the job stopped unexpectedly"
    return f"{why} ({type(err).__name__})"


@serve.deployment(name="JobManager", num_replicas=1, max_ongoing_requests=10_000,
                  ray_actor_options={"num_cpus": 0})
class JobManager:
    def __init__(self, settings: dict) -> None:
        self.settings = settings_from(settings)
        self.settings.jobs_dir.mkdir(parents=True, exist_ok=True)
        self.store = SqliteJobStore(self.settings.database)
        self._tasks: dict[str, ray.ObjectRefGenerator] = {}
        self._runs: set[asyncio.Task] = set()
        self._changed: asyncio.Condition | None = None
        self._recovery: asyncio.Task | None = None
        self._stopping = False
        self._checkpoints = CheckpointStore.from_settings(self.settings)

    # ------------------------------------------------------------------ life cycle

    async def ready(self) -> int:
        """Resume unfinished jobs (once); return how many were resumed."""
        if self._recovery is None:
            self._recovery = asyncio.create_task(self._recover())
        return await asyncio.shield(self._recovery)

    async def _recover(self) -> int:
        resumed = 0
        for record in self.store.unfinished():
            if record.attempt >= self.settings.max_attempts:
                self.store.finish(record.job_id, "failed", error={
                    "code": "ABORTED", "field": "",
                    "message": f"the service stopped during each of the job's {record.attempt} runs; not retried again"})
                await self._forget_checkpoints(record.job_id)
                continue
            if record.state == "running":
                how = await self._resume_note(record.job_id)
                self.store.requeue(record.job_id, f"the service restarted during run {record.attempt}; {how}")
            self._launch(record.job_id)
            resumed += 1
        if resumed:
            log.info("resumed %d unfinished jobs", resumed)
        return resumed

    # ------------------------------------------------------------------ commands

    async def create(self, kind: str, spec: dict, request_id: str | None, tenant: str,
                     max_concurrent_jobs: int) -> JobRecord:
        """Record and launch `tenant`'s job, within its quota and the server's limit (the
        manager is the single writer, so the counts cannot race)."""
        await self.ready()
        self._check_resources(spec["resources"])
        if request_id is None or self.store.find_request(request_id, tenant) is None:
            if self.store.count_in_states(UNFINISHED, tenant) >= max_concurrent_jobs:
                raise ResourceExhausted(f"tenant {tenant} already has {max_concurrent_jobs} jobs queued or running, "
                                        "its quota max_concurrent_jobs; wait for some to finish or cancel them",
                                        field="quotas.max_concurrent_jobs")
            if self.store.count_in_states(UNFINISHED) >= self.settings.max_unfinished_jobs:
                # Other tenants' jobs are in that count: the client is told no numbers.
                log.warning("job refused: %d jobs queued or running (max_unfinished_jobs)",
                            self.settings.max_unfinished_jobs)
                raise ResourceExhausted("the server is at its limit of queued and running jobs; try again later",
                                        field="spec")
        record, created = self.store.create(kind, spec, request_id, tenant)
        if created:
            self._launch(record.job_id)
        return record

    async def count_unfinished(self, tenant: str) -> int:
        return self.store.count_in_states(UNFINISHED, tenant)

    async def stop_jobs(self) -> int:
        """The service is stopping: end every running task now, leaving its job RUNNING so the
        next start resumes it (from its checkpoint), rather than letting it run unobserved
        while Serve shuts down. Returns how many were stopped."""
        self._stopping = True
        tasks = list(self._tasks.values())
        for task in tasks:
            ray.cancel(task, force=True)
        return len(tasks)

    async def cancel(self, job_id: str) -> JobRecord:
        await self.ready()
        record = self.store.get(job_id)
        if record.done:
            return record
        record = self.store.finish(job_id, "cancelled", error={"code": "CANCELLED", "field": "",
                                                               "message": "cancelled at the client's request"})
        task = self._tasks.pop(job_id, None)
        if task is not None:
            # force: the worker process exits, releasing its CPUs/GPUs and any Ray Train workers.
            ray.cancel(task, force=True)
        await self._notify()
        return record

    # ------------------------------------------------------------------ queries

    # Every query first makes sure unfinished jobs were resumed: after Serve restarts this
    # replica alone, no create or cancel may come to do it.

    async def get(self, job_id: str) -> JobRecord:
        await self.ready()
        return self.store.get(job_id)

    async def list(self, states: tuple[str, ...], kind: str | None, page_size: int, page_token: str,
                   tenant: str | None = None):
        await self.ready()
        return self.store.list(states=states, kind=kind, page_size=page_size, page_token=page_token, tenant=tenant)

    async def wait(self, job_id: str, timeout_s: float) -> JobRecord:
        await self.ready()
        deadline = time.monotonic() + timeout_s
        while True:
            record = self.store.get(job_id)
            remaining = deadline - time.monotonic()
            if record.done or remaining <= 0:
                return record
            await self._wait_for_change(remaining)

    async def events(self, job_id: str, after_sequence: int, wait_s: float) -> tuple[list[JobEventRecord], bool]:
        """Events after `after_sequence`, waiting up to `wait_s` for one; and whether the job is done."""
        await self.ready()
        deadline = time.monotonic() + wait_s
        while True:
            events = self.store.events_since(job_id, after_sequence)
            # Done only once the caller has the job's last event (the terminal one): a long
            # history arrives in pages, and the stream must not end on the first.
            last = events[-1].sequence if events else after_sequence
            done = self.store.get(job_id).done and last >= self.store.last_sequence(job_id)
            remaining = deadline - time.monotonic()
            if events or done or remaining <= 0:
                return events, done
            await self._wait_for_change(remaining)

    # ------------------------------------------------------------------ running

    def _launch(self, job_id: str) -> None:
        if self._stopping:
            return  # stays queued; the next start runs it
        run = asyncio.get_running_loop().create_task(self._run(job_id))
        self._runs.add(run)
        run.add_done_callback(self._runs.discard)

    async def _run(self, job_id: str) -> None:
        """Run the job to its end: after a crash of its task (the worker process killed, its node
        gone) it is requeued and launched again, resuming from its last stored checkpoint, until
        `max_attempts` runs in all; then it fails saying why."""
        crashes = 0
        try:
            while (crash := await self._run_once(job_id)) is not None:
                crashes += 1
                if not await self._retry_after(job_id, crash, crashes):
                    break
        finally:
            record = self.store.get(job_id)
            if record.done:
                await self._forget_checkpoints(job_id)

    async def _retry_after(self, job_id: str, crash: BaseException, crashes: int) -> bool:
        """Requeue a job whose task crashed, then wait a moment; False when it is not run again
        (the last attempt is spent, the service is stopping, or the job ended meanwhile)."""
        record = self.store.get(job_id)
        runs, most = max(record.attempt, crashes), self.settings.max_attempts
        why = _crash_reason(crash)
        if runs >= most:
            log.warning("job %s: its task ended abnormally in run %d of %d, not retried: %s", job_id, runs, most, crash)
            self.store.finish(job_id, "failed", error={
                "code": "ABORTED", "field": "",
                "message": f"{why} in each of its {runs} runs (at most {most}); not "
                           "retried again" + ("; it may have run out of memory"
                                              if isinstance(crash, ray.exceptions.WorkerCrashedError) else "")})
            return False
        how = await self._resume_note(job_id)
        log.warning("job %s: its task ended abnormally in run %d (%s); retrying, %s", job_id, runs, crash, how)
        self.store.requeue(job_id, f"attempt {runs + 1} of {most}: {why}; {how}")
        await self._notify()
        await asyncio.sleep(RETRY_BACKOFF_S)  # a cancel meanwhile marks the job done: checked next
        return not self._stopping and not self.store.get(job_id).done

    async def _resume_note(self, job_id: str) -> str:
        """Where the next run will start: the stored checkpoint (any node), or this node's."""
        try:
            stored = await asyncio.to_thread(self._checkpoints.latest, job_id)
        except Exception:  # noqa: BLE001 - a message only
            stored = None
        local = local_signature(self.settings.job_dir(job_id) / "work" / CHECKPOINT)
        if stored is not None and (local is None or local[1] / 1e9 <= stored.written_at + 1e-3):
            return f"resuming from {stored.describe()}"
        if local is not None:  # written on this node after the last copy
            later = ""
            if stored is not None and stored.epochs_done:
                later = f" after epoch {stored.epochs_done}{f' of {stored.epochs}' if stored.epochs else ''} or later"
            return f"resuming from its last checkpoint, written on this node{later}"
        return "starting again (no checkpoint had been written yet)"

    async def _forget_checkpoints(self, job_id: str) -> None:
        try:
            await asyncio.to_thread(self._checkpoints.remove, job_id)
        except Exception:  # noqa: BLE001 - left behind, harmless
            log.warning("job %s: could not remove its stored checkpoints", job_id, exc_info=True)

    async def _run_once(self, job_id: str) -> BaseException | None:
        """One run of the job's task; the Ray error that ended it when it crashed, else None."""
        record = self.store.get(job_id)
        if record.done or self._stopping:
            return None
        resources = record.spec["resources"]
        distributed = resources["workers"] > 1
        # A data-parallel job's own task only drives Ray Train; its workers hold the CPUs/GPUs.
        task = execute_job.options(
            num_cpus=0 if distributed else resources["cpus_per_worker"],
            num_gpus=0 if distributed else resources["gpus_per_worker"],
            name=f"equiprune-{job_id}",
        ).remote(job_id, record.spec, self.settings.model_dump(mode="json"), resources["cpus_per_worker"],
                 record.tenant)
        self._tasks[job_id] = task
        try:
            async for ref in task:
                kind, payload = await ref
                self._apply(job_id, kind, payload, task)
                await self._notify()
        except (ray.exceptions.RayError, TaskCrashed) as err:
            # Every cancellation the manager makes leaves the job done or the service stopping;
            # anything else (the worker process killed, its node gone) is a crash. An exception
            # of the task's own code (RayTaskError; it reports its errors as data) is no crash.
            if not self._stopping and not self.store.get(job_id).done:
                if not isinstance(err, ray.exceptions.RayTaskError):
                    return err
                log.warning("job %s: its task raised: %s", job_id, err)
                incident = new_incident(err, where=f"the task of job {job_id}")
                self.store.finish(job_id, "failed", error={
                    "code": "INTERNAL", "field": "",
                    "message": f"the job's task failed ({type(err).__name__}); " + internal_message(incident)})
        except Exception as err:  # noqa: BLE001 - e.g. the job store failing: never strand the job
            log.exception("job %s: recording its progress failed", job_id)
            ray.cancel(task, force=True)
            status = client_status(err)
            try:
                self.store.finish(job_id, "failed", error={"code": status.code, "field": status.field or "",
                                                           "message": status.message})
            except Exception:  # noqa: BLE001 - the store itself is failing; the next start requeues it
                log.exception("job %s: could not record its failure", job_id)
        finally:
            if self._tasks.get(job_id) is task:
                del self._tasks[job_id]
            await self._notify()
        return None

    def _apply(self, job_id: str, kind: str, payload, task) -> None:
        if kind == "started":
            if self.store.mark_running(job_id).state != "running":
                ray.cancel(task, force=True)  # cancelled while it waited for resources
        elif kind == "progress":
            self.store.record_progress(job_id, payload)
        elif kind == "result":
            self.store.finish(job_id, "succeeded", result=payload)
        elif kind == "error":
            self.store.finish(job_id, "failed", error=payload)
        elif kind == "crash":
            raise TaskCrashed(str(payload)[:500])

    def _check_resources(self, resources: dict) -> None:
        """Refuse a job that this cluster could never schedule (it would wait forever): one
        worker must fit on one node, and all of them in the cluster."""
        nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
        for key, field in (("CPU", "cpus_per_worker"), ("GPU", "gpus_per_worker")):
            need = resources[field]
            largest = max((n.get(key, 0) for n in nodes), default=0)
            if need > largest:
                raise FailedPrecondition(f"one worker asks for {need} {key}(s) but the largest node has {int(largest)}",
                                         field=f"spec.resources.{field}")
        total = ray.cluster_resources()
        gpus = resources["workers"] * resources["gpus_per_worker"]
        if gpus > total.get("GPU", 0):
            raise FailedPrecondition(f"the job asks for {gpus} GPU(s) but the cluster has {int(total.get('GPU', 0))}",
                                     field="spec.resources.gpus_per_worker")
        cpus = resources["workers"] * resources["cpus_per_worker"]
        if cpus > total.get("CPU", 0):
            raise FailedPrecondition(f"the job asks for {cpus} CPU(s) but the cluster has {int(total.get('CPU', 0))}",
                                     field="spec.resources.workers")

    # ------------------------------------------------------------------ change notification

    def _condition(self) -> asyncio.Condition:
        if self._changed is None:
            self._changed = asyncio.Condition()
        return self._changed

    async def _notify(self) -> None:
        async with self._condition():
            self._condition().notify_all()

    async def _wait_for_change(self, timeout: float) -> None:
        async with self._condition():
            try:
                await asyncio.wait_for(self._condition().wait(), timeout)
            except asyncio.TimeoutError:
                pass
