"""The job manager: one Serve replica that owns the job store and the running Ray tasks.

It records jobs (with idempotency), launches each as a Ray task with the resources its spec
asks for, writes the task's progress and result into the store, answers long-polls for new
events, and cancels. Being the single writer keeps job state consistent whatever the number
of ingress replicas. On start it resumes the jobs a previous run left unfinished: requeued
(fine-tuning resumes from its checkpoint) until `max_attempts` runs, then failed with the
reason — a job is never silently lost.
"""

from __future__ import annotations

import asyncio
import logging
import os
import stat
import time

import ray
from ray import serve

from equiprune.service.errors import FailedPrecondition, ResourceExhausted, client_status
from equiprune.service.factory import settings_from
from equiprune.service.jobs.store import JobEventRecord, JobRecord, SqliteJobStore
from equiprune.service.jobs.tasks import execute_job

log = logging.getLogger("equiprune.service.jobs.manager")

UNFINISHED = ("queued", "running")


def _is_plain_file(path) -> bool:
    """A regular file, not followed through a link (a sandbox wrote that folder)."""
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except OSError:
        return False


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
                continue
            if record.state == "running":
                checkpoint = self.settings.job_dir(record.job_id) / "work" / "checkpoint.pt"
                how = ("resuming fine-tuning from its last checkpoint" if _is_plain_file(checkpoint)
                       else "starting again (no checkpoint had been written yet)")
                self.store.requeue(record.job_id, f"the service restarted during run {record.attempt}; {how}")
            self._launch(record.job_id)
            resumed += 1
        if resumed:
            log.info("resumed %d unfinished jobs", resumed)
        return resumed

    # ------------------------------------------------------------------ commands

    async def create(self, kind: str, spec: dict, request_id: str | None) -> JobRecord:
        await self.ready()
        self._check_resources(spec["resources"])
        if request_id is None or not self._known_request(request_id):
            if self.store.count_in_states(UNFINISHED) >= self.settings.max_unfinished_jobs:
                raise ResourceExhausted(f"{self.settings.max_unfinished_jobs} jobs are already queued or running; "
                                        "wait for some to finish or cancel them", field="spec")
        record, created = self.store.create(kind, spec, request_id)
        if created:
            self._launch(record.job_id)
        return record

    def _known_request(self, request_id: str) -> bool:
        return self.store.find_request(request_id) is not None

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

    async def list(self, states: tuple[str, ...], kind: str | None, page_size: int, page_token: str):
        await self.ready()
        return self.store.list(states=states, kind=kind, page_size=page_size, page_token=page_token)

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
        record = self.store.get(job_id)
        if record.done:
            return
        resources = record.spec["resources"]
        distributed = resources["workers"] > 1
        # A data-parallel job's own task only drives Ray Train; its workers hold the CPUs/GPUs.
        task = execute_job.options(
            num_cpus=0 if distributed else resources["cpus_per_worker"],
            num_gpus=0 if distributed else resources["gpus_per_worker"],
            name=f"equiprune-{job_id}",
        ).remote(job_id, record.spec, self.settings.model_dump(mode="json"), resources["cpus_per_worker"])
        self._tasks[job_id] = task
        try:
            async for ref in task:
                kind, payload = await ref
                self._apply(job_id, kind, payload, task)
                await self._notify()
        except (ray.exceptions.TaskCancelledError, ray.exceptions.WorkerCrashedError, ray.exceptions.RayError) as err:
            if not self._stopping and not self.store.get(job_id).done:
                log.warning("job %s: its task ended abnormally: %s", job_id, err)
                self.store.finish(job_id, "failed", error={
                    "code": "ABORTED", "field": "",
                    "message": f"the process running the job stopped unexpectedly ({type(err).__name__}); "
                               "it may have run out of memory"})
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
            self._tasks.pop(job_id, None)
            await self._notify()

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
